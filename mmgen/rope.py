"""N-D rotary position embeddings driven by a layout's coordinates.

The head dimension's ``head_dim / 2`` frequency pairs are split between the coordinate axes; each
axis rotates its pairs by ``coord[axis] * inv_freq``. A position whose coordinates are NaN has no place:
its cos and sin are 0, so its queries and keys are zero (LlamaGen's class token, whose RoPE row is all
zeros: it attends evenly and every query scores 0 against it). With one axis this is exactly the rotary
embedding of transformers' Llama (same ``inv_freq``, same half-split ``rotate_half`` pairing), which
is what lets :func:`mmgen.convert.gpt_from_llama` reproduce Llama's logits.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NDRotaryEmbedding", "apply_rotary"]


def _pairs_per_axis(num_pairs: int, num_axes: int) -> list[int]:
    base, extra = divmod(num_pairs, num_axes)
    return [base + (axis < extra) for axis in range(num_axes)]


class NDRotaryEmbedding(nn.Module):
    """Maps coordinates ``[B, T, C]`` to ``(cos, sin)`` of shape ``[B, T, head_dim]``."""

    def __init__(self, *, head_dim: int, coord_rank: int = 1, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        if head_dim // 2 < coord_rank:
            raise ValueError(f"head_dim={head_dim} has fewer frequency pairs than coord_rank={coord_rank}")
        self.coord_rank = coord_rank
        inv_freqs, axes = [], []
        for axis, pairs in enumerate(_pairs_per_axis(head_dim // 2, coord_rank)):
            axis_dim = 2 * pairs
            exponents = torch.arange(0, axis_dim, 2, dtype=torch.int64).float() / axis_dim
            inv_freqs.append(1.0 / (theta**exponents))
            axes.append(torch.full((pairs,), axis, dtype=torch.long))
        self.register_buffer("inv_freq", torch.cat(inv_freqs), persistent=False)
        self.register_buffer("axis_of_pair", torch.cat(axes), persistent=False)

    def forward(self, coords_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if coords_BTC.shape[-1] != self.coord_rank:
            raise ValueError(f"coords have rank {coords_BTC.shape[-1]}, the model expects coord_rank={self.coord_rank}")
        if self.coord_rank == 1:
            angles_BTP = coords_BTC.float() * self.inv_freq
        else:
            angles_BTP = coords_BTC.float()[..., self.axis_of_pair] * self.inv_freq
        angles_BTD = torch.cat([angles_BTP, angles_BTP], dim=-1)
        unplaced_BT1 = coords_BTC.isnan().any(-1, keepdim=True)
        return angles_BTD.cos().masked_fill(unplaced_BT1, 0.0), angles_BTD.sin().masked_fill(unplaced_BT1, 0.0)


def apply_rotary(x_BHTD: torch.Tensor, cos_BTD: torch.Tensor, sin_BTD: torch.Tensor) -> torch.Tensor:
    """Rotate query or key heads; pairs are (i, i + D/2) as in Llama's ``rotate_half``."""
    cos, sin = cos_BTD.unsqueeze(1).to(x_BHTD.dtype), sin_BTD.unsqueeze(1).to(x_BHTD.dtype)
    half = x_BHTD.shape[-1] // 2
    x1, x2 = x_BHTD[..., :half], x_BHTD[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_BHTD * cos + rotated * sin
