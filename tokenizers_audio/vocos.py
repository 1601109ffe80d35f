"""Vocos-style waveform decoder: ConvNeXt blocks at the frame rate, then an inverse-STFT head.

A transposed-conv decoder must learn to synthesise every sample; Vocos (and WavTokenizer's decoder)
instead predict, per frame, the magnitude and phase of one STFT column and let an inverse STFT with
``hop = hop_length`` do the upsampling, which is cheaper and trains faster on periodic signals.

The inverse STFT uses Vocos' "same" padding: ``t`` frames give exactly ``t · hop_length`` samples,
frame ``i`` centred on samples ``[i · hop, (i + 1) · hop)``. ``torch.istft`` cannot do this: with
``center=True`` it returns ``(t − 1) · hop`` samples, and with ``center=False`` its window-envelope
check fails at the first sample of a Hann window. So the overlap-add is written out (``irfft`` +
``fold``), divided by the same squared-window envelope ``torch.istft`` uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvNeXtBlock", "VocosBackbone", "ISTFTHead", "istft_same", "stft_same", "MAX_MAGNITUDE"]

MAX_MAGNITUDE = 1e2  # exp(log-magnitude) is clipped here (as Vocos) so an early large logit cannot blow up the waveform


def _check_same_padding(n_fft: int, hop_length: int) -> int:
    if hop_length < 1 or n_fft < hop_length or (n_fft - hop_length) % 2:
        raise ValueError(f"'same' STFT padding needs n_fft >= hop_length >= 1 and n_fft - hop_length even, "
                         f"got n_fft={n_fft}, hop_length={hop_length}")
    return (n_fft - hop_length) // 2


def stft_same(audio_BT: torch.Tensor, *, n_fft: int, hop_length: int) -> torch.Tensor:
    """Complex STFT ``[B, n_fft // 2 + 1, T / hop]`` with "same" padding (zeros): the analysis :func:`istft_same` inverts."""
    pad = _check_same_padding(n_fft, hop_length)
    if audio_BT.dim() != 2 or audio_BT.shape[-1] % hop_length:
        raise ValueError(f"audio must be [B, T] with T a multiple of hop_length={hop_length}, got {tuple(audio_BT.shape)}")
    window = torch.hann_window(n_fft, device=audio_BT.device, dtype=audio_BT.dtype)
    frames_BtN = F.pad(audio_BT, (pad, pad)).unfold(-1, n_fft, hop_length)
    return torch.fft.rfft(frames_BtN * window, dim=-1).transpose(1, 2)


def istft_same(spec_BFt: torch.Tensor, *, n_fft: int, hop_length: int) -> torch.Tensor:
    """Complex spectrum ``[B, n_fft // 2 + 1, t]`` → waveform ``[B, t · hop_length]`` (Hann window, "same" padding)."""
    pad = _check_same_padding(n_fft, hop_length)
    if spec_BFt.dim() != 3 or spec_BFt.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"spec must be [B, {n_fft // 2 + 1}, t] for n_fft={n_fft}, got {tuple(spec_BFt.shape)}")
    frames = spec_BFt.shape[-1]
    window = torch.hann_window(n_fft, device=spec_BFt.device, dtype=spec_BFt.real.dtype)
    frames_BNt = torch.fft.irfft(spec_BFt, n_fft, dim=1) * window[:, None]
    size = (frames - 1) * hop_length + n_fft
    fold = dict(output_size=(1, size), kernel_size=(1, n_fft), stride=(1, hop_length))
    audio_BT = F.fold(frames_BNt, **fold)[:, 0, 0, pad:size - pad]
    envelope = F.fold(window.square()[None, :, None].expand(1, -1, frames), **fold)[0, 0, 0, pad:size - pad]
    return audio_BT / envelope.clamp_min(1e-11)


class ConvNeXtBlock(nn.Module):
    """Depthwise k7 conv → LayerNorm → pointwise MLP (GELU) → layer scale, with a residual (Vocos / ConvNeXt)."""

    def __init__(self, *, dim: int, intermediate_dim: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x_BDt: torch.Tensor) -> torch.Tensor:
        h_BtD = self.norm(self.dwconv(x_BDt).transpose(1, 2))
        h_BtD = self.pwconv2(F.gelu(self.pwconv1(h_BtD))) * self.gamma
        return x_BDt + h_BtD.transpose(1, 2)


class VocosBackbone(nn.Module):
    """k7 conv embedding → LayerNorm → ``num_layers`` ConvNeXt blocks → LayerNorm; the frame rate is kept.

    Layer scale starts at ``1 / num_layers`` (as Vocos), so the stack starts close to the identity.
    """

    def __init__(self, *, input_dim: int, dim: int, intermediate_dim: int, num_layers: int) -> None:
        super().__init__()
        self.embed = nn.Conv1d(input_dim, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(dim=dim, intermediate_dim=intermediate_dim, layer_scale=1.0 / num_layers) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x_BCt: torch.Tensor) -> torch.Tensor:
        """Features ``[B, input_dim, t]`` → ``[B, dim, t]``."""
        h_BDt = self.norm(self.embed(x_BCt).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h_BDt = block(h_BDt)
        return self.final_norm(h_BDt.transpose(1, 2)).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Per frame a linear map to log-magnitude and phase of one STFT column, then :func:`istft_same`.

    Magnitude is ``exp`` of its logit clipped at :data:`MAX_MAGNITUDE`; the phase logit ``p`` enters as
    ``cos p + i sin p``, so any real value is a valid phase (Vocos).
    """

    def __init__(self, *, dim: int, hop_length: int, n_fft: int) -> None:
        super().__init__()
        _check_same_padding(n_fft, hop_length)
        self.n_fft, self.hop_length = n_fft, hop_length
        self.out = nn.Linear(dim, n_fft + 2)

    def forward(self, x_BDt: torch.Tensor) -> torch.Tensor:
        """Features ``[B, dim, t]`` → waveform ``[B, 1, t · hop_length]`` (not clamped)."""
        log_mag_BFt, phase_BFt = self.out(x_BDt.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)
        mag_BFt = log_mag_BFt.exp().clamp(max=MAX_MAGNITUDE)
        spec_BFt = torch.complex(mag_BFt * torch.cos(phase_BFt), mag_BFt * torch.sin(phase_BFt))
        return istft_same(spec_BFt, n_fft=self.n_fft, hop_length=self.hop_length).unsqueeze(1)
