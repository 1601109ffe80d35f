"""Convolutional encoder / decoder shared by the grid tokenizers (VQ, multi-scale VQ, KL).

A small LlamaGen/VQGAN-style stack: residual blocks with GroupNorm + SiLU, one stride-2
downsample (or nearest-neighbour upsample) per extra entry of ``channel_mult``, so the
downsampling factor is ``2 ** (len(channel_mult) - 1)``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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


def _conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, padding_mode: str = "zeros") -> nn.Conv2d:
    """3x3 convolution keeping the size (or halving it with stride 2); ``"circular"`` padding treats the frame as a
    torus, for data that wraps around its borders."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode=padding_mode)


class ResBlock(nn.Module):
    """norm → SiLU → 3×3 conv, twice, added to the input (through a 1×1 conv ``skip`` when the width changes).

    ``norm`` builds each normalisation from a width: the LDM backbone (:mod:`.ldm_conv`) needs its fixed 32 groups.
    """

    def __init__(self, in_channels: int, out_channels: int, *, padding_mode: str = "zeros",
                 norm: Callable[[int], nn.Module] = _norm) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(in_channels), _conv3x3(in_channels, out_channels, padding_mode=padding_mode)
        self.norm2, self.conv2 = norm(out_channels), _conv3x3(out_channels, out_channels, padding_mode=padding_mode)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` → features ``[B, out_channels, H/f, W/f]``."""

    def __init__(self, *, in_channels: int = 3, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, out_channels: int = 32, padding_mode: str = "zeros") -> None:
        super().__init__()
        pad = {"padding_mode": padding_mode}
        self.conv_in = _conv3x3(in_channels, channels * channel_mult[0], **pad)
        layers: list[nn.Module] = []
        current = channels * channel_mult[0]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(current, channels * mult, **pad))
                current = channels * mult
            if level < len(channel_mult) - 1:
                layers.append(_conv3x3(current, current, stride=2, **pad))
        layers += [ResBlock(current, current, **pad), _norm(current), nn.SiLU(), _conv3x3(current, out_channels, **pad)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv_in(x))


class ConvDecoder(nn.Module):
    """Features ``[B, in_channels, h, w]`` → images ``[B, out_channels, h*f, w*f]`` (mirror of the encoder)."""

    def __init__(self, *, in_channels: int = 32, channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, out_channels: int = 3, padding_mode: str = "zeros") -> None:
        super().__init__()
        pad = {"padding_mode": padding_mode}
        current = channels * channel_mult[-1]
        self.conv_in = _conv3x3(in_channels, current, **pad)
        layers: list[nn.Module] = [ResBlock(current, current, **pad)]
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(current, channels * mult, **pad))
                current = channels * mult
            if level > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(current, current, **pad)]
        layers += [_norm(current), nn.SiLU(), _conv3x3(current, out_channels, **pad)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.conv_in(z))
