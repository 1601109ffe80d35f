"""The taming / latent-diffusion conv encoder and decoder, as published VQ tokenizers use it (LlamaGen, VAR).

Its blocks are a fixed recipe that a converted checkpoint must meet exactly: GroupNorm with 32 groups
(eps 1e-6), SiLU, residual blocks (:class:`.conv.ResBlock` with these norms) with a 1×1 shortcut conv
when the width changes, single-head self-attention over all positions, a stride-2 conv after zero padding
on the right and bottom only, nearest-neighbour upsampling followed by a 3×3 conv, and a middle of
residual block, attention, residual block. Attention also follows every residual block of the
lowest-resolution level.

Levels are numbered by resolution in both halves: ``encoder.levels.{i}`` and ``decoder.levels.{i}`` work
at ``H / 2**i``, and the decoder runs them from the last to the first. The blocks keep the family's own
names (``norm1``, ``conv1``, ``q``, ``k``, ``v``, ``proj_out``) except the shortcut (``skip``, the family's
``nin_shortcut``), so a converter mostly renames containers. Variants of the family map onto this module
without switches of their own: a fused ``qkv`` 1×1 conv is the concatenation of ``q``, ``k`` and ``v``
(split it when converting), and decoders stored in execution order only renumber their levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .conv import ConvDecoder, ConvEncoder, ResBlock, _conv3x3

__all__ = ["BACKBONES", "NORM_GROUPS", "LDMDecoder", "LDMEncoder", "check_backbone", "conv_stacks"]

NORM_GROUPS = 32
BACKBONES = ("conv", "ldm")


def check_backbone(backbone: str, *, attention: bool, channels: int, channel_mult: Sequence[int]) -> None:
    """Refuse a tokenizer config's ``backbone`` / ``attention`` pair this module cannot build, before any layer is made.

    ``"conv"`` is :mod:`.conv`'s stack, without attention; ``"ldm"`` this one, whose 32-group norms need every
    width ``channels * channel_mult[i]`` to be a multiple of 32.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if attention and backbone != "ldm":
        raise ValueError("attention=True needs backbone='ldm' (the 'conv' backbone has no attention blocks)")
    if backbone == "ldm" and any(channels * m % NORM_GROUPS for m in channel_mult):
        raise ValueError(f"backbone='ldm' normalises in {NORM_GROUPS} groups: channels * channel_mult "
                         f"({channels} * {list(channel_mult)}) must be multiples of {NORM_GROUPS}")


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=NORM_GROUPS, num_channels=channels, eps=1e-6, affine=True)


def _res(in_channels: int, out_channels: int) -> ResBlock:
    return ResBlock(in_channels, out_channels, norm=_norm)


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H·W`` positions, with the full width as head size, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BCHW.shape
        h_BCHW = self.norm(x_BCHW)
        q_B1LC, k_B1LC, v_B1LC = (proj(h_BCHW).reshape(B, 1, C, H * W).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out_B1LC = F.scaled_dot_product_attention(q_B1LC, k_B1LC, v_B1LC)  # scale C**-0.5, softmax over keys
        return x_BCHW + self.proj_out(out_B1LC.transpose(2, 3).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the size: pad one zero row and column at the bottom and right, then a 3×3 conv with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the size: nearest-neighbour copies, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks ``res.{j}``, each followed by ``attn.{j}`` when the level attends, then ``resample``."""

    def __init__(self, widths: Sequence[int], *, attention: bool, resample: nn.Module | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(_res(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(b) for b in widths[1:]) if attention else nn.ModuleList()
        self.resample = resample

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.res):
            x_BCHW = block(x_BCHW)
            if self.attn:
                x_BCHW = self.attn[j](x_BCHW)
        return x_BCHW if self.resample is None else self.resample(x_BCHW)


def _mid(channels: int, *, attention: bool) -> nn.Sequential:
    return nn.Sequential(_res(channels, channels), AttnBlock(channels) if attention else nn.Identity(),
                         _res(channels, channels))


class LDMEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` → features ``[B, out_channels, H/f, W/f]``, ``f = 2 ** (len(channel_mult) - 1)``.

    ``conv_in`` gives ``channels``; level ``i`` has ``num_res_blocks`` residual blocks to ``channels * channel_mult[i]``
    and halves the size unless it is the last; then ``mid``, ``norm_out`` → SiLU → ``conv_out``.
    """

    def __init__(self, *, in_channels: int = 3, channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, out_channels: int = 256, attention: bool = True) -> None:
        super().__init__()
        self.conv_in = _conv3x3(in_channels, channels)
        last = len(channel_mult) - 1
        width, levels = channels, []
        for i, mult in enumerate(channel_mult):
            widths = [width] + [channels * mult] * num_res_blocks
            width = widths[-1]
            levels.append(Level(widths, attention=attention and i == last, resample=Downsample(width) if i < last else None))
        self.levels = nn.ModuleList(levels)
        self.mid = _mid(width, attention=attention)
        self.norm_out, self.conv_out = _norm(width), _conv3x3(width, out_channels)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h_BChw = self.conv_in(x_BCHW)
        for level in self.levels:
            h_BChw = level(h_BChw)
        return self.conv_out(F.silu(self.norm_out(self.mid(h_BChw))))


class LDMDecoder(nn.Module):
    """Features ``[B, in_channels, h, w]`` → images ``[B, out_channels, h*f, w*f]``, no output activation.

    ``conv_in`` gives ``channels * channel_mult[-1]``, then ``mid``; level ``i`` (run from the last to the first)
    has ``num_res_blocks + 1`` residual blocks to ``channels * channel_mult[i]`` and doubles the size unless it
    is level 0; then ``norm_out`` → SiLU → ``conv_out``.
    """

    def __init__(self, *, in_channels: int = 256, channels: int = 128, channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, out_channels: int = 3, attention: bool = True) -> None:
        super().__init__()
        last = len(channel_mult) - 1
        width = channels * channel_mult[-1]
        self.conv_in = _conv3x3(in_channels, width)
        self.mid = _mid(width, attention=attention)
        levels: list[Level] = []
        for i in reversed(range(len(channel_mult))):
            widths = [width] + [channels * channel_mult[i]] * (num_res_blocks + 1)
            width = widths[-1]
            levels.insert(0, Level(widths, attention=attention and i == last, resample=Upsample(width) if i > 0 else None))
        self.levels = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(width), _conv3x3(width, out_channels)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.levels):
            h_BChw = level(h_BChw)
        return self.conv_out(F.silu(self.norm_out(h_BChw)))


def conv_stacks(backbone: str, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                attention: bool) -> tuple[type[nn.Module], type[nn.Module], dict]:
    """A checked config's encoder and decoder classes and the keyword arguments both take (width, depth, attention)."""
    sizes = {"channels": channels, "channel_mult": channel_mult, "num_res_blocks": num_res_blocks}
    if backbone == "ldm":
        return LDMEncoder, LDMDecoder, {**sizes, "attention": attention}
    return ConvEncoder, ConvDecoder, sizes

