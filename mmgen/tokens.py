"""The token-layout contract: what the GPT backbone and every pipeline know about a sample's tokens.

Every paradigm (next-token, next-scale, next-X) is group-causal autoregression: positions are split
into ordered groups and position ``i`` may attend to position ``j`` iff ``group[j] <= group[i]``
(earlier groups, or its own group). A tokenizer or pipeline describes its tokens with a
:class:`TokenLayout` — per position its coordinates (for rotary embeddings), its group (the AR
step) and whether it is real or padding — plus a :class:`TokenContent` saying what each position
holds (ids over D codebooks, or a continuous vector). The backbone never special-cases a modality.

Shapes: ``coords_BTC`` (float, C = coordinate rank), ``groups_BT`` (long), ``valid_BT`` (bool).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence, Union

import torch

__all__ = [
    "DiscreteContent",
    "ContinuousContent",
    "TokenContent",
    "TokenLayout",
]


@dataclass(frozen=True)
class DiscreteContent:
    """Each position holds one id per codebook; ``codebook_sizes[d]`` is codebook d's vocabulary."""

    codebook_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if isinstance(self.codebook_sizes, (str, bytes)) or not isinstance(self.codebook_sizes, Sequence):
            raise TypeError(f"codebook_sizes must be a sequence of positive ints (one per codebook, e.g. (512,)), "
                            f"got {self.codebook_sizes!r}")
        sizes = tuple(self.codebook_sizes)
        if not sizes or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ValueError(f"codebook_sizes must be a non-empty sequence of positive ints, got {self.codebook_sizes!r}")
        object.__setattr__(self, "codebook_sizes", sizes)

    @property
    def num_codebooks(self) -> int:
        return len(self.codebook_sizes)

    def check_ids(self, ids: torch.Tensor, *, name: str = "ids") -> None:
        """Raise if ``ids`` (``[B, T]`` for one codebook, ``[B, T, D]`` for several) is not a valid id tensor."""
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"{name} must be an integer tensor (torch.long), got {got}")
        expected_rank = 2 if self.num_codebooks == 1 else 3
        if ids.dim() != expected_rank or (expected_rank == 3 and ids.shape[-1] != self.num_codebooks):
            shape = "[B, T]" if expected_rank == 2 else f"[B, T, {self.num_codebooks}]"
            raise ValueError(f"{name} must have shape {shape} for {self.num_codebooks} codebook(s), got {tuple(ids.shape)}")
        ids_BTD = ids if expected_rank == 3 else ids.unsqueeze(-1)
        if ids_BTD.numel() == 0:
            return
        limits = torch.tensor(self.codebook_sizes, device=ids.device)
        bad = (ids_BTD < 0) | (ids_BTD >= limits)
        if bool(bad.any()):
            d = int(bad.nonzero()[0, -1])
            value = int(ids_BTD[bad][0])
            raise ValueError(f"{name} holds id {value} outside codebook {d}'s vocabulary [0, {self.codebook_sizes[d]})")


@dataclass(frozen=True)
class ContinuousContent:
    """Each position holds a continuous vector of ``dim`` channels (KL-VAE latents, flow-matching targets)."""

    dim: int

    def __post_init__(self) -> None:
        _check_positive("dim", self.dim)


TokenContent = Union[DiscreteContent, ContinuousContent]


