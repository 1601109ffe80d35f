"""Audio metrics: SI-SDR, mel and multi-resolution STFT distances, codebook usage per level, and a judge for tones.

Waveforms are float tensors ``[B, 1, T]`` (or ``[B, T]``, or one ``[T]``) in [-1, 1], as inside the codecs.
Batch metrics are the mean of the per-clip values.

The judge (:func:`judge_tone`) reads from the samples which kind and root of :mod:`mmgen.data`'s tones a
clip holds — a pitch track over 64 ms frames for the fundamental and its motion, the spectrum's partials for
tone against chord — so class- or text-conditioned audio generators can be scored without a learned model.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..data.audio import MAJOR_CHORD_SEMITONES, NUM_TONE_CLASSES, ROOT_HZ, TONE_ROOTS, tone_class_parts
from ..spectral import mel_loss, multi_resolution_stft_loss
from .images import _class_id_list, codebook_usage

__all__ = [
    "si_sdr",
    "mel_distance",
    "stft_distance",
    "codebook_usage_per_level",
    "judge_tone",
    "judge_tones",
    "tone_adherence",
]

MAX_PEAK = 1.5  # audio is [-1, 1]; a little overshoot (a decoder's) is tolerated, more means another scale


def _check_audio(audio: torch.Tensor, name: str) -> torch.Tensor:
    """``audio`` as float64 on the CPU after checking it is a finite float tensor in [-1, 1] (with slack)."""
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        got = audio.dtype if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise TypeError(f"{name} must be a float waveform tensor, got {got}")
    if audio.numel() == 0:
        raise ValueError(f"{name} is empty, got shape {tuple(audio.shape)}")
    x = audio.detach().cpu().double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite samples")
    peak = float(x.abs().max())
    if peak > MAX_PEAK:
        raise ValueError(f"{name} must be a waveform in [-1, 1], got a peak of {peak:.3g} (more than {MAX_PEAK})")
    return x


def _as_BT(audio: torch.Tensor, name: str) -> torch.Tensor:
    """A checked waveform as float64 ``[B, T]``: from ``[B, 1, T]``, ``[B, T]`` or ``[T]``."""
    x = _check_audio(audio, name)
    if x.dim() == 3 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() in (1, 2):
        return x.reshape(-1, x.shape[-1])
    raise ValueError(f"{name} must be mono audio [B, 1, T], [B, T] or [T], got {tuple(audio.shape)}")


def _pair(estimate: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(estimate, torch.Tensor) and isinstance(reference, torch.Tensor) and estimate.shape != reference.shape:
        raise ValueError(f"estimate and reference must have the same shape, got {tuple(estimate.shape)} and {tuple(reference.shape)}")
    return _as_BT(estimate, "estimate"), _as_BT(reference, "reference")


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-clip scale-invariant SDR in dB (Le Roux et al. 2019): gain and DC offset do not count.

    Both signals are made zero-mean; the estimate is split into its projection on the reference (the
    target) and the rest (the distortion), and the score is ``10 log10(|target|^2 / |distortion|^2)``. A
    float64 epsilon keeps identical signals finite (about 180 dB). A silent reference has no defined score.
    """
    est_BT, ref_BT = _pair(estimate, reference)
    est_BT = est_BT - est_BT.mean(-1, keepdim=True)
    ref_BT = ref_BT - ref_BT.mean(-1, keepdim=True)
    ref_energy_B = ref_BT.pow(2).sum(-1)
    silent = (ref_energy_B == 0).nonzero().flatten().tolist()
    if silent:
        raise ValueError(f"reference is silent (constant) in clip(s) {silent}: SI-SDR needs a signal to compare against")
    target_BT = ((est_BT * ref_BT).sum(-1) / ref_energy_B)[:, None] * ref_BT
    eps = torch.finfo(torch.float64).eps
    ratio_B = (target_BT.pow(2).sum(-1) + eps) / ((est_BT - target_BT).pow(2).sum(-1) + eps)
    return float((10.0 * torch.log10(ratio_B)).mean())


def mel_distance(estimate: torch.Tensor, reference: torch.Tensor, *, sample_rate: int = 16000) -> float:
    """Mean L1 between log-mel spectrograms (64 bands, 1024-point frames, hop 256): what the ear compares.

    The same number as a codec's mel reconstruction loss (:func:`mmgen.spectral.mel_loss`); 0 for identical
    clips. Only comparable at one sample rate.
    """
    est_BT, ref_BT = _pair(estimate, reference)
    return float(mel_loss(est_BT, ref_BT, sample_rate=sample_rate))


