"""The spectral transforms the audio codecs train on and the audio metrics measure with."""

import math

import pytest
import torch

from mmgen.spectral import mel_filterbank, mel_loss, mel_spectrogram, multi_resolution_stft_loss, stft_magnitude

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 16000


def _sine(hz: float, seconds: float = 0.25) -> torch.Tensor:
    t = torch.arange(int(RATE * seconds)) / RATE
    return (0.5 * torch.sin(2 * math.pi * hz * t))[None, None]


def test_stft_peak_sits_at_the_sine_frequency():
    mag = stft_magnitude(_sine(1000.0), n_fft=512, hop_length=128)
    assert mag.shape[:2] == (1, 257)
    assert int(mag[0].mean(dim=-1).argmax()) == round(1000 / (RATE / 512))


def test_mel_filterbank_covers_the_band_in_order():
    bank = mel_filterbank(sample_rate=RATE, n_fft=1024, n_mels=40)
    assert bank.shape == (40, 513) and bool((bank >= 0).all())
    centres = bank.argmax(dim=1)
    assert bool((centres[1:] >= centres[:-1]).all())
    assert int((bank.sum(dim=0) > 0).sum()) > 500  # nearly every bin feeds some band


def test_mel_band_of_a_low_sine_is_below_that_of_a_high_one():
    low = mel_spectrogram(_sine(300.0), sample_rate=RATE).mean(dim=-1).argmax()
    high = mel_spectrogram(_sine(3000.0), sample_rate=RATE).mean(dim=-1).argmax()
    assert int(low) < int(high)


def test_losses_are_zero_for_identical_audio_and_grow_with_noise():
    x = _sine(440.0)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    assert float(multi_resolution_stft_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(mel_loss(x, x, sample_rate=RATE)) == pytest.approx(0.0, abs=1e-6)
    small, large = x + 0.01 * noise, x + 0.1 * noise
    assert float(multi_resolution_stft_loss(small, x)) < float(multi_resolution_stft_loss(large, x))
    assert float(mel_loss(small, x, sample_rate=RATE)) < float(mel_loss(large, x, sample_rate=RATE))


def test_losses_give_gradients():
    x = _sine(440.0)
    y = (0.5 * x).requires_grad_(True)
    (multi_resolution_stft_loss(y, x) + mel_loss(y, x, sample_rate=RATE)).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


@pytest.mark.parametrize("call, fragment", [
    (lambda: stft_magnitude(torch.zeros(1, 2, 100), n_fft=64, hop_length=16), "mono"),
    (lambda: stft_magnitude(torch.zeros(100, dtype=torch.long), n_fft=64, hop_length=16), "float"),
    (lambda: mel_loss(torch.zeros(1, 1, 100), torch.zeros(1, 1, 90), sample_rate=RATE), "same shape"),
    (lambda: mel_filterbank(sample_rate=0, n_fft=64, n_mels=8), "sample_rate"),
    (lambda: mel_filterbank(sample_rate=RATE, n_fft=64, n_mels=8, f_max=9000.0), "f_max"),
])
def test_bad_input_is_refused_by_name(call, fragment):
    with pytest.raises((TypeError, ValueError), match=fragment):
        call()
