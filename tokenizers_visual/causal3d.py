"""Causal space-time convolutions for video tokenizers (MAGVIT-v2 / Cosmos style).

Every layer here sees frame ``t`` and earlier frames only: time is padded on the left (by repeating
the first frame), never on the right, and normalisation runs per frame. So the output for a prefix
of frames is the prefix of the output — what makes "an image is a 1-frame video" and frame-by-frame
generation work on the same weights. Time is resampled by 2 at a time, keeping the first frame
alone: ``1 + 2m`` frames become ``1 + m`` (down) and back (up), so a clip of ``1 + 4k`` frames has
``1 + k`` latent frames after two stages.

Tensors are ``x_BCThw`` (channels first, then time), as ``nn.Conv3d`` wants them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalConv3d", "CausalResBlock3d", "TimeDownsample", "TimeUpsample", "per_frame"]


def per_frame(module: nn.Module, x_BCThw: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame on its own (frames folded into the batch)."""
    B, C, T, h, w = x_BCThw.shape
    y = module(x_BCThw.transpose(1, 2).reshape(B * T, C, h, w))
    return y.reshape(B, T, *y.shape[1:]).transpose(1, 2)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, num_channels=channels, eps=1e-6)


class CausalConv3d(nn.Module):
    """A 3D convolution whose output frame ``t`` reads input frames ``<= t`` (``time_stride`` 1 or 2).

    With stride 2 the outputs sit at input frames 0, 2, 4, …: frame 0's output reads frame 0 only.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel: tuple[int, int] = (3, 3), time_stride: int = 1,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.time_pad = kernel[0] - 1
        # time is padded by hand (on the left); padding_mode only ever applies to space
        self.conv = nn.Conv3d(in_channels, out_channels, (kernel[0], kernel[1], kernel[1]), stride=(time_stride, 1, 1),
                              padding=(0, kernel[1] // 2, kernel[1] // 2), padding_mode=padding_mode)

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        first = x_BCThw[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        return self.conv(torch.cat([first, x_BCThw], dim=2))


class CausalResBlock3d(nn.Module):
    """Pre-norm residual block of two causal 3×3×3 convolutions; GroupNorm per frame keeps it causal."""

    def __init__(self, channels: int, *, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels), CausalConv3d(channels, channels, padding_mode=padding_mode)
        self.norm2, self.conv2 = _norm(channels), CausalConv3d(channels, channels, padding_mode=padding_mode)

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(per_frame(self.norm1, x_BCThw)))
        h = self.conv2(F.silu(per_frame(self.norm2, h)))
        return x_BCThw + h


class TimeDownsample(nn.Module):
    """``1 + 2m`` frames → ``1 + m``: a causal stride-2 convolution (output j reads frames 2j − 2 … 2j)."""

    def __init__(self, channels: int, *, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, time_stride=2, padding_mode=padding_mode)

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        return self.conv(x_BCThw)


class TimeUpsample(nn.Module):
    """``1 + m`` frames → ``1 + 2m``: each frame makes two (depth to time), and the first frame's first copy is dropped.

    Output frames ``2j − 1`` and ``2j`` come from input frame j (and, through the causal convolution,
    from earlier ones), so decoding a prefix of latent frames gives a prefix of the video.
    """

    def __init__(self, channels: int, *, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, padding_mode=padding_mode)

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        B, C, T, h, w = x_BCThw.shape
        pairs = self.conv(x_BCThw).reshape(B, 2, C, T, h, w).permute(0, 2, 3, 1, 4, 5)  # [B, C, T, 2, h, w]
        return pairs.reshape(B, C, 2 * T, h, w)[:, :, 1:]
