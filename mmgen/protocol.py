"""The tokenizer protocol: what pipelines and the trainer may know about a tokenizer of any modality.

A generator never names a tokenizer class. It asks the tokenizer for its :class:`TokenSpec` (what
one sample's tokens are: their content and the grid or pyramid they sit on), encodes and decodes in
the tokenizer's native form, and maps native tokens to *positions* — a position-major tensor
``[B, *shape, *rest]`` (or a list of them, one per scale) that :mod:`mmgen.patterns` turns into the
GPT's sequence. Tokenizers whose later groups need inputs computed from earlier ones (VAR's
cumulative next-scale features) also implement :class:`ScaleContext`.

The protocol is structural (``typing.Protocol``): a tokenizer satisfies it by having the methods,
whatever it inherits from. :func:`check_tokenizer` turns a missing piece into a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Protocol, runtime_checkable

import torch

from .tokens import ContinuousContent, DiscreteContent, TokenContent

__all__ = ["TokenSpec", "Tokenizer", "ScaleContext", "check_tokenizer", "has_scale_context", "MODALITIES"]

MODALITIES = ("image", "video", "audio", "shape")
OCTREE_VOCAB = 256  # an octree token is the 8-bit mask of a node's occupied children (mmgen.octree)


def octree_capacity(depth: int) -> int:
    """The most tokens an octree of ``depth`` levels can have: every node of every level occupied."""
    return sum(8**level for level in range(depth))


@dataclass(frozen=True)
class TokenSpec:
    """One sample's tokens as a generator sees them.

    ``shape``: the position grid — ``(N,)`` for a 1D sequence, ``(h, w)`` for an image grid,
    ``(T,)`` frames of audio, ``(t, h, w)`` for video; empty for a pyramid. ``scales``: per scale its
    grid, coarse to fine (VAR, SNAC), empty for a single grid. ``content``: ids over D codebooks
    (positions hold ``[D]`` ids when D > 1) or a continuous vector. ``prefix_decodable``: any prefix
    of a 1D sequence decodes on its own (FlexTok, TiTok), so a generator may stop early.
    ``octree_depth`` > 0: the tokens are the breadth-first nodes of an octree of that many levels
    (:mod:`mmgen.octree`), one 8-bit id each, so a sample's length and later positions follow from its
    ids; ``shape`` is then ``(capacity,)``, the most nodes a tree can have.
    """

    content: TokenContent
    shape: tuple[int, ...] = ()
    scales: tuple[tuple[int, ...], ...] = ()
    prefix_decodable: bool = False
    octree_depth: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.content, (DiscreteContent, ContinuousContent)):
            raise TypeError(f"content must be a DiscreteContent or ContinuousContent, got {type(self.content).__name__}")
        if bool(self.shape) == bool(self.scales):
            raise ValueError("a TokenSpec has either a shape (one grid) or scales (a pyramid), not both or neither")
        for axis in (*self.shape, *(s for scale in self.scales for s in scale)):
            if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
                raise ValueError(f"token grid sizes must be positive ints, got shape={self.shape}, scales={self.scales}")
        if self.prefix_decodable and len(self.shape) != 1:
            raise ValueError("prefix_decodable needs a 1D sequence (shape of one axis)")
        if isinstance(self.octree_depth, bool) or not isinstance(self.octree_depth, int) or self.octree_depth < 0:
            raise ValueError(f"octree_depth must be an int >= 0, got {self.octree_depth!r}")
        if self.octree_depth:
            capacity = octree_capacity(self.octree_depth)
            if self.shape != (capacity,) or self.content != DiscreteContent((OCTREE_VOCAB,)):
                raise ValueError(f"an octree of depth {self.octree_depth} has shape ({capacity},) (its capacity) and "
                                 f"256 ids (8-bit child masks), got shape={self.shape}, content={self.content}")

    @property
    def is_pyramid(self) -> bool:
        return bool(self.scales)

    @property
    def num_positions(self) -> int:
        return sum(prod(s) for s in self.scales) if self.scales else prod(self.shape)

    @property
    def is_continuous(self) -> bool:
        return isinstance(self.content, ContinuousContent)


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer (image, video, audio, 3D) exposes to generators.

    Audio tokenizers (codecs) also have ``sample_rate``, the rate of the waveforms ``[B, 1, T]`` they
    encode and decode, which pipeline outputs and written files carry.
    """

    modality: str

    def token_spec(self) -> TokenSpec: ...

    def encode(self, x: torch.Tensor) -> Any: ...

    def decode(self, tokens: Any) -> torch.Tensor: ...

    def to_positions(self, tokens: Any) -> torch.Tensor | list[torch.Tensor]: ...

    def from_positions(self, positions: torch.Tensor | list[torch.Tensor]) -> Any: ...


@runtime_checkable
class ScaleContext(Protocol):
    """Inputs for scale k computed from scales < k (VAR: the cumulative reconstruction, resampled).

    Sequences are in :class:`mmgen.patterns.Scales` order (scale by scale, row-major inside one).
    """

    context_dim: int

    def teacher_context(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """Inputs ``[B, L - n_0, context_dim]`` of scales 1..K-1 from the true ids of every scale (training)."""
        ...

    def context_step(self, state: Any, scale_index: int, ids_Bn: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        """After drawing scale ``scale_index``: the new state and the next scale's inputs (None after the last)."""
        ...


def check_tokenizer(tokenizer: object, *, name: str = "tokenizer") -> TokenSpec:
    """Return the tokenizer's spec, or raise naming what the protocol misses."""
    missing = [m for m in ("token_spec", "encode", "decode", "to_positions", "from_positions") if not callable(getattr(tokenizer, m, None))]
    if missing or getattr(tokenizer, "modality", None) not in MODALITIES:
        what = f"methods {missing}" if missing else f"modality in {MODALITIES}"
        raise TypeError(f"{name} must implement mmgen.protocol.Tokenizer; {type(tokenizer).__name__} lacks {what}")
    spec = tokenizer.token_spec()
    if not isinstance(spec, TokenSpec):
        raise TypeError(f"{name}.token_spec() must return an mmgen.protocol.TokenSpec, got {type(spec).__name__}")
    return spec


def has_scale_context(tokenizer: object) -> bool:
    return isinstance(tokenizer, ScaleContext)
