"""Spectra of waveforms: STFT magnitudes, mel spectrograms and the spectral distances codecs train on.

torchaudio has no build for the torch this package is tested on, so the few transforms audio needs are
written here on ``torch.stft``: a Hann-window STFT, a mel filterbank (HTK mel scale, triangular filters
normalised to unit area as Slaney's), and the two reconstruction terms of EnCodec/DAC — the
multi-resolution STFT loss (spectral convergence + log-magnitude L1) and the log-mel L1 loss. All are
differentiable and accept waveforms ``[B, 1, T]`` or ``[B, T]``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

__all__ = ["stft_magnitude", "mel_filterbank", "mel_spectrogram", "multi_resolution_stft_loss", "mel_loss", "DEFAULT_RESOLUTIONS"]

DEFAULT_RESOLUTIONS: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop_length)
LOG_FLOOR = 1e-5  # magnitudes below this are silence; the floor keeps log() finite


def _as_BT(audio: torch.Tensor, *, name: str = "audio") -> torch.Tensor:
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise TypeError(f"{name} must be a float waveform tensor [B, 1, T] or [B, T], got {getattr(audio, 'dtype', type(audio).__name__)}")
    if audio.dim() == 3:
        if audio.shape[1] != 1:
            raise ValueError(f"{name} must be mono [B, 1, T], got {tuple(audio.shape)}")
        return audio[:, 0]
    if audio.dim() != 2:
        raise ValueError(f"{name} must have shape [B, 1, T] or [B, T], got {tuple(audio.shape)}")
    return audio


def stft_magnitude(audio: torch.Tensor, *, n_fft: int, hop_length: int, win_length: int | None = None) -> torch.Tensor:
    """``|STFT|`` ``[B, n_fft // 2 + 1, frames]`` with a Hann window (centred frames, reflect padding)."""
    x_BT = _as_BT(audio)
    win_length = win_length or n_fft
    window = torch.hann_window(win_length, device=x_BT.device, dtype=x_BT.dtype)
    pad = "reflect" if x_BT.shape[-1] > n_fft // 2 else "constant"
    spec = torch.stft(x_BT, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True,
                      pad_mode=pad, return_complex=True)
    return spec.abs()


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = _mel_to_hz(torch.linspace(_hz_to_mel(torch.tensor(f_min)), _hz_to_mel(torch.tensor(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights = weights * (2.0 / (upper - lower))  # equal area per filter, so wide high bands do not dominate
    return weights.float()


def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` that map an STFT magnitude to mel bands."""
    for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("n_mels", n_mels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}")
    return _filterbank(sample_rate, n_fft, n_mels, float(f_min), float(f_max))


def mel_spectrogram(audio: torch.Tensor, *, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64) -> torch.Tensor:
    """Mel-band magnitudes ``[B, n_mels, frames]`` (linear, not log)."""
    mag_BFt = stft_magnitude(audio, n_fft=n_fft, hop_length=hop_length)
    bank = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels).to(mag_BFt)
    return torch.einsum("mf,bft->bmt", bank, mag_BFt)


def _check_pair(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    est_BT, ref_BT = _as_BT(estimate, name="estimate"), _as_BT(reference, name="reference")
    if est_BT.shape != ref_BT.shape:
        raise ValueError(f"estimate and reference must have the same shape, got {tuple(estimate.shape)} and {tuple(reference.shape)}")
    return est_BT, ref_BT


def multi_resolution_stft_loss(estimate: torch.Tensor, reference: torch.Tensor, *,
                               resolutions: Sequence[tuple[int, int]] = DEFAULT_RESOLUTIONS) -> torch.Tensor:
    """Mean over resolutions of spectral convergence + L1 of log magnitudes (Parallel WaveGAN, EnCodec).

    Spectral convergence weighs the loud partials; the log term the quiet ones, so both the pitch and the
    noise floor are learnt. Zero for identical inputs.
    """
    est_BT, ref_BT = _check_pair(estimate, reference)
    total = est_BT.new_zeros(())
    for n_fft, hop in resolutions:
        est, ref = stft_magnitude(est_BT, n_fft=n_fft, hop_length=hop), stft_magnitude(ref_BT, n_fft=n_fft, hop_length=hop)
        convergence = torch.linalg.vector_norm(ref - est, dim=(-2, -1)) / torch.linalg.vector_norm(ref, dim=(-2, -1)).clamp_min(LOG_FLOOR)
        log_l1 = (est.clamp_min(LOG_FLOOR).log() - ref.clamp_min(LOG_FLOOR).log()).abs().mean(dim=(-2, -1))
        total = total + (convergence + log_l1).mean()
    return total / len(resolutions)


def mel_loss(estimate: torch.Tensor, reference: torch.Tensor, *, sample_rate: int, n_fft: int = 1024, hop_length: int = 256,
             n_mels: int = 64) -> torch.Tensor:
    """L1 between log-mel spectrograms: the perceptual reconstruction term (and the metric's "mel distance")."""
    est_BT, ref_BT = _check_pair(estimate, reference)
    kwargs = {"sample_rate": sample_rate, "n_fft": n_fft, "hop_length": hop_length, "n_mels": n_mels}
    est, ref = mel_spectrogram(est_BT, **kwargs), mel_spectrogram(ref_BT, **kwargs)
    return (est.clamp_min(LOG_FLOOR).log() - ref.clamp_min(LOG_FLOOR).log()).abs().mean()
