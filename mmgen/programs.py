"""Programs for the engine (:mod:`mmgen.generation`) over a fixed pattern, and the input rules they use.

A :class:`PatternProgram` walks the groups of a :mod:`mmgen.patterns` pattern in order. What the
slots of group k hold is the paradigm's *input rule*:

- :class:`PreviousGroupInputs` — group k − 1's tokens, position by position (next-token: the
  previous token; next-X: the previous entity, noised during training for continuous heads);
- :class:`ResampledPreviousInputs` — group k − 1 resampled onto group k's positions (xAR's
  next-scale over continuous latents);
- :class:`ScaleContextInputs` — what the tokenizer computes from every scale so far (VAR).

Group 0 holds the GPT's learned start embedding. Each rule also gives the teacher-forcing inputs of
the whole sequence, built from the same functions, so training and generation see the same inputs.
An optional ``stop`` rule ends rows early (an end id), which turns their later slots into padding.
Entries a codebook pattern leaves empty (the delay pattern's first and last steps) are set to its
empty id after each draw, exactly the tokens training saw there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from .conditioning import Conditioning
from .generation import GroupRequest, draw_seeds, generate
from .gpt import GPT
from .heads import Head
from .patterns import Raster
from .protocol import ScaleContext
from .sampling import SamplingConfig
from .tokens import TokenLayout

__all__ = [
    "InputRule",
    "PreviousGroupInputs",
    "ResampledPreviousInputs",
    "ScaleContextInputs",
    "PatternProgram",
    "DrawnOrder",
    "TeacherForcing",
    "stop_at_id",
    "continue_tokens",
]


class InputRule(Protocol):
    """What the slots of group k hold, given what groups < k drew."""

    def begin(self) -> Any: ...

    def step(self, memory: Any, group: int, tokens: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        """After group ``group`` drew ``tokens``: new memory and the inputs ``[B, n_{group+1}, dim]`` (None after the last)."""
        ...

    def teacher(self, groups: list[torch.Tensor], *, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Training: the inputs of groups 1..K−1 from the true tokens of every group."""
        ...


