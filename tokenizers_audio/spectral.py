"""STFT-domain encoder and decoders: codecs whose tokens carry what a frame sounds like, not its phase.

A token sequence at 50–60 frames/s cannot afford to say where each partial's phase is, yet a decoder
that predicts an absolute phase per frame from phase-free tokens gives every frame of a steady tone the
same phase, which smears its pitch (an overlap-add of incoherent frames). GANSynth's answer is the
representation used here: per STFT bin, the log magnitude and the *instantaneous frequency*, the phase
advance from one frame to the next. Both are smooth in time and constant for a steady partial, and the
phase is their running sum, so a decoder that predicts them synthesises coherent partials by
construction; only the absolute phase of each bin at the first frame is lost (SI-SDR measures that loss,
a listener and the pitch track do not).

Phases are taken at each frame's centre ("zero-phase" frames: bin k of a frame that starts at the
window's edge is multiplied by (-1)^k), so all bins a partial covers share one phase and one advance.
The advance is stored as its deviation from bin k's own advance ``2π k · hop / n_fft``, wrapped to
(-π, π]: zero for a partial on a bin centre. :class:`InstantaneousFrequencyDecoder` predicts that
deviation as a unit vector ``(cos, sin)`` and is trained on it directly (:meth:`frame_loss`, weighted by
the target magnitude so the partials count and the noise floor does not), which converges far faster on
the CPU than learning phase through spectral losses of the waveform.

:class:`SpectralEncoder` reads the same two quantities from the waveform (log magnitude, and the
deviation as cos/sin), so the encoder sees each partial's exact frequency without learning a filterbank.
:class:`VocosDecoder` is the absolute-phase counterpart (Vocos / WavTokenizer's head), for tokens that do
carry phase. Every module here maps ``t`` frames to exactly ``t · hop_length`` samples ("same" padding).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .vocos import MAX_MAGNITUDE, ISTFTHead, VocosBackbone, istft_same, stft_same

__all__ = ["FrameSpectra", "frame_spectra", "synthesize", "SpectralEncoder", "VocosDecoder",
           "InstantaneousFrequencyDecoder", "LOG_FLOOR", "DEVIATION_WEIGHT"]

LOG_FLOOR = 1e-4  # magnitudes are compared as log(|X| + LOG_FLOOR): silence stays finite
DEVIATION_WEIGHT = 3.0  # the phase advance's error against the log-magnitude L1 in frame_loss (3 beat 1 on the tones)


class FrameSpectra(NamedTuple):
    """Zero-phase STFT frames of a waveform: magnitude ``[B, F, t]`` and the advance's deviation ``[B, F, t]`` (radians)."""

    magnitude: torch.Tensor
    deviation: torch.Tensor