@dataclass
class TokenLayout:
    """Coordinates, AR groups and padding of a batch of token sequences (see module docstring).

    Groups must be non-decreasing along each sequence over its valid positions: the order of
    positions in memory is the order in which groups are generated.
    """

    coords: torch.Tensor
    groups: torch.Tensor
    valid: torch.Tensor
    content: TokenContent | None = None

    def __post_init__(self) -> None:
        for name in ("coords", "groups", "valid"):
            _check_tensor_type(name, getattr(self, name))
        if self.content is not None and not isinstance(self.content, (DiscreteContent, ContinuousContent)):
            raise TypeError(f"content must be None, a DiscreteContent or a ContinuousContent, got {self.content!r}")
        if self.coords.dim() != 3:
            raise ValueError(f"coords must have shape [B, T, C], got {tuple(self.coords.shape)}")
        B, T, _ = self.coords.shape
        if tuple(self.groups.shape) != (B, T):
            raise ValueError(f"groups must have shape [B, T] = {(B, T)}, got {tuple(self.groups.shape)}")
        if tuple(self.valid.shape) != (B, T):
            raise ValueError(f"valid must have shape [B, T] = {(B, T)}, got {tuple(self.valid.shape)}")
        if self.valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {self.valid.dtype}")
        if self.groups.is_floating_point() or self.groups.dtype == torch.bool:
            raise TypeError(f"groups must be an integer tensor, got {self.groups.dtype}")
        self.coords = self.coords.float()
        self.groups = self.groups.long()
        real_groups = torch.where(self.valid, self.groups, torch.iinfo(torch.long).max)
        running_max = torch.where(self.valid, self.groups, torch.iinfo(torch.long).min).cummax(dim=1).values
        if bool((self.valid & (real_groups < running_max)).any()):
            raise ValueError("groups must be non-decreasing along each sequence over its valid positions")

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.coords.shape[0]

    @property
    def seq_len(self) -> int:
        return self.coords.shape[1]

    @property
    def coord_rank(self) -> int:
        return self.coords.shape[2]

    @property
    def lengths(self) -> torch.Tensor:
        """Number of valid positions per sequence, ``[B]``."""
        return self.valid.sum(dim=1)

    @property
    def num_groups(self) -> int:
        return int(self.groups[self.valid].max()) + 1 if bool(self.valid.any()) else 0

    # ---- the mask ----------------------------------------------------------------------------
    def attention_mask(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Boolean ``[B, end - start, T]`` mask: entry ``[b, i, j]`` is True iff query ``start + i`` may attend to key j.

        Key j is visible to query i when j is valid and ``group[j] <= group[i]``. A padding query
        sees only itself so that attention never normalises over an empty set (its output is
        ignored). ``start``/``end`` select the query rows of a prefill chunk or a decode step.
        """
        end = self.seq_len if end is None else end
        if not 0 <= start <= end <= self.seq_len:
            raise ValueError(f"need 0 <= start <= end <= seq_len={self.seq_len}, got start={start}, end={end}")
        g_BT, valid_BT = self.groups, self.valid
        q_groups_BQ, q_valid_BQ = g_BT[:, start:end], valid_BT[:, start:end]
        allowed_BQT = (g_BT.unsqueeze(1) <= q_groups_BQ.unsqueeze(2)) & valid_BT.unsqueeze(1)
        allowed_BQT &= q_valid_BQ.unsqueeze(2)
        rows_Q = torch.arange(start, end, device=g_BT.device)
        self_QT = rows_Q.unsqueeze(1) == torch.arange(self.seq_len, device=g_BT.device).unsqueeze(0)
        allowed_BQT |= self_QT & ~q_valid_BQ.unsqueeze(2)
        return allowed_BQT

    # ---- building layouts --------------------------------------------------------------------
    @classmethod
    def from_coords(
        cls,
        coords: torch.Tensor,
        groups: torch.Tensor | None = None,
        *,
        content: TokenContent | None = None,
    ) -> "TokenLayout":
        """One sequence from ``coords [T, C]``; ``groups [T]`` defaults to one group per position (causal)."""
        _check_tensor_type("coords", coords)
        if coords.dim() != 2:
            raise ValueError(f"coords must have shape [T, C], got {tuple(coords.shape)}")
        T = coords.shape[0]
        groups = torch.arange(T) if groups is None else groups
        return cls(
            coords=coords.unsqueeze(0),
            groups=groups.unsqueeze(0),
            valid=torch.ones(1, T, dtype=torch.bool, device=coords.device),
            content=content,
        )

    @classmethod
    def sequence(cls, length: int, *, start: int = 0, content: TokenContent | None = None) -> "TokenLayout":
        """A plain causal 1D sequence (text, a 1D flexible tokenizer, octree order, audio frames)."""
        _check_positive("length", length)
        positions = torch.arange(start, start + length, dtype=torch.float32)
        return cls.from_coords(positions.unsqueeze(1), content=content)

    @classmethod
    def grid(cls, shape: Sequence[int], *, content: TokenContent | None = None) -> "TokenLayout":
        """A raster-order next-token grid: ``(h, w)`` for images, ``(t, h, w)`` for video."""
        shape = _as_shape("shape", shape)
        axes = [torch.arange(size, dtype=torch.float32) for size in shape]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
        return cls.from_coords(coords, content=content)

    @classmethod
    def scales(cls, patch_nums: Sequence[int], *, content: TokenContent | None = None) -> "TokenLayout":
        """A VAR-style pyramid: scale k is a ``pn_k × pn_k`` grid and one group (next-scale), sides coarse to fine.

        Coordinates are ``(scale, y, x)`` with y, x the cell centres measured on the finest grid,
        so a location keeps (nearly) the same spatial coordinate at every scale.
        """
        if isinstance(patch_nums, Sequence) and len(patch_nums) < 1:
            raise ValueError("patch_nums must name at least one scale")
        patch_nums = _as_increasing("patch_nums", patch_nums)
        finest = max(patch_nums)
        coords, groups = [], []
        for k, pn in enumerate(patch_nums):
            centres = (torch.arange(pn, dtype=torch.float32) + 0.5) * (finest / pn) - 0.5
            yy, xx = torch.meshgrid(centres, centres, indexing="ij")
            coords.append(torch.stack([torch.full_like(yy, k), yy, xx], dim=-1).reshape(-1, 3))
            groups.append(torch.full((pn * pn,), k, dtype=torch.long))
        return cls.from_coords(torch.cat(coords), torch.cat(groups), content=content)

    @classmethod
    def cells(cls, shape: Sequence[int], cell: int, *, content: TokenContent | None = None) -> "TokenLayout":
        """A 2D grid generated ``cell × cell`` blocks at a time (xAR's next-cell), blocks in raster order."""
        if len(_as_shape("shape", shape)) != 2:
            raise ValueError(f"shape must be (h, w), got {tuple(shape)}")
        h, w = shape
        _check_positive("cell", cell)
        if h % cell or w % cell:
            raise ValueError(f"shape {(h, w)} must be divisible by cell={cell}")
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        block = (yy // cell) * (w // cell) + (xx // cell)
        order = torch.argsort(block.reshape(-1) * (h * w) + torch.arange(h * w), stable=True)
        coords = torch.stack([yy, xx], dim=-1).reshape(-1, 2).float()[order]
        return cls.from_coords(coords, block.reshape(-1)[order], content=content)

    @classmethod
    def stack(cls, layouts: Sequence["TokenLayout"], *, pad_to: int | None = None) -> "TokenLayout":
        """Batch single-sequence layouts of different lengths, right-padding with invalid positions."""
        if not layouts:
            raise ValueError("layouts must not be empty")
        ranks = {lay.coord_rank for lay in layouts}
        if len(ranks) != 1:
            raise ValueError(f"layouts must share one coordinate rank, got {sorted(ranks)}")
        contents = {lay.content for lay in layouts}
        if len(contents) != 1:
            raise ValueError(f"layouts must share one content, got {sorted(map(repr, contents))}")
        rows = [row for lay in layouts for row in lay.unbind()]
        longest = max(int(r.lengths[0]) for r in rows)
        T = longest if pad_to is None else pad_to
        if T < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
        coords = torch.zeros(len(rows), T, ranks.pop())
        groups = torch.zeros(len(rows), T, dtype=torch.long)
        valid = torch.zeros(len(rows), T, dtype=torch.bool)
        for b, row in enumerate(rows):
            n = int(row.lengths[0])
            coords[b, :n] = row.coords[0, row.valid[0]]
            groups[b, :n] = row.groups[0, row.valid[0]]
            valid[b, :n] = True
        return cls(coords=coords, groups=groups, valid=valid, content=layouts[0].content)

    def unbind(self) -> list["TokenLayout"]:
        """The batch as a list of single-sequence layouts (padding kept)."""
        return [
            TokenLayout(self.coords[b : b + 1], self.groups[b : b + 1], self.valid[b : b + 1], self.content)
            for b in range(self.batch_size)
        ]

    def expand(self, batch_size: int) -> "TokenLayout":
        """Repeat a one-sequence layout over a batch (a view, no copy)."""
        if self.batch_size != 1:
            raise ValueError(f"expand needs a layout of batch size 1, got {self.batch_size}")
        _check_positive("batch_size", batch_size)
        return TokenLayout(
            self.coords.expand(batch_size, -1, -1),
            self.groups.expand(batch_size, -1),
            self.valid.expand(batch_size, -1),
            self.content,
        )

    def with_prefix(self, length: int, *, valid: torch.Tensor | None = None) -> "TokenLayout":
        """Prepend ``length`` conditioning positions (class id, text tokens) as group 0, shifting groups by 1.

        Prefix coordinates run ``-length .. -1`` on every axis: ordered among themselves, and
        distinct from the body's non-negative coordinates. ``valid`` (bool ``[B, length]``) marks
        padded prefix positions (a short prompt) so attention skips them; all valid by default.
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be an int >= 0, got {length!r}")
        if length == 0:
            return self
        B, _, C = self.coords.shape
        device = self.coords.device
        if valid is None:
            valid = torch.ones(B, length, dtype=torch.bool, device=device)
        elif not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.dim() != 2 or valid.shape[1] != length:
            got = tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__
            raise ValueError(f"valid must be a bool tensor [B, {length}] (the prefix's padding mask), got {got}")
        rows = max(B, valid.shape[0])
        body = self if B == rows else self.expand(rows)
        prefix_coords = torch.arange(-length, 0, dtype=torch.float32, device=device).view(1, length, 1)
        return TokenLayout(
            coords=torch.cat([prefix_coords.expand(rows, length, C), body.coords], dim=1),
            groups=torch.cat([torch.zeros(rows, length, dtype=torch.long, device=device), body.groups + 1], dim=1),
            valid=torch.cat([valid.to(device).expand(rows, length), body.valid], dim=1),
            content=self.content,
        )

    def to(self, device: torch.device | str) -> "TokenLayout":
        return TokenLayout(self.coords.to(device), self.groups.to(device), self.valid.to(device), self.content)

    def slice(self, start: int, end: int) -> "TokenLayout":
        """Positions ``[start, end)`` of every sequence (a chunk for prefill or a decode step)."""
        return TokenLayout(
            self.coords[:, start:end], self.groups[:, start:end], self.valid[:, start:end], self.content
        )


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_real(name: str, value: object, *, above: float | None = None, at_least: float | None = None) -> float:
    """``value`` as a finite float (``> above``, ``>= at_least`` when given): TypeError if no number, else ValueError."""
    expected = "a finite number" + ("" if above is None else f" > {above:g}") + ("" if at_least is None else f" >= {at_least:g}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (above is not None and number <= above) or (at_least is not None and number < at_least):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _check_tensor_type(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _as_shape(name: str, shape: Sequence[int], *, rank: int | None = None) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints (of ``rank`` sides when given), or an error naming ``name``."""
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise TypeError(f"{name} must be a sequence of positive ints, got {type(shape).__name__}")
    if len(shape) < 1:
        raise ValueError(f"{name} must name at least one axis, got {tuple(shape)}")
    if rank is not None and len(shape) != rank:
        raise ValueError(f"{name} must have {rank} sides, got {tuple(shape)}")
    for axis, size in enumerate(shape):
        _check_positive(f"{name}[{axis}]", size)
    return tuple(shape)


def _as_increasing(name: str, sides: Sequence[int]) -> tuple[int, ...]:
    """A pyramid's sides: positive ints, strictly increasing (coarse to fine)."""
    sides = _as_shape(name, sides)
    if any(b <= a for a, b in zip(sides, sides[1:])):
        raise ValueError(f"{name} must be strictly increasing (coarse to fine), got {sides}")
    return sides