@dataclass
class PreviousGroupInputs:
    """Group k's slot i holds group k − 1's token i, embedded by the head (equal group sizes).

    ``noisy_context``: during training each context group is corrupted by the head with its own
    noise level per row (xAR's noisy-context learning); generation feeds clean tokens.
    """

    gpt: GPT
    head: Head
    noisy_context: bool = False

    def begin(self) -> None:
        return None

    def place(self, tokens: torch.Tensor, group: int) -> torch.Tensor:
        """Group ``group − 1``'s tokens on group ``group``'s positions (the same positions here)."""
        return tokens

    def step(self, memory: None, group: int, tokens: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, self.head.embed(self.gpt, self.place(tokens, group + 1))

    def teacher(self, groups: list[torch.Tensor], *, generator: torch.Generator | None) -> list[torch.Tensor]:
        inputs = []
        for k, previous in enumerate(groups[:-1]):
            level = None
            if self.noisy_context:
                previous, level = self.head.corrupt(previous, generator=generator)
            inputs.append(self.head.embed(self.gpt, self.place(previous, k + 1), noise_level=level))
        return inputs


@dataclass
class ResampledPreviousInputs(PreviousGroupInputs):
    """Like :class:`PreviousGroupInputs`, with group k − 1 mapped onto group k's positions by ``resample(tokens, k)``."""

    resample: Callable[[torch.Tensor, int], torch.Tensor] | None = None

    def place(self, tokens: torch.Tensor, group: int) -> torch.Tensor:
        return self.resample(tokens, group)


@dataclass
class ScaleContextInputs:
    """Scale k's slots hold the tokenizer's next-scale inputs from scales < k, projected by ``gpt.embed_inputs``."""

    gpt: GPT
    tokenizer: ScaleContext

    def begin(self) -> None:
        return None

    def step(self, memory: Any, group: int, tokens: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        memory, inputs = self.tokenizer.context_step(memory, group, tokens)
        return memory, None if inputs is None else self.gpt.embed_inputs(inputs)

    def teacher(self, groups: list[torch.Tensor], *, generator: torch.Generator | None) -> list[torch.Tensor]:
        context = self.tokenizer.teacher_context(torch.cat(groups, dim=1))
        return [self.gpt.embed_inputs(context)]


def stop_at_id(end_id: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stop rule: a row ends after the group in which it drew ``end_id`` (single-codebook ids)."""

    def stop(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens == end_id).flatten(1).any(dim=1)

    return stop


@dataclass
class TeacherForcing:
    """One training forward's pieces: slot inputs ``[B, L, dim]``, the body's layout, the targets and their mask.

    ``mask``: bool ``[B, L]`` or, for ids, ``[B, L, D]`` entries that count in the loss; None when all do.
    """

    inputs_BLD: torch.Tensor
    layout: TokenLayout
    targets: torch.Tensor
    mask: torch.Tensor | None = None


class DrawnOrder(ABC):
    """A sequence order whose later groups follow from what was drawn (octrees), so no fixed pattern lists them.

    Like a pattern it maps native tokens to sequences and gives the GPT's coordinate rank through
    :meth:`layout`; instead of group sizes it builds its own :class:`Program` (with ``teacher``) for a GPT.
    """

    @property
    @abstractmethod
    def num_positions(self) -> int:
        """The most positions a sample can take (the decoder's capacity)."""

    @abstractmethod
    def layout(self, *, content: Any = None) -> TokenLayout: ...

    @abstractmethod
    def to_sequence(self, native: Any) -> torch.Tensor: ...

    @abstractmethod
    def from_sequence(self, seq: torch.Tensor) -> Any: ...

    @abstractmethod
    def program(self, *, gpt: GPT) -> Any: ...

    @abstractmethod
    def lengths(self, seq: torch.Tensor) -> torch.Tensor:
        """Positions each sequence ``[N, L]`` of data uses ``[N]`` (the rest is padding)."""


@dataclass
class _PatternState:
    group: int
    memory: Any
    next_inputs: torch.Tensor | None
    drawn: list[torch.Tensor] = field(default_factory=list)
    valid: list[torch.Tensor] = field(default_factory=list)
    live_B: torch.Tensor | None = None


class PatternProgram:
    """The groups of a fixed pattern in order, inputs from ``rule``; ``result`` is the sequence ``[B, L, ...]``.

    Group 0's slots hold the GPT's start embedding, or ``start_inputs`` (``[B, n_0, dim]``) when given.
    ``stop`` (optional): tokens of a group → bool ``[B]``, rows that end after it; their later slots
    are padding and their tokens in ``result`` are ``pad_value``. ``result_valid`` tells which are real.
    """

    def __init__(self, *, gpt: GPT, pattern: Any, rule: InputRule, stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 pad_value: float = 0, start_inputs: torch.Tensor | None = None) -> None:
        self.gpt, self.pattern, self.rule, self.stop, self.pad_value = gpt, pattern, rule, stop, pad_value
        self.start_inputs = start_inputs
        self.sizes, self.slices = tuple(pattern.group_sizes), tuple(pattern.group_slices)
        self.coords_LC = pattern.layout().coords[0]

    @property
    def num_steps(self) -> int:
        return len(self.sizes)

    @property
    def num_positions(self) -> int:
        return self.pattern.num_positions

    def _start(self, batch_size: int) -> torch.Tensor:
        """Group 0's inputs: the given ``start_inputs`` (one row each: the GPT's rows), else the GPT's start embedding."""
        if self.start_inputs is None:
            return self.gpt.start_inputs(batch_size, self.sizes[0])
        return self.start_inputs.expand(-1, self.sizes[0], -1) if self.start_inputs.shape[1] == 1 else self.start_inputs

    def start(self, batch_size: int, device: torch.device) -> _PatternState:
        return _PatternState(group=0, memory=self.rule.begin(), next_inputs=self._start(batch_size),
                             live_B=torch.ones(batch_size, dtype=torch.bool, device=device))

    def next_group(self, state: _PatternState) -> GroupRequest | None:
        if state.group == len(self.sizes) or (self.stop is not None and not bool(state.live_B.any())):
            return None
        B = state.live_B.shape[0]
        a, b = self.slices[state.group]
        coords = self.coords_LC[a:b].to(state.live_B.device).unsqueeze(0).expand(B, -1, -1)
        valid = state.live_B.view(B, 1).expand(B, b - a)
        return GroupRequest(inputs_BnD=state.next_inputs, coords_BnC=coords, valid_Bn=valid, shared=self.stop is None)

    def accept(self, state: _PatternState, tokens: torch.Tensor, valid_Bn: torch.Tensor) -> _PatternState:
        entry_valid = getattr(self.pattern, "entry_valid", None)
        if entry_valid is not None:  # entries a codebook pattern leaves empty hold its empty id, as in training
            a, b = self.slices[state.group]
            keep = entry_valid[a:b].to(tokens.device).unsqueeze(0)
            tokens = torch.where(keep, tokens, torch.full_like(tokens, self.pattern.empty_id))
        state.drawn.append(tokens)
        state.valid.append(valid_Bn)
        if self.stop is not None:
            state.live_B = state.live_B & ~self.stop(tokens).to(state.live_B.device)
        state.group += 1
        if state.group < len(self.sizes):
            state.memory, state.next_inputs = self.rule.step(state.memory, state.group - 1, tokens)
        return state

    def fork(self, state: _PatternState) -> _PatternState:
        """A copy that later ``accept`` calls leave the original untouched by (speculative drafts)."""
        return _PatternState(state.group, state.memory, state.next_inputs, list(state.drawn), list(state.valid), state.live_B)

    def draft_slots(self, state: _PatternState, tokens_BN: torch.Tensor,
                    depths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The slots after candidate tokens in one go: node i's token fills group ``state.group + depths[i]``.

        Returns ``(inputs [B, N, dim], coords [B, N, C], valid [B, N])``, or None where a node's inputs
        depend on more than its own token (a stop rule, or inputs other than the previous token), in which
        case the caller forks the state per node.
        """
        if self.stop is not None or type(self.rule) is not PreviousGroupInputs or self.rule.noisy_context \
                or any(size != 1 for size in self.sizes):
            return None
        B, N = tokens_BN.shape[:2]
        filled = state.group + torch.tensor(depths, dtype=torch.long)
        entry_valid = getattr(self.pattern, "entry_valid", None)
        if entry_valid is not None:
            keep = entry_valid[filled.clamp(max=len(self.sizes) - 1)].to(tokens_BN.device).unsqueeze(0)
            tokens_BN = torch.where(keep, tokens_BN, torch.full_like(tokens_BN, self.pattern.empty_id))
        slot = (filled + 1).clamp(max=len(self.sizes) - 1)
        coords = self.coords_LC[slot].to(tokens_BN.device).unsqueeze(0).expand(B, -1, -1)
        valid = (filled + 1 < len(self.sizes)).to(tokens_BN.device).view(1, N).expand(B, N) & state.live_B.view(B, 1)
        return self.rule.step(None, 0, tokens_BN)[1], coords, valid

    def result(self, state: _PatternState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, L', ...], valid [B, L'])`` over the groups drawn (L' = L unless every row stopped early)."""
        tokens = torch.cat(state.drawn, dim=1)
        valid = torch.cat(state.valid, dim=1).to(tokens.device)
        mask = valid.view(*valid.shape, *([1] * (tokens.dim() - 2)))
        return torch.where(mask, tokens, torch.as_tensor(self.pad_value, dtype=tokens.dtype, device=tokens.device)), valid

    def split(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """A sequence ``[B, L, ...]`` → its groups."""
        if seq.shape[1] != self.num_positions:
            raise ValueError(f"tokens must hold {self.num_positions} positions per sample (the pattern's L), got {seq.shape[1]}")
        return list(seq.split(self.sizes, dim=1))

    def teacher(self, seq: torch.Tensor, *, generator: torch.Generator | None = None) -> TeacherForcing:
        """Training: inputs from the true sequence, the pattern's layout, and the entries a codebook pattern leaves out."""
        inputs = self.teacher_inputs(seq, generator=generator)
        entry_valid = getattr(self.pattern, "entry_valid", None)
        mask = None if entry_valid is None else entry_valid.to(seq.device).unsqueeze(0).expand(seq.shape[0], -1, -1)
        targets = seq if mask is None else torch.where(mask, seq, torch.zeros_like(seq))  # left-out entries: any valid id
        return TeacherForcing(inputs_BLD=inputs, layout=self.pattern.layout(), targets=targets, mask=mask)

    def teacher_inputs(self, seq: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training: the inputs ``[B, L, dim]`` of every slot, from the true sequence."""
        groups = self.split(seq)
        start = self._start(seq.shape[0])
        later = self.rule.teacher(groups, generator=generator) if len(groups) > 1 else []
        return torch.cat([start, *[x.to(start.dtype) for x in later]], dim=1)


@torch.inference_mode()
def continue_tokens(gpt: GPT, head: Head, input_ids: torch.Tensor, *, max_new_tokens: int, sampling: SamplingConfig | None = None,
                    generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """Plain causal language modelling: continue ``input_ids [B, T]`` by ``max_new_tokens``; returns ``[B, T + max_new_tokens]``.

    Position j holds token j and predicts token j + 1 (no start embedding, no conditioning), so a
    converted Llama (:func:`mmgen.convert.gpt_from_llama`) continues exactly as ``transformers`` does.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 1:
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must have shape [B, T] with T >= 1, got {got}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    B, T = input_ids.shape
    pattern = Raster((T - 1 + max_new_tokens,))
    program = PatternProgram(gpt=gpt, pattern=pattern, rule=PreviousGroupInputs(gpt=gpt, head=head),
                             start_inputs=gpt.embed_tokens(input_ids[:, :1]))
    cond = Conditioning.empty(B, gpt.cfg.dim, device=gpt.device, dtype=gpt.dtype)
    seq, _ = generate(gpt, head, program, cond, sampling=sampling or SamplingConfig(), seeds_B=draw_seeds(generator, B),
                      capacity=pattern.num_positions, prefill=input_ids[:, 1:] if T > 1 else None)
    return torch.cat([input_ids, seq[:, T - 1:]], dim=1)