def _bins(n_fft: int, hop_length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bin ``[F, 1]``: the sign that moves the phase to the frame centre, and the bin centre's advance per hop."""
    k_F1 = torch.arange(n_fft // 2 + 1, device=like.device, dtype=like.dtype)[:, None]
    return 1.0 - 2.0 * (k_F1 % 2), (2 * math.pi * hop_length / n_fft) * k_F1


def _wrap(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def frame_spectra(audio_B1T: torch.Tensor, *, n_fft: int, hop_length: int) -> FrameSpectra:
    """Waveforms ``[B, 1, T]`` (T a multiple of ``hop_length``) → magnitude and phase-advance deviation per bin and frame.

    The first frame's "advance" is its phase itself (the advance from a zero phase before the clip), so
    :func:`synthesize` of the pair is the input exactly.
    """
    sign_F1, centre_F1 = _bins(n_fft, hop_length, audio_B1T)
    spec_BFt = stft_same(audio_B1T[:, 0], n_fft=n_fft, hop_length=hop_length) * sign_F1
    phase_BFt = spec_BFt.angle()
    advance_BFt = torch.diff(phase_BFt, dim=-1, prepend=torch.zeros_like(phase_BFt[..., :1]))
    return FrameSpectra(spec_BFt.abs(), _wrap(advance_BFt - centre_F1))


def synthesize(magnitude_BFt: torch.Tensor, deviation_BFt: torch.Tensor, *, n_fft: int, hop_length: int) -> torch.Tensor:
    """Magnitudes and phase-advance deviations ``[B, F, t]`` → waveform ``[B, 1, t · hop_length]``: the phase is their running sum."""
    sign_F1, centre_F1 = _bins(n_fft, hop_length, magnitude_BFt)
    phase_BFt = torch.cumsum(centre_F1 + deviation_BFt, dim=-1)
    spec_BFt = torch.polar(magnitude_BFt, phase_BFt) * sign_F1
    return istft_same(spec_BFt, n_fft=n_fft, hop_length=hop_length).unsqueeze(1)


def _log_magnitude(magnitude: torch.Tensor) -> torch.Tensor:
    return torch.log(magnitude + LOG_FLOOR)


class SpectralEncoder(nn.Module):
    """Waveform ``[B, 1, T]`` → latents ``[B, dim, T / hop_length]`` from log magnitudes and phase advances (ConvNeXt)."""

    def __init__(self, *, dim: int, hop_length: int, width: int = 128, num_layers: int = 3) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.dim = 4 * hop_length, hop_length, dim
        bins = self.n_fft // 2 + 1
        self.backbone = VocosBackbone(input_dim=3 * bins, dim=width, intermediate_dim=3 * width, num_layers=num_layers)
        self.out = nn.Conv1d(width, dim, kernel_size=1)

    def forward(self, audio_B1T: torch.Tensor) -> torch.Tensor:
        spectra = frame_spectra(audio_B1T, n_fft=self.n_fft, hop_length=self.hop_length)
        features_BCt = torch.cat([_log_magnitude(spectra.magnitude), spectra.deviation.cos(), spectra.deviation.sin()], dim=1)
        return self.out(self.backbone(features_BCt))


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights * values).sum() / weights.sum().clamp_min(1e-12)


class InstantaneousFrequencyDecoder(nn.Module):
    """Latents ``[B, dim, t]`` → waveform ``[B, 1, t · hop]`` through log magnitude and instantaneous frequency per bin.

    A ConvNeXt backbone at the frame rate, then per frame a linear map to each bin's log magnitude and its
    deviation as a vector ``(x, y)`` (its angle is used, so any vector is valid). In training call
    :meth:`frames` once and pass the result to both :meth:`render` and :meth:`frame_loss`.
    """

    def __init__(self, *, dim: int, hop_length: int, width: int = 128, num_layers: int = 4,
                 intermediate_dim: int | None = None) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.dim = 4 * hop_length, hop_length, dim
        self.backbone = VocosBackbone(input_dim=dim, dim=width, num_layers=num_layers,
                                      intermediate_dim=intermediate_dim or 3 * width)
        self.out = nn.Linear(width, 3 * (self.n_fft // 2 + 1))

    def frames(self, latents_BDt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log magnitude and the deviation vector's ``x`` and ``y``, each ``[B, F, t]``."""
        h_BtC = self.out(self.backbone(latents_BDt).transpose(1, 2))
        log_mag_BFt, x_BFt, y_BFt = h_BtC.transpose(1, 2).chunk(3, dim=1)
        return log_mag_BFt, x_BFt, y_BFt

    def render(self, frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """:meth:`frames` → waveform ``[B, 1, t · hop]`` (unclamped)."""
        log_mag_BFt, x_BFt, y_BFt = frames
        magnitude_BFt = log_mag_BFt.exp().clamp(max=MAX_MAGNITUDE)
        return synthesize(magnitude_BFt, torch.atan2(y_BFt, x_BFt), n_fft=self.n_fft, hop_length=self.hop_length)

    def forward(self, latents_BDt: torch.Tensor) -> torch.Tensor:
        return self.render(self.frames(latents_BDt))

    def frame_loss(self, frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor], audio_B1T: torch.Tensor) -> torch.Tensor:
        """L1 of log magnitudes + ``DEVIATION_WEIGHT`` × the squared error of the deviation's unit vector, weighted by the target magnitude.

        The weight (magnitude over the clip's loudest bin) makes the partials count and the noise floor,
        whose phase advance is random, not.
        """
        log_mag_BFt, x_BFt, y_BFt = frames
        target = frame_spectra(audio_B1T, n_fft=self.n_fft, hop_length=self.hop_length)
        weight_BFt = target.magnitude / target.magnitude.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        vector_error_BFt = (x_BFt - target.deviation.cos()).square() + (y_BFt - target.deviation.sin()).square()
        magnitude_error = (log_mag_BFt - _log_magnitude(target.magnitude)).abs().mean()
        return magnitude_error + DEVIATION_WEIGHT * _weighted_mean(vector_error_BFt, weight_BFt)


class VocosDecoder(nn.Module):
    """Latents ``[B, dim, t]`` → waveform through log magnitude and an absolute phase per bin (Vocos / WavTokenizer)."""

    def __init__(self, *, dim: int, hop_length: int, width: int = 128, num_layers: int = 4,
                 intermediate_dim: int | None = None) -> None:
        super().__init__()
        self.hop_length, self.dim = hop_length, dim
        self.backbone = VocosBackbone(input_dim=dim, dim=width, num_layers=num_layers,
                                      intermediate_dim=intermediate_dim or 3 * width)
        self.head = ISTFTHead(dim=width, hop_length=hop_length, n_fft=4 * hop_length)

    def forward(self, latents_BDt: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(latents_BDt))