def stft_distance(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Multi-resolution STFT distance (spectral convergence + log-magnitude L1 at 512/1024/2048 points).

    The same number as a codec's STFT reconstruction loss (:func:`mmgen.spectral.multi_resolution_stft_loss`);
    0 for identical clips.
    """
    est_BT, ref_BT = _pair(estimate, reference)
    return float(multi_resolution_stft_loss(est_BT, ref_BT))


def codebook_usage_per_level(ids_BtK: torch.Tensor, codebook_size: int) -> list[dict[str, float]]:
    """:func:`codebook_usage` (``usage``, ``perplexity``) of each codebook level, the last axis of ``ids``.

    Residual codecs fill their first levels well and may leave later ones nearly unused, which one pooled
    number would hide.
    """
    if not isinstance(ids_BtK, torch.Tensor) or ids_BtK.dim() < 2:
        got = tuple(ids_BtK.shape) if isinstance(ids_BtK, torch.Tensor) else type(ids_BtK).__name__
        raise ValueError(f"ids_BtK must be an integer tensor [..., K] with the codebook level last, got {got}")
    if ids_BtK.is_floating_point() or ids_BtK.dtype == torch.bool:
        raise TypeError(f"ids_BtK must be an integer tensor [..., K], got {ids_BtK.dtype}")
    return [codebook_usage(ids_BtK[..., level], codebook_size) for level in range(ids_BtK.shape[-1])]


# --- judge for mmgen.data tones -------------------------------------------------------------------------

FRAME_SECONDS = 0.064  # pitch-track frames (hop: half a frame)
ZERO_PAD = 8  # FFT length as a multiple of the frame: peaks on a fine grid before interpolation
MIN_SECONDS = 0.25  # the shortest clip the judge reads
SILENCE_RMS = 0.005  # a frame quieter than this (about -46 dBFS) is silent
MIN_SOUNDING = 0.5  # fraction of frames that must sound; a mostly silent clip is unreadable
TONAL_BAND_HZ = (50.0, 5000.0)  # where a frame's tonality is measured
TOP_BINS = 0.1  # tonality: fraction of the band's power in its loudest 10% of bins (white noise: ~0.3)
MIN_TONALITY = 0.7
F0_RANGE_HZ = (100.0, 1100.0)  # falling chirps end near C3 (131 Hz), rising ones near B5 (988 Hz)
MIN_F0_LEVEL = 0.2  # the fundamental: the lowest spectral peak at least this fraction of the frame's strongest
MIN_PITCHED = 0.6  # fraction of sounding frames that must be tonal with a fundamental
MIN_ON_TRACK = 0.6  # fraction of pitched frames within a semitone of the fitted pitch line
CHIRP_MIN_OCTAVES = 0.5  # a pitch line moving this much over the clip is a chirp
MAX_ROOT_SEMITONES = 0.5  # the (starting) pitch must round to a root's semitone
CHORD_LEVEL = 0.15  # third and fifth partials at least this fraction of the root's: a chord; both below: a tone
PARTIAL_WINDOW = 0.02  # a partial's level: the highest magnitude within +-2% of its frequency


def _check_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")


def judge_tones(audio_B1T: torch.Tensor, *, sample_rate: int = 16000) -> list[tuple[str | None, str | None]]:
    """For each clip ``[B, 1, T]`` in [-1, 1]: the ``(kind, root)`` of :mod:`mmgen.data`'s tones it holds.

    Per 64 ms frame (Hann, zero-padded FFT) the judge keeps sounding frames whose power sits in a few
    narrow peaks (tonal, unlike noise) and takes as the fundamental the lowest peak at least a fifth of the
    strongest (parabolic interpolation on the log magnitude). A robust line (Theil-Sen) through
    ``log2 f0`` over time must fit most frames within a semitone; if it moves half an octave or more over
    the clip the clip is a rising or falling chirp whose root is the line's pitch at the start, else it is
    steady: a major chord if the averaged spectrum has partials at the major third and fifth above the
    fundamental (frequency ratios 2^(4/12) and 2^(7/12), which no harmonic of it reaches), a tone if it
    has neither. The root must be the nearest semitone to that pitch. A part it cannot read is ``None``:
    both for a mostly silent clip or noise.
    """
    return [_read_track(*clip) for clip in _tone_frames(audio_B1T, sample_rate=sample_rate)]


class _ClipFrames(NamedTuple):
    """One clip's frame analysis (see :func:`judge_tones`): what the judge and the tone features read."""

    centres_N: torch.Tensor  # frame centres, seconds
    f0_N: torch.Tensor  # each frame's fundamental, Hz (meaningful where pitched)
    sounding_N: torch.Tensor
    pitched_N: torch.Tensor  # sounding, tonal and with a fundamental in F0_RANGE_HZ
    mag_NF: torch.Tensor  # magnitude spectra up to the tonal band's top
    freqs_F: torch.Tensor
    duration: float  # seconds


def _tone_frames(audio_B1T: torch.Tensor, *, sample_rate: int) -> list[_ClipFrames]:
    """Per clip of ``audio_B1T`` (checked: mono, in [-1, 1], long enough): its 64 ms frames' fundamentals and spectra."""
    _check_rate(sample_rate)
    x = _check_audio(audio_B1T, "audio_B1T")
    if x.dim() != 3 or x.shape[1] != 1:
        raise ValueError(f"audio_B1T must be mono audio [B, 1, T], got {tuple(audio_B1T.shape)}")
    if x.shape[-1] < MIN_SECONDS * sample_rate:
        raise ValueError(f"audio_B1T must be at least {MIN_SECONDS} s long ({math.ceil(MIN_SECONDS * sample_rate)} samples "
                         f"at {sample_rate} Hz), got {x.shape[-1]} samples")
    frame = int(round(FRAME_SECONDS * sample_rate))
    n_fft = ZERO_PAD * frame
    frames_BNL = x[:, 0].unfold(-1, frame, frame // 2)
    centres_N = (torch.arange(frames_BNL.shape[1]) * (frame // 2) + frame / 2) / sample_rate
    sounding_BN = frames_BNL.pow(2).mean(-1).sqrt() > SILENCE_RMS
    top_hz = min(TONAL_BAND_HZ[1], sample_rate / 2)
    kept = min(n_fft // 2 + 1, int(top_hz * n_fft / sample_rate) + 2)  # nothing above the tonal band is read
    spectrum = torch.fft.rfft(frames_BNL * torch.hann_window(frame, periodic=False, dtype=torch.float64), n=n_fft)
    mag_BNF = spectrum[..., :kept].abs()
    freqs_F = torch.arange(kept, dtype=torch.float64) * sample_rate / n_fft

    band_F = (freqs_F >= TONAL_BAND_HZ[0]) & (freqs_F <= top_hz)
    power_BNF = mag_BNF[..., band_F].pow(2)
    top = power_BNF.topk(max(1, int(TOP_BINS * power_BNF.shape[-1])), dim=-1).values.sum(-1)
    tonal_BN = top >= MIN_TONALITY * power_BNF.sum(-1).clamp_min(1e-30)

    peak_BNF = torch.zeros_like(mag_BNF, dtype=torch.bool)
    peak_BNF[..., 1:-1] = (mag_BNF[..., 1:-1] > mag_BNF[..., :-2]) & (mag_BNF[..., 1:-1] >= mag_BNF[..., 2:])
    strongest_BN = torch.where(band_F, mag_BNF, torch.zeros(())).amax(-1)
    in_range_F = (freqs_F >= F0_RANGE_HZ[0]) & (freqs_F <= F0_RANGE_HZ[1])
    candidate_BNF = peak_BNF & in_range_F & (mag_BNF >= MIN_F0_LEVEL * strongest_BN[..., None])
    bin_BN = candidate_BNF.to(torch.uint8).argmax(-1).clamp(1, mag_BNF.shape[-1] - 2)  # the first (lowest) candidate
    log_mag = mag_BNF.clamp_min(1e-30).log()
    below, at, above = (log_mag.gather(-1, (bin_BN + d)[..., None])[..., 0] for d in (-1, 0, 1))
    offset_BN = 0.5 * (below - above) / (below - 2 * at + above).clamp(max=-1e-12)
    f0_BN = (bin_BN + offset_BN.clamp(-0.5, 0.5)) * sample_rate / n_fft
    pitched_BN = sounding_BN & tonal_BN & candidate_BNF.any(-1)

    duration = x.shape[-1] / sample_rate
    return [_ClipFrames(centres_N, f0_BN[b], sounding_BN[b], pitched_BN[b], mag_BNF[b], freqs_F, duration)
            for b in range(x.shape[0])]


def _theil_sen_slope(t: np.ndarray, y: np.ndarray) -> float:
    """Median slope over all pairs of points: a line fit robust to octave slips."""
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((y[j] - y[i]) / (t[j] - t[i])))


def _chord_levels(mag_NF: torch.Tensor, freqs_F: torch.Tensor, f0_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per spectrum: levels of the partials at the major third and the fifth above its ``f0``, as fractions of ``f0``'s.

    A partial's level is the highest magnitude within ``PARTIAL_WINDOW`` of its frequency (0 if no bin is).
    """

    def level(hz_N: torch.Tensor) -> torch.Tensor:
        near_NF = (freqs_F - hz_N[:, None]).abs() <= PARTIAL_WINDOW * hz_N[:, None]
        return torch.where(near_NF, mag_NF, torch.zeros(())).amax(-1)  # magnitudes are >= 0

    fundamental_N = level(f0_N).clamp(min=1e-30)
    third_N, fifth_N = (level(f0_N * 2.0 ** (s / 12)) / fundamental_N for s in MAJOR_CHORD_SEMITONES[1:])
    return third_N, fifth_N


def _read_track(centres_N: torch.Tensor, f0_N: torch.Tensor, sounding_N: torch.Tensor, pitched_N: torch.Tensor,
                mag_NF: torch.Tensor, freqs_F: torch.Tensor, duration: float) -> tuple[str | None, str | None]:
    """Kind and root of one clip from its frames' fundamentals (see :func:`judge_tones`)."""
    sounding = int(sounding_N.sum())
    pitched = int(pitched_N.sum())
    if sounding < MIN_SOUNDING * len(sounding_N) or pitched < max(3, MIN_PITCHED * sounding):
        return None, None
    t = centres_N[pitched_N].numpy()
    y = np.log2(f0_N[pitched_N].numpy())
    slope = _theil_sen_slope(t, y)
    if abs(slope * duration) < CHIRP_MIN_OCTAVES:
        slope, kind = 0.0, "steady"
    else:
        kind = "rising chirp" if slope > 0 else "falling chirp"
    start = float(np.median(y - slope * t))  # the line's log2 pitch at t = 0
    on_track = np.abs(y - start - slope * t) < 1 / 12
    if on_track.mean() < MIN_ON_TRACK:
        return None, None
    root = _nearest_root(start)
    if kind != "steady":
        return kind, root
    frames = torch.from_numpy(np.flatnonzero(pitched_N.numpy())[on_track])
    spectrum_F = mag_NF[frames].pow(2).mean(0).sqrt()
    f0 = torch.tensor([2.0 ** float(np.median(y[on_track]))], dtype=torch.float64)
    third, fifth = (float(level[0]) for level in _chord_levels(spectrum_F[None], freqs_F, f0))
    if min(third, fifth) >= CHORD_LEVEL:
        return "major chord", root
    if max(third, fifth) < CHORD_LEVEL:
        return "tone", root
    return None, root


_ROOT_LOG2 = np.log2([ROOT_HZ[root] for root in TONE_ROOTS])


def _nearest_root(log2_hz: float) -> str | None:
    distance = np.abs(_ROOT_LOG2 - log2_hz) * 12  # semitones
    best = int(distance.argmin())
    return TONE_ROOTS[best] if distance[best] <= MAX_ROOT_SEMITONES else None


def judge_tone(audio: torch.Tensor, *, sample_rate: int = 16000) -> tuple[str | None, str | None]:
    """``(kind, root)`` that one clip ``[1, T]`` or ``[T]`` in [-1, 1] holds; ``None`` for what is unclear."""
    if not isinstance(audio, torch.Tensor) or not (audio.dim() == 1 or (audio.dim() == 2 and audio.shape[0] == 1)):
        got = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ValueError(f"audio must be one mono clip [1, T] or [T], got {got}")
    return judge_tones(audio.reshape(1, 1, -1), sample_rate=sample_rate)[0]


def tone_adherence(audio_B1T: torch.Tensor, class_ids: torch.Tensor | Sequence[int], *, sample_rate: int = 16000) -> float:
    """Fraction of clips whose judged (kind, root) is exactly their class (see :mod:`mmgen.data`'s tones)."""
    ids = _class_id_list(class_ids, num_classes=NUM_TONE_CLASSES)
    if not isinstance(audio_B1T, torch.Tensor) or audio_B1T.dim() != 3 or len(ids) != audio_B1T.shape[0] or not ids:
        got = tuple(audio_B1T.shape) if isinstance(audio_B1T, torch.Tensor) else type(audio_B1T).__name__
        raise ValueError(f"need audio_B1T [B, 1, T] with B >= 1 and B class ids, got audio {got} and {len(ids)} class_ids")
    hits = sum(judged == tone_class_parts(int(c)) for judged, c in zip(judge_tones(audio_B1T, sample_rate=sample_rate), ids))
    return hits / len(ids)
