"""Convolutional encoder / decoder shared by the grid tokenizers (VQ, multi-scale VQ, KL).

A small LlamaGen/VQGAN-style stack: residual blocks with GroupNorm + SiLU, one stride-2
downsample (or nearest-neighbour upsample) per extra entry of ``channel_mult``, so the
downsampling factor is ``2 ** (len(channel_mult) - 1)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvEncoder", "ConvDecoder", "downsample_factor", "latent_grid"]


def downsample_factor(channel_mult: Sequence[int]) -> int:
    return 2 ** (len(channel_mult) - 1)


def latent_grid(image_size: int, downsample: int) -> tuple[int, int]:
    """The ``(h, w)`` latent grid of a square ``image_size`` image; raises if the size does not divide."""
    if image_size % downsample:
        raise ValueError(f"image_size={image_size} must be divisible by the downsampling factor {downsample}")
    return image_size // downsample, image_size // downsample


class LatentGridMixin:
    """``downsample`` and ``grid_shape`` of a conv tokenizer whose config has ``image_size`` and ``downsample``."""

    cfg: Any

    @property
    def downsample(self) -> int:
        return self.cfg.downsample

    def grid_shape(self, image_size: int | None = None) -> tuple[int, int]:
        """The ``(h, w)`` token grid of a square image (``image_size`` defaults to the configured one)."""
        return latent_grid(self.cfg.image_size if image_size is None else image_size, self.cfg.downsample)

    def check_grid(self, grid: Sequence[int], *, name: str) -> None:
        """Raise unless ``grid`` is this tokenizer's ``grid_shape()``: another grid would decode to another image size."""
        want = self.grid_shape()
        if tuple(grid) != want:
            raise ValueError(f"{name}: expected a {want[0]}x{want[1]} grid (the tokenizer's grid_shape for "
                             f"{self.cfg.image_size}x{self.cfg.image_size} images), got {'x'.join(map(str, grid))}")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` → features ``[B, out_channels, H/f, W/f]``."""

    def __init__(self, *, in_channels: int = 3, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, out_channels: int = 32) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels * channel_mult[0], 3, padding=1)
        layers: list[nn.Module] = []
        current = channels * channel_mult[0]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(current, channels * mult))
                current = channels * mult
            if level < len(channel_mult) - 1:
                layers.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
        layers += [ResBlock(current, current), _norm(current), nn.SiLU(), nn.Conv2d(current, out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv_in(x))


class ConvDecoder(nn.Module):
    """Features ``[B, in_channels, h, w]`` → images ``[B, out_channels, h*f, w*f]`` (mirror of the encoder)."""

    def __init__(self, *, in_channels: int = 32, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        current = channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, current, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(current, current)]
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(current, channels * mult))
                current = channels * mult
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(current, current, 3, padding=1)]
        layers += [_norm(current), nn.SiLU(), nn.Conv2d(current, out_channels, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv_in(z))
