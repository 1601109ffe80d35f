"""The one generation loop every pipeline runs, and its training twin.

A paradigm is a :class:`Program`: it says which slots come next (their inputs, coordinates and, per
row, whether they exist) and records what was drawn for them. The engine owns everything else:

- the GPT's KV cache and a growing token layout (prefix = group 0, then one group per step), so a
  row's next group may depend on what it drew (octrees) and rows may differ in length or stop early
  (their missing slots are padding, masked out of attention);
- classifier-free guidance (the batch doubled: conditional rows, then null rows; the conditioner
  builds both) with a :class:`~mmgen.sampling.GuidanceSchedule` over the steps;
- prefill of known tokens (continuation, image-to-video, an audio prompt) in one forward;
- per-sample seeds: slot j of sample b draws with seed ``seeds_B[b] + j`` (its own count of slots),
  so a sample does not depend on its batch;
- :meth:`Decoder.rollback` and an attention-mask override, the two primitives speculative and tree
  decoding are built from;
- ``callback(step, tokens)`` after each draw; a tensor it returns replaces the drawn tokens
  (diffusers' ``callback_on_step_end`` convention).

Training uses the same layout: :func:`teacher_hidden` runs one forward over prefix + all slots,
which is why greedy generation equals the argmax of a teacher-forced forward (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .conditioning import Conditioning
from .gpt import GPT
from .heads import Head
from .sampling import GuidanceSchedule, SamplingConfig
from .tokens import TokenLayout, _check_positive, _check_tensor_type

__all__ = ["GroupRequest", "Program", "Decoder", "generate", "teacher_hidden", "draw_seeds", "SEED_HIGH"]

SEED_HIGH = 2**62  # per-sample seeds are drawn in [0, SEED_HIGH); slot j adds j


@dataclass
class GroupRequest:
    """The next group's slots: ``inputs_BnD`` embeddings, ``coords_BnC`` coordinates, ``valid_Bn`` which exist per row.

    ``n`` is the largest group over the rows; a row with fewer slots (or a stopped row, with none)
    marks the rest invalid. ``inputs_BnD`` may hold the GPT's rows instead (2B under guidance, the
    conditional rows first) where a sample's rows get different inputs (a class token as the first
    group's input). ``shared``: every row has these same slots (equal coordinates, all valid),
    which lets the engine keep one layout row for the whole batch (a broadcast attention mask).
    """

    inputs_BnD: torch.Tensor
    coords_BnC: torch.Tensor
    valid_Bn: torch.Tensor
    shared: bool = False

    def __post_init__(self) -> None:
        for name, rank, shape in (("inputs_BnD", 3, "[B, n, dim]"), ("coords_BnC", 3, "[B, n, C]"), ("valid_Bn", 2, "[B, n]")):
            value = getattr(self, name)
            _check_tensor_type(name, value)
            if value.dim() != rank:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        B, n = self.valid_Bn.shape
        rows = self.inputs_BnD.shape[0]
        if self.inputs_BnD.shape[1] != n or rows < B or rows % B or self.coords_BnC.shape[:2] != (B, n):
            raise ValueError(
                f"a group's inputs_BnD {tuple(self.inputs_BnD.shape)}, coords_BnC {tuple(self.coords_BnC.shape)} and "
                f"valid_Bn {tuple(self.valid_Bn.shape)} must agree on [B, n]"
            )
        if self.valid_Bn.dtype != torch.bool:
            raise TypeError(f"valid_Bn must be a bool tensor, got {self.valid_Bn.dtype}")
        if not isinstance(self.shared, bool):
            raise TypeError(f"shared must be a bool, got {self.shared!r}")

    @property
    def size(self) -> int:
        return self.valid_Bn.shape[1]


class Program(Protocol):
    """A paradigm's side of the loop (see module docstring). ``state`` is the program's own."""

    num_steps: int  # groups of a full sample (an upper bound for variable-length programs); guidance schedules run over it

    def start(self, batch_size: int, device: torch.device) -> Any: ...

    def next_group(self, state: Any) -> GroupRequest | None:
        """The next group's slots, or None once every row has stopped."""
        ...

    def accept(self, state: Any, tokens: torch.Tensor, valid_Bn: torch.Tensor) -> Any:
        """Record a group's drawn (or prefilled) tokens; returns the new state."""
        ...

    def result(self, state: Any) -> Any: ...


def draw_seeds(generator: torch.Generator | list[torch.Generator] | None, batch_size: int) -> torch.Tensor:
    """One int64 seed per sample: from its own generator (a list, diffusers-style), or drawn in order from one."""
    _check_positive("batch_size", batch_size)
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"generator is a list of {len(generator)}, but {batch_size} samples are generated; pass one per sample")
        wrong = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if wrong:
            raise TypeError(f"generator must be a torch.Generator or a list of them, got a list holding {wrong[0]}")
        return torch.cat([torch.randint(0, SEED_HIGH, (1,), generator=g, device=g.device).cpu() for g in generator])
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
    device = "cpu" if generator is None else generator.device
    return torch.randint(0, SEED_HIGH, (batch_size,), generator=generator, device=device).cpu()


