"""Audio metrics: SI-SDR, mel / STFT distances, codebook usage per level, and the tones judge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgen.data import NUM_TONE_CLASSES, TonesDataset, render_tone, tone_class_id, tone_class_parts
from mmgen.metrics import (
    codebook_usage,
    codebook_usage_per_level,
    judge_tone,
    judge_tones,
    mel_distance,
    si_sdr,
    stft_distance,
    tone_adherence,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def heldout_tones():
    """112 clean held-out clips, 4 of each of the 28 classes."""
    return TonesDataset(length=4 * NUM_TONE_CLASSES, split="heldout", seed=0).batch(range(4 * NUM_TONE_CLASSES))


def _with_noise_at(reference_B1T: torch.Tensor, snr_db: float, *, seed: int = 0) -> torch.Tensor:
    """``reference`` plus white noise made orthogonal to it, scaled to exactly ``snr_db`` per clip."""
    ref = reference_B1T - reference_B1T.mean(-1, keepdim=True)
    noise = torch.randn(reference_B1T.shape, generator=torch.Generator().manual_seed(seed))
    noise = noise - noise.mean(-1, keepdim=True)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    noise = noise * (ref.pow(2).sum(-1, keepdim=True) / noise.pow(2).sum(-1, keepdim=True) / 10 ** (snr_db / 10)).sqrt()
    return reference_B1T + noise


# --- SI-SDR ------------------------------------------------------------------------------------------

def test_si_sdr_reads_a_known_snr_and_ignores_gain_and_offset(heldout_tones):
    x = 0.3 * heldout_tones["audio"][:4]  # room for the noise of 0 dB SNR within [-1, 1]
    assert si_sdr(x, x) > 60.0
    for snr in (0.0, 10.0, 20.0):
        assert si_sdr(_with_noise_at(x, snr), x) == pytest.approx(snr, abs=0.5)
    noisy = _with_noise_at(x, 10.0)
    assert si_sdr(0.5 * noisy + 0.1, x) == pytest.approx(si_sdr(noisy, x), abs=1e-6)
    half = 0.5 * x
    assert si_sdr(2 * half[:, 0], half[:, 0]) > 60.0  # [B, T]
    assert si_sdr(0.4 * x[0, 0], x[0, 0]) > 60.0  # [T]
    assert si_sdr(-x, x) > 60.0  # a sign flip is a gain too


def test_si_sdr_refuses_bad_input():
    x = render_tone("tone", "C4")[None]
    with pytest.raises(ValueError, match="same shape"):
        si_sdr(x, x[..., :8000])
    with pytest.raises(ValueError, match="reference is silent"):
        si_sdr(x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="estimate holds NaN"):
        si_sdr(torch.full_like(x, float("nan")), x)
    with pytest.raises(ValueError, match=r"reference must be a waveform in \[-1, 1\]"):
        si_sdr(x, x * 1000)
    with pytest.raises(TypeError, match="estimate must be a float"):
        si_sdr((x * 100).long(), x)


# --- spectral distances ------------------------------------------------------------------------------

def test_mel_and_stft_distances_are_zero_for_identical_clips_and_grow_with_noise(heldout_tones):
    x = 0.3 * heldout_tones["audio"][:3]
    assert mel_distance(x, x) == 0.0 and stft_distance(x, x) == 0.0
    mel = [mel_distance(_with_noise_at(x, snr), x) for snr in (30.0, 15.0, 0.0)]
    stft = [stft_distance(_with_noise_at(x, snr), x) for snr in (30.0, 15.0, 0.0)]
    assert 0 < mel[0] < mel[1] < mel[2] and 0 < stft[0] < stft[1] < stft[2]
    assert mel_distance(x[:, 0], x[:, 0] * 0.5, sample_rate=16000) == pytest.approx(float(np.log(2.0)), rel=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        stft_distance(x, x[:2])


# --- codebook usage ----------------------------------------------------------------------------------

def test_codebook_usage_per_level_reads_each_level_apart():
    ids_BtK = torch.stack([torch.arange(8).repeat(2, 1), torch.zeros(2, 8, dtype=torch.long)], dim=-1)  # [2, 8, 2]
    first, second = codebook_usage_per_level(ids_BtK, 8)
    assert first == {"usage": 1.0, "perplexity": pytest.approx(8.0)}
    assert second == {"usage": 0.125, "perplexity": pytest.approx(1.0)}
    assert codebook_usage_per_level(ids_BtK[..., :1], 8) == [codebook_usage(ids_BtK[..., 0], 8)]
    with pytest.raises(ValueError, match="ids_BtK"):
        codebook_usage_per_level(torch.arange(4), 8)
    with pytest.raises(ValueError, match="outside the codebook"):
        codebook_usage_per_level(ids_BtK, 4)


# --- the tones judge ---------------------------------------------------------------------------------

def test_judge_reads_clean_heldout_tones(heldout_tones):
    judged = judge_tones(heldout_tones["audio"], sample_rate=16000)
    truth = [tone_class_parts(int(c)) for c in heldout_tones["class_id"]]
    accuracy = sum(j == t for j, t in zip(judged, truth)) / len(truth)
    assert accuracy >= 0.98, [(t, j) for j, t in zip(judged, truth) if j != t]
    first = slice(0, NUM_TONE_CLASSES)  # one clip per class is enough to check the adherence score
    hits = sum(j == t for j, t in zip(judged[first], truth[first]))
    assert tone_adherence(heldout_tones["audio"][first], heldout_tones["class_id"][first]) == hits / NUM_TONE_CLASSES
    assert tone_adherence(heldout_tones["audio"][first], (heldout_tones["class_id"][first] + 1) % NUM_TONE_CLASSES) == 0.0


def test_judge_reads_one_clip_at_other_rates():
    assert judge_tone(render_tone("major chord", "E4")) == ("major chord", "E4")  # [1, T]
    clip = render_tone("falling chirp", "F4", sample_rate=24000, seconds=0.75, rng=np.random.default_rng(1))
    assert judge_tone(clip[0], sample_rate=24000) == ("falling chirp", "F4")  # [T]


def test_judge_rejects_silence_noise_and_mostly_silent_clips():
    noise = torch.randn(3, 1, 16000, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 0.05, 0.01])[:, None, None]
    assert judge_tones(torch.zeros(2, 1, 16000)) == [(None, None)] * 2
    assert judge_tones(noise.clamp(-1, 1)) == [(None, None)] * 3
    mostly_silent = render_tone("tone", "A4")
    mostly_silent[:, 6000:] = 0.0
    assert judge_tone(mostly_silent) == (None, None)
    between_roots = render_tone("tone", "D4", sample_rate=15102)  # played at 16 kHz: a semitone up, D#4, not a root
    assert judge_tone(between_roots, sample_rate=16000) == ("tone", None)


def test_judge_refuses_bad_input():
    clip = render_tone("tone", "C4")
    with pytest.raises(ValueError, match="audio_B1T must be mono"):
        judge_tones(clip.expand(2, -1)[None])
    with pytest.raises(ValueError, match="at least 0.25 s"):
        judge_tones(clip[None, :, :1000])
    with pytest.raises(ValueError, match=r"audio_B1T must be a waveform in \[-1, 1\]"):
        judge_tones(clip[None] * 3)
    with pytest.raises(ValueError, match="sample_rate must be a positive int"):
        judge_tone(clip, sample_rate=0)
    with pytest.raises(ValueError, match="class ids"):
        tone_adherence(clip[None], [tone_class_id("tone", "C4") + 100])
    with pytest.raises(ValueError, match="B class ids"):
        tone_adherence(clip[None], [0, 1])
