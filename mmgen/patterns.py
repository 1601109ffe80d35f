"""Patterns: pure, invertible maps between a sample's native token shape and the GPT's sequence.

A tokenizer hands over tokens in their native shape — an ``(h, w)`` grid, a pyramid of scales,
``T`` frames, ``T`` steps of ``K`` residual codebooks — while the GPT sees one position-major
sequence ``[B, L, *rest]`` split into ordered groups (:class:`~mmgen.tokens.TokenLayout`). How the
one becomes the other is a choice of the *generator*, not of the tokenizer: the same 16×16 grid can
be generated token by token (:class:`Raster`), in cells (:class:`Cells`), in strided phases
(:class:`Subsample`) or at once (:class:`Whole`); the same RVQ codes can be flattened, delayed
(MusicGen) or kept parallel for a depth head. Following audiocraft's ``codebooks_patterns``, each
such choice is a small frozen object that builds the layout and converts tensors both ways with one
gather, exactly invertible and tested, so the engine never special-cases a modality.

"native" is ``[B, *axes, *rest]`` where ``rest`` is anything trailing (nothing for one codebook of
ids, ``D`` codebooks, ``C`` latent channels), so one pattern serves ids and latents alike, on any
device. :class:`Scales` takes a list (one entry per scale) instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from math import prod
from typing import ClassVar, Sequence

import torch

from mmgen.tokens import TokenContent, TokenLayout, _as_increasing, _as_shape, _check_positive

__all__ = [
    "Pattern",
    "Raster",
    "Cells",
    "Subsample",
    "Whole",
    "Scales",
    "Frames",
    "FoldedFrames",
    "FlattenCodebooks",
    "DelayCodebooks",
    "InputCoordinates",
    "ParallelCodebooks",
]


class Pattern(ABC):
    """Base of all patterns: a fixed order of ``L`` positions, each with coordinates and a group.

    Subclasses say where each position sits (:meth:`_coords_and_groups`) and how tensors move
    (:meth:`to_sequence` / :meth:`from_sequence`); sizes and the layout follow from that.
    """

    @abstractmethod
    def _coords_and_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``coords [L, C]`` (float) and ``groups [L]`` (long, non-decreasing, every id in 0..K-1 used)."""

    @abstractmethod
    def to_sequence(self, native: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Native tokens -> the sequence ``[B, L, *rest]``."""

    @abstractmethod
    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The exact inverse of :meth:`to_sequence`."""

    @cached_property
    def _plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._coords_and_groups()

    @property
    def num_positions(self) -> int:
        """L, the sequence length."""
        return self._plan[1].numel()

    @cached_property
    def group_sizes(self) -> tuple[int, ...]:
        """Positions per group, in generation order."""
        return tuple(torch.bincount(self._plan[1]).tolist())

    @cached_property
    def group_slices(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` of each group's positions in the sequence (groups are contiguous)."""
        ends = torch.tensor(self.group_sizes).cumsum(0).tolist()
        return tuple(zip([0] + ends[:-1], ends))

    def layout(self, *, content: TokenContent | None = None) -> TokenLayout:
        """The batch-1 layout of the sequence: coordinates, groups, all positions valid."""
        coords_LC, groups_L = self._plan
        return TokenLayout.from_coords(coords_LC.clone(), groups_L.clone(), content=content)


class _GridPattern(Pattern):
    """A permutation of the positions of a grid ``axes`` (flattened in raster order).

    Subclasses give ``_axes``, optionally ``_kept`` (trailing native axes of fixed size that stay
    per position, e.g. codebooks) and :meth:`_arrange`; coordinates are the grid indices.
    """

    @property
    @abstractmethod
    def _axes(self) -> tuple[int, ...]: ...

    @property
    def _kept(self) -> tuple[int, ...]:
        return ()

    @abstractmethod
    def _arrange(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``order [L]`` (raster index of each sequence position; None = raster order) and ``groups [L]``."""

    @cached_property
    def _order(self) -> torch.Tensor | None:
        return self._arrange()[0]

    @cached_property
    def _inverse(self) -> torch.Tensor | None:
        return None if self._order is None else torch.argsort(self._order)

    def _coords_and_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        order_L, groups_L = self._arrange()
        coords_LC = _raster_coords(self._axes)
        return (coords_LC if order_L is None else coords_LC[order_L]), groups_L

    def to_sequence(self, native: torch.Tensor) -> torch.Tensor:
        """``[B, *axes, *kept, *rest]`` -> ``[B, L, *kept, *rest]``."""
        _check_tensor("native", native, self._axes + self._kept)
        return _gather(native.flatten(1, len(self._axes)), self._order)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, L, *kept, *rest]`` -> ``[B, *axes, *kept, *rest]``."""
        _check_tensor("seq", seq, (self.num_positions,) + self._kept)
        return _gather(seq, self._inverse).unflatten(1, self._axes)


@dataclass(frozen=True)
class _ShapedGrid(_GridPattern):
    """A grid pattern over ``shape`` (of rank ``_rank`` when set)."""

    shape: tuple[int, ...]
    _rank: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _as_shape("shape", self.shape, rank=self._rank))

    @property
    def _axes(self) -> tuple[int, ...]:
        return self.shape


@dataclass(frozen=True)
class Raster(_ShapedGrid):
    """Next-token in raster order over a grid of any rank: a 1D sequence, ``(h, w)``, ``(t, h, w)``."""

    def _arrange(self) -> tuple[None, torch.Tensor]:
        return None, torch.arange(prod(self.shape))


@dataclass(frozen=True)
class Whole(_ShapedGrid):
    """The whole grid as one group (xAR's next-image): raster order, every position generated at once."""

    def _arrange(self) -> tuple[None, torch.Tensor]:
        return None, torch.zeros(prod(self.shape), dtype=torch.long)


@dataclass(frozen=True)
class _KeyedGrid(_ShapedGrid):
    """A 2D grid cut by a block side (the field named ``_side_name``, which must divide both sides)
    into groups by a key per cell (:meth:`_key`): groups in key order, raster order within one."""

    _rank: ClassVar[int | None] = 2
    _side_name: ClassVar[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        side = getattr(self, self._side_name)
        _check_positive(self._side_name, side)
        if self.shape[0] % side or self.shape[1] % side:
            raise ValueError(f"shape {self.shape} must be divisible by {self._side_name}={side}")

    @abstractmethod
    def _key(self, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        """The group of each cell ``(y, x)``: ids 0..K-1, all used."""

    def _arrange(self) -> tuple[torch.Tensor, torch.Tensor]:
        yy, xx = torch.meshgrid(torch.arange(self.shape[0]), torch.arange(self.shape[1]), indexing="ij")
        key_L = self._key(yy, xx).reshape(-1)
        order_L = torch.argsort(key_L, stable=True)
        return order_L, key_L[order_L]


@dataclass(frozen=True)
class Cells(_KeyedGrid):
    """A 2D grid generated ``cell × cell`` blocks at a time (xAR's next-cell), blocks in raster order."""

    cell: int
    _side_name: ClassVar[str] = "cell"

    def _key(self, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return (yy // self.cell) * (self.shape[1] // self.cell) + xx // self.cell


@dataclass(frozen=True)
class Subsample(_KeyedGrid):
    """Strided sub-grids as groups (xAR's next-subsample): group ``py * s + px`` holds
    ``(py + s·i, px + s·j)`` in raster order, so all s² groups are equally sized and spread out."""

    stride: int
    _side_name: ClassVar[str] = "stride"

    def _key(self, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return (yy % self.stride) * self.stride + xx % self.stride


@dataclass(frozen=True)
class Frames(_GridPattern):
    """Video-like ``[B, T, *frame_shape, *rest]``: coords ``(t, *frame_index)``, one group per frame or per position."""

    num_frames: int
    frame_shape: tuple[int, ...]
    per_frame: bool = field(default=True, kw_only=True)

    def __post_init__(self) -> None:
        _check_positive("num_frames", self.num_frames)
        object.__setattr__(self, "frame_shape", _as_shape("frame_shape", self.frame_shape))
        if not isinstance(self.per_frame, bool):
            raise TypeError(f"per_frame must be a bool, got {self.per_frame!r}")

    @property
    def _axes(self) -> tuple[int, ...]:
        return (self.num_frames,) + self.frame_shape

    def _arrange(self) -> tuple[None, torch.Tensor]:
        positions_L = torch.arange(prod(self._axes))
        return None, (positions_L // prod(self.frame_shape) if self.per_frame else positions_L)


@dataclass(frozen=True)
class FoldedFrames(_GridPattern):
    """Video-like ``[B, T, *frame_shape, *rest]`` -> ``[B, T, prod(frame_shape), *rest]``: one position per frame.

    A frame's positions become the entries of one sequence position, as the codebooks of an RVQ frame
    are, so a :class:`~mmgen.heads.DepthHead` draws them one after another — the positions of a frame
    agree with each other — while the GPT still takes one step per frame. Coordinates ``(t,)``.
    """

    num_frames: int
    frame_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_positive("num_frames", self.num_frames)
        object.__setattr__(self, "frame_shape", _as_shape("frame_shape", self.frame_shape))

    @property
    def _axes(self) -> tuple[int, ...]:
        return (self.num_frames,)

    @property
    def _kept(self) -> tuple[int, ...]:
        return self.frame_shape

    def _arrange(self) -> tuple[None, torch.Tensor]:
        return None, torch.arange(self.num_frames)

    def to_sequence(self, native: torch.Tensor) -> torch.Tensor:
        """``[B, T, *frame_shape, *rest]`` -> ``[B, T, prod(frame_shape), *rest]``."""
        return super().to_sequence(native).flatten(2, 1 + len(self.frame_shape))

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, T, prod(frame_shape), *rest]`` -> ``[B, T, *frame_shape, *rest]``."""
        _check_tensor("seq", seq, (self.num_frames, prod(self.frame_shape)))
        return super().from_sequence(seq.unflatten(2, self.frame_shape))


@dataclass(frozen=True)
class _Codebooks:
    """Native ids ``[B, T, K, *rest]``: ``steps`` T (frames), ``codebooks`` K, time-major."""

    steps: int
    codebooks: int

    def __post_init__(self) -> None:
        _check_positive("steps", self.steps)
        _check_positive("codebooks", self.codebooks)


@dataclass(frozen=True)
class FlattenCodebooks(_Codebooks, _GridPattern):
    """``[B, T, K]`` codes -> ``[B, T*K]``, one code per position, t-major (t0k0, t0k1, …, t1k0, …).

    Coordinates ``(t, k)``, one position per group: K times the steps of :class:`ParallelCodebooks`.
    """

    @property
    def _axes(self) -> tuple[int, ...]:
        return (self.steps, self.codebooks)

    def _arrange(self) -> tuple[None, torch.Tensor]:
        return None, torch.arange(self.steps * self.codebooks)


@dataclass(frozen=True)
class ParallelCodebooks(_Codebooks, _GridPattern):
    """``[B, T, K]`` unchanged: all K codes of a step in one position (a depth head or parallel heads)."""

    @property
    def _axes(self) -> tuple[int, ...]:
        return (self.steps,)

    @property
    def _kept(self) -> tuple[int, ...]:
        return (self.codebooks,)

    def _arrange(self) -> tuple[None, torch.Tensor]:
        return None, torch.arange(self.steps)


@dataclass(frozen=True)
class DelayCodebooks(_Codebooks, Pattern):
    """MusicGen's delay: codebook k is shifted k steps late, ``[B, T, K]`` -> ``[B, T+K-1, K]``.

    ``seq[:, s, k] = native[:, s-k, k]`` when ``0 <= s-k < T``, else ``empty_id`` (a reserved id,
    usually the codebook size, so the GPT's vocabulary is size + 1). Step s then predicts the fine
    codes of earlier steps alongside the coarse code of step s; :attr:`entry_valid` says which entries
    are real (train only on those).
    """

    empty_id: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.empty_id, int) or isinstance(self.empty_id, bool):
            raise TypeError(f"empty_id must be an int, got {self.empty_id!r}")

    @cached_property
    def _delays(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat gather indices native -> seq ``[S*K]`` and seq -> native ``[T*K]``, and ``valid_SK``."""
        T, K = self.steps, self.codebooks
        k_K = torch.arange(K)
        source_SK = torch.arange(T + K - 1).unsqueeze(1) - k_K
        to_seq = (source_SK.clamp(0, T - 1) * K + k_K).flatten()
        to_native = ((torch.arange(T).unsqueeze(1) + k_K) * K + k_K).flatten()
        return to_seq, to_native, (source_SK >= 0) & (source_SK < T)

    @property
    def entry_valid(self) -> torch.Tensor:
        """bool ``[T+K-1, K]``: True where the sequence holds a real code, False where ``empty_id``."""
        return self._delays[2].clone()

    def _coords_and_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        steps_S = torch.arange(self.steps + self.codebooks - 1)
        return steps_S.float().unsqueeze(1), steps_S

    def to_sequence(self, native: torch.Tensor) -> torch.Tensor:
        """``[B, T, K, *rest]`` -> ``[B, T+K-1, K, *rest]`` with ``empty_id`` outside the delayed band."""
        _check_tensor("native", native, (self.steps, self.codebooks))
        to_seq, _, valid_SK = self._delays
        seq = _gather(native.flatten(1, 2), to_seq).unflatten(1, valid_SK.shape)
        empty = ~valid_SK.to(seq.device).view(valid_SK.shape + (1,) * (native.dim() - 3))
        return seq.masked_fill_(empty, self.empty_id)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """``[B, T+K-1, K, *rest]`` -> ``[B, T, K, *rest]``; the empty entries are ignored."""
        _check_tensor("seq", seq, (self.num_positions, self.codebooks))
        return _gather(seq.flatten(1, 2), self._delays[1]).unflatten(1, (self.steps, self.codebooks))


@dataclass(frozen=True)
class Scales(Pattern):
    """A pyramid (next-scale): native is a list of ``[B, *scale_shape, *rest]``, one group per scale.

    ``sides`` go coarse to fine: an int ``s`` is the cube ``(s,) * rank`` (images, 1D pyramids), a tuple of
    ``rank`` ints a box (a space-time pyramid ``(t, h, w)``); no axis shrinks from one scale to the next and
    every scale is larger than the one before. Coordinates are ``(scale, centres...)`` with the cell centres
    measured on the finest grid, so a location keeps (nearly) the same coordinate at every scale (as
    :meth:`TokenLayout.scales`).
    """

    sides: tuple[int | tuple[int, ...], ...]
    rank: int = 2

    def __post_init__(self) -> None:
        _check_positive("rank", self.rank)
        if not isinstance(self.sides, Sequence) or isinstance(self.sides, str) or not self.sides:
            raise ValueError(f"sides must name at least one axis, got {self.sides!r}")
        if all(isinstance(side, int) for side in self.sides):
            object.__setattr__(self, "sides", _as_increasing("sides", self.sides))
            return
        shapes = tuple(_as_shape(f"sides[{k}]", side, rank=self.rank) for k, side in enumerate(self.sides))
        for k, (a, b) in enumerate(zip(shapes, shapes[1:]), start=1):
            if any(y < x for x, y in zip(a, b)) or a == b:
                raise ValueError(f"sides must grow coarse to fine (no axis shrinking), got {shapes[k - 1]} then {shapes[k]}")
        object.__setattr__(self, "sides", shapes)

    @cached_property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Each scale's grid shape."""
        return tuple((side,) * self.rank if isinstance(side, int) else side for side in self.sides)

    def _coords_and_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        finest = self.shapes[-1]
        coords, groups = [], []
        for k, shape in enumerate(self.shapes):
            centres = [(torch.arange(n, dtype=torch.float32) + 0.5) * (f / n) - 0.5 for n, f in zip(shape, finest)]
            grids = torch.meshgrid(*centres, indexing="ij")
            coords.append(torch.stack([torch.full_like(grids[0], k), *grids], dim=-1).reshape(-1, self.rank + 1))
            groups.append(torch.full((prod(shape),), k, dtype=torch.long))
        return torch.cat(coords), torch.cat(groups)

    def to_sequence(self, native: Sequence[torch.Tensor]) -> torch.Tensor:
        """A list of ``[B, *scale_shape, *rest]`` in the order of ``sides`` -> ``[B, L, *rest]``."""
        if not isinstance(native, (list, tuple)):
            raise TypeError(f"native must be a list of tensors (one per scale), got {type(native).__name__}")
        if len(native) != len(self.shapes):
            raise ValueError(f"native must hold {len(self.shapes)} tensors (one per scale), got {len(native)}")
        for k, (x, shape) in enumerate(zip(native, self.shapes)):
            _check_tensor(f"native[{k}]", x, shape)
            first = native[0].shape
            if (x.shape[0], x.shape[1 + self.rank:]) != (first[0], first[1 + self.rank:]):
                raise ValueError(f"native[{k}] {tuple(x.shape)} must share batch and trailing dims with native[0] {tuple(first)}")
        return torch.cat([x.flatten(1, self.rank) for x in native], dim=1)

    def from_sequence(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """``[B, L, *rest]`` -> the list of per-scale tensors (views of ``seq``)."""
        _check_tensor("seq", seq, (self.num_positions,))
        parts = seq.split(self.group_sizes, dim=1)
        return [part.unflatten(1, shape) for part, shape in zip(parts, self.shapes)]


# ---- helpers -----------------------------------------------------------------------------------------
def _check_tensor(name: str, x: object, shape: tuple[int, ...]) -> None:
    """Raise unless ``x`` is a tensor ``[B, *shape, *rest]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 + len(shape) or tuple(x.shape[1 : 1 + len(shape)]) != shape:
        expected = ", ".join(["B", *map(str, shape), "*rest"])
        raise ValueError(f"{name} must have shape [{expected}], got {tuple(x.shape)}")


def _gather(x: torch.Tensor, index_L: torch.Tensor | None) -> torch.Tensor:
    """Positions ``index_L`` of ``x [B, N, ...]`` along dim 1 (``x`` itself for None)."""
    return x if index_L is None else x.index_select(1, index_L.to(x.device))


@dataclass(frozen=True)
class InputCoordinates(Pattern):
    """``pattern`` with each slot placed where the token it *holds* sits, not the one it predicts (LlamaGen's RoPE).

    In next-token generation slot k holds token k − 1 and predicts token k; mmgen gives it token k's
    coordinates, LlamaGen token k − 1's, and slot 0 (the class token) none at all: its coordinates are
    NaN, which the rotary embedding reads as "no position" (queries and keys zeroed, as LlamaGen's
    all-zero RoPE row does). Needs one position per group; tensors move as ``pattern`` moves them.
    """

    pattern: Pattern

    def __post_init__(self) -> None:
        if any(size != 1 for size in self.pattern.group_sizes):
            raise ValueError("InputCoordinates needs a pattern of one position per group (next-token order)")

    def _coords_and_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        coords_LC, groups_L = self.pattern._plan
        unplaced = torch.full_like(coords_LC[:1], float("nan"))
        return torch.cat([unplaced, coords_LC[:-1]]), groups_L

    def to_sequence(self, native: torch.Tensor) -> torch.Tensor:
        return self.pattern.to_sequence(native)

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return self.pattern.from_sequence(seq)


def _raster_coords(shape: Sequence[int]) -> torch.Tensor:
    """Grid indices ``[prod(shape), rank]`` (float) in raster order, as :meth:`TokenLayout.grid`."""
    axes = [torch.arange(size, dtype=torch.float32) for size in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