class Decoder:
    """The KV cache and the growing layout of one generation: append slots, forward, roll back.

    Positions ``[0, P)`` are the conditioning prefix (group 0); each :meth:`forward` appends one or
    more groups. Rows are the GPT's rows (2B under guidance); requests carry B rows and are doubled here.
    """

    def __init__(self, gpt: GPT, cond: Conditioning, *, capacity: int) -> None:
        _check_conditioning(cond)
        _check_positive("capacity", capacity)
        R, P, D = cond.prefix_RPD.shape
        if D != gpt.cfg.dim:
            raise ValueError(f"cond's prefix has width {D}, but the GPT's dim is {gpt.cfg.dim}: build the conditioner "
                             f"with dim={gpt.cfg.dim}")
        total = P + capacity
        if total > gpt.cfg.max_seq_len:
            raise ValueError(f"the prefix ({P}) plus up to {capacity} generated positions exceed the GPT's max_seq_len={gpt.cfg.max_seq_len}")
        self.gpt, self.cond, self.rows = gpt, cond, R
        device = gpt.device
        C = gpt.cfg.coord_rank
        self.shared = bool(cond.prefix_valid_RP.all())  # one layout row serves every row until a request differs
        rows = 1 if self.shared else R
        coords = torch.zeros(rows, total, C, device=device)
        coords[:, :P] = torch.arange(-P, 0, dtype=torch.float32, device=device).view(1, P, 1)
        groups = torch.zeros(rows, total, dtype=torch.long, device=device)
        valid = torch.zeros(rows, total, dtype=torch.bool, device=device)
        valid[:, :P] = cond.prefix_valid_RP[:rows].to(device)
        self.layout = TokenLayout(coords, groups, valid)
        self.length = 0  # positions written to the cache
        self.num_groups = 1  # the prefix is group 0
        gpt.setup_cache(R, total)

    def close(self) -> None:
        self.gpt.clear_cache()

    def _place(self, request: GroupRequest, start: int, group: int) -> None:
        if not request.shared:  # rows part ways from here on: one layout row each
            self._unshare()
        end = start + request.size
        coords, valid = request.coords_BnC.float(), request.valid_Bn
        if self.shared:
            coords, valid = coords[:1], valid[:1]
        else:
            repeat = self.rows // valid.shape[0]
            coords, valid = coords.repeat(repeat, 1, 1), valid.repeat(repeat, 1)
        self.layout.coords[:, start:end] = coords.to(self.layout.coords.device)
        self.layout.groups[:, start:end] = group
        self.layout.valid[:, start:end] = valid.to(self.layout.valid.device)

    def forward(self, requests: list[GroupRequest], *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``requests`` (one group each) and return the hidden states ``[R, n_last, dim]`` of the last one.

        ``attention_mask`` (bool ``[R | 1, sum n, start + sum n]``) replaces the group mask for these queries.
        """
        if not isinstance(requests, (list, tuple)) or not requests:
            raise ValueError(f"requests must be a non-empty list of GroupRequest (one per group), got {requests!r}")
        rows = {request.valid_Bn.shape[0] for request in requests} - {self.cond.batch_size, self.rows}
        if rows:
            raise ValueError(f"requests must carry B = {self.cond.batch_size} rows (one per sample), got {sorted(rows)}")
        P = self.cond.num_prefix
        start = P if self.length == 0 else self.length
        size = sum(request.size for request in requests)
        if start + size > self.layout.seq_len:
            raise ValueError(f"{size} more slots exceed the decoder's capacity: {self.layout.seq_len - start} of "
                             f"{self.layout.seq_len - P} positions are left (pass a larger capacity)")
        pieces, pos = [], start
        for request in requests:
            self._place(request, pos, self.num_groups)
            self.num_groups += 1
            pos += request.size
            x = request.inputs_BnD
            pieces.append(x.repeat(self.rows // x.shape[0], 1, 1))
        x = torch.cat(pieces, dim=1)
        if self.length == 0:
            x = torch.cat([self.cond.prefix_RPD.to(x.dtype), x], dim=1)
            start = 0
        if self.gpt.decoding_compiled and start > 0 and x.shape[1] == 1 and attention_mask is None:
            hidden = self.gpt.decode_step(x, layout=self.layout, position=start, condition=self.cond.adaln_RA)
        else:
            hidden = self.gpt.hidden_states(x, layout=self.layout, start_pos=start, condition=self.cond.adaln_RA,
                                            attention_mask=attention_mask)
        self.length = pos
        return hidden[:, -requests[-1].size:]

    @property
    def next_position(self) -> int:
        """Where the next forward's first slot goes (after the prefix, once it is cached)."""
        return self.cond.num_prefix if self.length == 0 else self.length

    def _unshare(self) -> None:
        if self.shared:
            lay = self.layout
            self.layout = TokenLayout(lay.coords.repeat(self.rows, 1, 1), lay.groups.repeat(self.rows, 1), lay.valid.repeat(self.rows, 1))
            self.shared = False

    def keep(self, start: int, index_Bm: torch.Tensor) -> None:
        """Of the positions from ``start`` on, keep per row those at offsets ``index_Bm`` (in order) and forget the rest.

        The kept positions move to ``start .. start + m`` (keys and values carry their own rotary
        coordinates, so moving them changes nothing), each becomes its own group, and an offset of -1
        leaves a padding position (a row that kept fewer). This is how a verified path through a
        speculative tree stays in the cache while its rejected branches go.
        """
        if not isinstance(index_Bm, torch.Tensor) or index_Bm.dim() != 2 or index_Bm.dtype != torch.long:
            raise TypeError("index_Bm must be an int64 tensor [B, m] of offsets from start (-1: padding)")
        B, m = index_Bm.shape
        if B not in (self.cond.batch_size, self.rows) or not self.cond.num_prefix <= start <= self.length:
            raise ValueError(f"keep needs [B={self.cond.batch_size}, m] offsets and start in "
                             f"{self.cond.num_prefix}..{self.length}, got {tuple(index_Bm.shape)} and {start}")
        if bool((index_Bm >= self.length - start).any()) or m > self.length - start:
            raise ValueError(f"offsets must be below the {self.length - start} positions appended from start={start}")
        index_Rm = index_Bm.to(self.layout.coords.device).repeat(self.rows // B, 1)
        pad_Rm = index_Rm < 0
        take_Rm = index_Rm.clamp(min=0) + start
        in_place = bool((take_Rm == torch.arange(start, start + m, device=take_Rm.device)).all())
        if not (in_place and self.shared and not bool(pad_Rm.any())):
            self._unshare()
        lay = self.layout
        base = lay.groups[:, start].clone()
        if not in_place:
            lay.coords[:, start:start + m] = lay.coords.gather(1, take_Rm[:lay.coords.shape[0]].unsqueeze(-1).expand(-1, -1, lay.coords.shape[-1]))
            self.gpt.gather_cache(start, take_Rm - start)
        lay.valid[:, start:start + m] = lay.valid.gather(1, take_Rm[:lay.valid.shape[0]]) & ~pad_Rm[:lay.valid.shape[0]]
        lay.groups[:, start:start + m] = base.unsqueeze(1) + torch.arange(m, device=base.device)
        end = start + m
        self.gpt.forget_cache(end, self.length)
        lay.coords[:, end:self.length] = 0
        lay.groups[:, end:self.length] = 0
        lay.valid[:, end:self.length] = False
        self.length = end
        self.num_groups = int(lay.groups[:, :end].max()) + 1 if end > self.cond.num_prefix else 1

    def rollback(self, num_positions: int) -> None:
        """Forget the last ``num_positions`` generated positions: cache and layout exactly as before they were added."""
        P = self.cond.num_prefix
        generated = max(self.length - P, 0)
        if isinstance(num_positions, bool) or not isinstance(num_positions, int) or not 0 <= num_positions <= generated:
            raise ValueError(f"num_positions must be an int in 0..{generated} (the generated positions), got {num_positions!r}")
        if num_positions == 0:  # nothing to forget; before the first forward the layout's prefix must stay as it is
            return
        keep = self.length - num_positions
        self.gpt.rollback_cache(keep)
        self.layout.coords[:, keep:] = 0
        self.layout.groups[:, keep:] = 0
        self.layout.valid[:, keep:] = False
        self.length = keep
        self.num_groups = int(self.layout.groups[:, :keep].max()) + 1 if keep > P else 1


def generate(
    gpt: GPT,
    head: Head,
    program: Program,
    cond: Conditioning,
    *,
    sampling: SamplingConfig,
    seeds_B: torch.Tensor,
    capacity: int,
    prefill: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    progress: Callable[[], None] | None = None,
) -> Any:
    """Run ``program`` to the end; returns ``program.result(state)``.

    ``prefill``: known tokens ``[B, m, ...]`` covering the program's first groups exactly (their slots
    are fed in one forward with the first generated group). ``capacity``: the most slots a row can
    take. ``callback(step, tokens)`` may return replacement tokens for that step.
    """
    state, seeds_B, slots_B, pending, step = _begin(program, cond, sampling, seeds_B, prefill, callback, progress,
                                                    device=gpt.device)
    B = cond.batch_size
    guidance: GuidanceSchedule = sampling.guidance
    device = gpt.device
    decoder = Decoder(gpt, cond, capacity=capacity)
    try:
        while (request := program.next_group(state)) is not None:
            hidden = decoder.forward(pending + [request])
            pending = []
            valid_Bn = request.valid_Bn.to(device)
            seeds_Bn = seeds_B.view(B, 1) + slots_B.view(B, 1) + valid_Bn.long().cumsum(1) - 1
            scale = guidance.scale_at(step, program.num_steps) if cond.guided else 1.0
            tokens = head.sample(hidden, sampling=sampling, guidance_scale=scale, seeds_Bn=seeds_Bn)
            if callback is not None:
                replaced = callback(step, tokens)
                tokens = tokens if replaced is None else replaced
            state = program.accept(state, tokens, request.valid_Bn)
            slots_B += valid_Bn.sum(1)
            step += 1
            if progress is not None:
                progress()
    finally:
        decoder.close()
    return program.result(state)


def _begin(program: Program, cond: Conditioning, sampling: SamplingConfig, seeds_B: torch.Tensor, prefill: torch.Tensor | None,
           callback: object, progress: object, *, device: torch.device) -> tuple[Any, torch.Tensor, torch.Tensor, list[GroupRequest], int]:
    """Check a generation's arguments and start it: ``(state, seeds_B, slots_B, pending prefilled requests, step)``."""
    _check_conditioning(cond)
    B = cond.batch_size
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be an mmgen.SamplingConfig, got {type(sampling).__name__}")
    if not isinstance(seeds_B, torch.Tensor) or seeds_B.dtype != torch.int64:
        got = seeds_B.dtype if isinstance(seeds_B, torch.Tensor) else type(seeds_B).__name__
        raise TypeError(f"seeds_B must be an int64 tensor [{B}] (one seed per sample, see draw_seeds), got {got}")
    if seeds_B.shape != (B,):
        raise ValueError(f"seeds_B must have shape [{B}] (one seed per sample), got {tuple(seeds_B.shape)}")
    for name, function in (("callback", callback), ("progress", progress)):
        if function is not None and not callable(function):
            raise TypeError(f"{name} must be None or a callable, got {type(function).__name__}")
    state = program.start(B, device)
    slots_B = torch.zeros(B, dtype=torch.long, device=device)
    pending: list[GroupRequest] = []
    step = 0
    if prefill is not None:
        state, pending, slots_B, step = _prefill(program, state, prefill, slots_B)
    return state, seeds_B.to(device), slots_B, pending, step


def _check_conditioning(cond: object) -> None:
    if not isinstance(cond, Conditioning):
        raise TypeError(f"cond must be a mmgen.Conditioning (what a conditioner's condition() returns), got {type(cond).__name__}")


def _prefill(program: Program, state: Any, prefill: torch.Tensor, slots_B: torch.Tensor) -> tuple[Any, list[GroupRequest], torch.Tensor, int]:
    """Feed the known groups of ``prefill`` to the program without drawing; their slots wait for the first forward."""
    if not isinstance(prefill, torch.Tensor) or prefill.dim() < 2 or prefill.shape[0] != slots_B.shape[0]:
        got = tuple(prefill.shape) if isinstance(prefill, torch.Tensor) else type(prefill).__name__
        raise ValueError(f"prefill must be a tensor [B={slots_B.shape[0]}, m, ...] of known tokens, got {got}")
    pending, offset, step = [], 0, 0
    while offset < prefill.shape[1]:
        request = program.next_group(state)
        if request is None or offset + request.size > prefill.shape[1] or not bool(request.valid_Bn.all()):
            raise ValueError(
                f"prefill holds {prefill.shape[1]} positions, which must cover whole groups of the program "
                f"(the group at position {offset} has {None if request is None else request.size})"
            )
        tokens = prefill[:, offset : offset + request.size]
        state = program.accept(state, tokens, request.valid_Bn)
        pending.append(request)
        slots_B = slots_B + request.size
        offset += request.size
        step += 1
    return state, pending, slots_B, step


def teacher_hidden(gpt: GPT, cond: Conditioning, inputs_BLD: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Training: one forward over ``[prefix | slots]`` with the body ``layout``; returns the slots' hidden states ``[B, L, dim]``."""
    P = cond.num_prefix
    valid = None if bool(cond.prefix_valid_RP.all()) else cond.prefix_valid_RP  # all valid: one broadcast mask row
    full = layout.with_prefix(P, valid=valid).to(inputs_BLD.device)
    x = torch.cat([cond.prefix_RPD.to(inputs_BLD.dtype), inputs_BLD], dim=1)
    return gpt.hidden_states(x, layout=full, condition=cond.adaln_RA)[:, P:]
