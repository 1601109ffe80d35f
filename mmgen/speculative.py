"""Lossless faster decoding: draft a tree of candidate tokens, verify it in one forward, keep the longest match.

One verify core serves every draft source (:mod:`mmgen.drafts`) and every program whose steps hold one
slot (next-token over images and audio frames, octrees by token):

1. A draft source proposes a :class:`DraftTree` per step: candidate tokens for the next slots, as
   chains or a tree (siblings are alternatives for the same slot).
2. The program says what each candidate's slot holds (a fork of its state accepts the candidates on
   the way from the root), and the whole tree is one forward through the decoder's attention-mask
   override: a node sees the cache and its own ancestors.
3. **Coupled verification.** At every node the target's token is drawn exactly as plain decoding
   draws it there: the head's sampler with the slot's own seed (slot j of sample b: ``seed_b + j``)
   and the guidance scale of its step. A candidate is accepted when it equals the draw of its
   parent's slot; the walk goes down the accepted children and ends with the draw at the last
   accepted node. The tokens kept are therefore plain decoding's tokens for the same seeds, at any
   temperature (temperature 0 is greedy), so their distribution is the target's by construction;
   the draft only decides how many of them one forward confirms. :func:`verify_residual` is the
   classic alternative (speculative sampling with residual resampling) for drafts whose randomness
   is their own.
4. :meth:`~mmgen.generation.Decoder.keep` moves the kept path into place in the KV cache and drops
   the rest. Rows of a batch advance together by the shortest accepted path (a row's extra tokens
   are drawn again, identically, in the next step).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .conditioning import Conditioning
from .draft_gate import DraftGate
from .generation import Decoder, GroupRequest, Program, _begin
from .gpt import GPT
from .heads import CategoricalHead, Head
from .sampling import SamplingConfig, sample
from .sampling.guidance import combine_guidance
from .sampling.rng import log_uniforms

__all__ = ["DraftTree", "DraftSource", "VerifiedStep", "generate_speculative", "chain_parents", "verify_residual",
           "DecodingStats"]


@dataclass
class DraftTree:
    """Candidate tokens for the next slots: ``tokens`` ``[B, N]`` (``[B, N, D]``), ``parents`` ``[N]``, ``valid`` ``[B, N]``.

    Node i's token is a candidate for the slot of node ``parents[i]`` (-1: the next slot, the root).
    Parents come before their children. Siblings are alternatives; ``valid`` marks the rows that
    have a candidate at a node (the rest is ignored).
    """

    tokens: torch.Tensor
    parents: tuple[int, ...]
    valid: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.dim() not in (2, 3):
            raise ValueError("DraftTree.tokens must be an id tensor [B, N] or [B, N, D]")
        self.parents = tuple(int(p) for p in self.parents)
        B, N = self.tokens.shape[:2]
        if len(self.parents) != N or any(not -1 <= p < i for i, p in enumerate(self.parents)):
            raise ValueError(f"DraftTree.parents must list N={N} parents, each in -1..i-1 (parents first), got {self.parents}")
        if not isinstance(self.valid, torch.Tensor) or self.valid.dtype != torch.bool or tuple(self.valid.shape) != (B, N):
            raise ValueError(f"DraftTree.valid must be a bool tensor [{B}, {N}]")

    @property
    def size(self) -> int:
        return len(self.parents)

    def first(self, n: int) -> DraftTree:
        """The tree of its first ``n`` nodes (parents come first, so it is a tree)."""
        return DraftTree(self.tokens[:, :n], self.parents[:n], self.valid[:, :n])

    @property
    def depths(self) -> list[int]:
        """Per node, the slot its token fills counted from the root (0: the next slot)."""
        depths: list[int] = []
        for p in self.parents:
            depths.append(0 if p < 0 else depths[p] + 1)
        return depths


def chain_parents(length: int) -> tuple[int, ...]:
    """Parents of one chain of ``length`` candidates: -1, 0, 1, ..."""
    return tuple(range(-1, length - 1))


@dataclass
class VerifiedStep:
    """What a draft source learns after a verify forward (positions: 0 = the root slot, 1 + i = node i).

    ``accepted`` ``[B, m]`` (``[B, m, D]``): the tokens kept this step (the same m for every row);
    ``targets`` ``[B, 1 + N]``: the target's draw at every position; ``inputs`` ``[B, 1 + N]``: the token
    each position's slot was fed (the root: the last kept token; then the candidates), None on a plain
    step without ``topk``; ``topk`` ``[B, 1 + N, k]`` (``[..., k, D]``): the target's most likely next
    tokens there, when the source wants them and was asked for a draft this step (None on the plain
    steps of a gate); ``valid`` ``[B, 1 + N]``: the positions that exist per row; ``root_input_known``:
    False on the first step (the root was fed the start input, not a token).
    """

    accepted: torch.Tensor
    targets: torch.Tensor
    inputs: torch.Tensor | None
    valid: torch.Tensor
    tree: DraftTree | None
    topk: torch.Tensor | None
    root_input_known: bool


class DraftSource(Protocol):
    """Where candidates come from (n-grams, recycled top-k, a Jacobi window, a small GPT)."""

    topk: int  # how many of the target's most likely tokens per position ``observe`` wants (0: none)

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        """A new generation of ``batch_size`` rows whose known first tokens are ``prefill`` (or None)."""
        ...

    def propose(self) -> DraftTree | None:
        """Candidates for the next slots of every row, or None for a plain step."""
        ...

    def observe(self, step: VerifiedStep) -> None:
        """The outcome of a forward: what was kept and what the target drew at each candidate."""
        ...

    def end(self, sequences: torch.Tensor, valid: torch.Tensor) -> None:
        """The finished sequences (a source may remember them for later calls)."""
        ...


@dataclass
class DecodingStats:
    """Counts of one generation: GPT forwards, slots drawn per row, and candidate tokens proposed."""

    forwards: int = 0
    tokens: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forwards, 1)


def _fork(program: Program, state: Any) -> Any:
    fork = getattr(program, "fork", None)
    return fork(state) if callable(fork) else copy.deepcopy(state)


def _one_slot(request: GroupRequest) -> GroupRequest:
    if request.size != 1:
        raise ValueError(f"speculative decoding drafts one slot per step, but this program's next group holds {request.size} "
                         "(use it with next-token programs: one position, or one frame of codebooks, per step)")
    return request


def _node_slots(program: Program, state: Any, root: GroupRequest, tree: DraftTree) -> tuple[GroupRequest, torch.Tensor]:
    """The root's and every node's slot as one request ``[B, 1 + N]`` (node i: the program's next slot after the
    candidates from the root to it), and their validity ``[B, 1 + N]``."""
    depths = tree.depths
    fast = getattr(program, "draft_slots", None)
    slots = fast(state, tree.tokens, depths) if callable(fast) else None
    if slots is None:
        slots = _forked_slots(program, state, root, tree)
    inputs, coords, valid = slots
    device = root.valid_Bn.device
    valid_BT = torch.cat([root.valid_Bn[:, :1], valid.to(device) & tree.valid.to(device)], dim=1)
    missing_BT = (~valid_BT).float() @ _ancestors(tree.parents).to(device).T.float()
    valid_BT = missing_BT == 0  # a node exists where it and every ancestor (the root too) do
    request = GroupRequest(inputs_BnD=torch.cat([root.inputs_BnD, inputs.to(root.inputs_BnD.dtype)], dim=1),
                           coords_BnC=torch.cat([root.coords_BnC.float(), coords.float()], dim=1), valid_Bn=valid_BT)
    return request, valid_BT


def _forked_slots(program: Program, state: Any, root: GroupRequest,
                  tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node by node: a fork of the parent's state accepts the node's token and asks for the next slot."""
    B = root.valid_Bn.shape[0]
    states: list[Any] = []
    inputs, coords, valid = [], [], []
    for i, parent in enumerate(tree.parents):
        parent_state = state if parent < 0 else states[parent]
        parent_valid = root.valid_Bn[:, 0] if parent < 0 else valid[parent]
        node_state, request = None, None
        if parent_state is not None and bool(parent_valid.any()):
            node_state = program.accept(_fork(program, parent_state), tree.tokens[:, i:i + 1], parent_valid.view(B, 1))
            request = program.next_group(node_state)
        if request is None:  # the program ended there for every row: the node is padding
            request, node_state = GroupRequest(root.inputs_BnD, root.coords_BnC, torch.zeros_like(root.valid_Bn)), None
        request = _one_slot(request)
        states.append(node_state)
        inputs.append(request.inputs_BnD)
        coords.append(request.coords_BnC.float())
        valid.append(request.valid_Bn[:, 0] & parent_valid)
    return torch.cat(inputs, dim=1), torch.cat(coords, dim=1), torch.stack(valid, dim=1)


@functools.lru_cache(maxsize=64)
def _ancestors(parents: tuple[int, ...]) -> torch.Tensor:
    """``[T, T]`` bool over the root (0) and the nodes (1 + i): row t marks t and its ancestors (a source's trees repeat)."""
    T = len(parents) + 1
    ancestors = torch.eye(T, dtype=torch.bool)
    for i, parent in enumerate(parents):
        ancestors[i + 1] |= ancestors[parent + 1]
    return ancestors


def _tree_mask(decoder: Decoder, parents: tuple[int, ...], valid_BT: torch.Tensor, start: int) -> torch.Tensor:
    """Attention of the tree's queries ``[R, T, start + T]``: the cached keys, and each node's ancestors and itself."""
    T = len(parents) + 1
    device = decoder.layout.valid.device
    ancestors = _ancestors(parents)
    rows = decoder.rows
    repeat = rows // valid_BT.shape[0]
    tree_RTT = ancestors.to(device).unsqueeze(0) & valid_BT.to(device).repeat(repeat, 1).unsqueeze(1)
    tree_RTT |= torch.eye(T, dtype=torch.bool, device=device).unsqueeze(0)  # a padding query sees itself
    cached = decoder.layout.valid[:, :start].expand(rows, -1).unsqueeze(1).expand(-1, T, -1)
    return torch.cat([cached, tree_RTT], dim=2)


def _draw_targets(head: Head, hidden_RTD: torch.Tensor, depths: list[int], *, sampling: SamplingConfig, scales: list[float],
                  seeds_B: torch.Tensor, slots_B: torch.Tensor) -> torch.Tensor:
    """Plain decoding's draw at every position: slot ``slots_B + depth`` of each row, with that step's guidance scale."""
    B = seeds_B.shape[0]
    depth_T = torch.tensor(depths, device=seeds_B.device)
    seeds_BT = seeds_B.view(B, 1) + slots_B.view(B, 1) + depth_T.view(1, -1)
    by_scale: dict[float, list[int]] = {}
    for t, depth in enumerate(depths):
        by_scale.setdefault(scales[depth], []).append(t)
    if len(by_scale) == 1:
        (scale,) = by_scale
        return head.sample(hidden_RTD, sampling=sampling, guidance_scale=scale, seeds_Bn=seeds_BT)
    pieces, order = [], []
    for scale, positions in by_scale.items():
        index = torch.tensor(positions, device=hidden_RTD.device)
        pieces.append(head.sample(hidden_RTD[:, index], sampling=sampling, guidance_scale=scale, seeds_Bn=seeds_BT[:, index]))
        order.extend(positions)
    drawn = torch.cat(pieces, dim=1)
    inverse = torch.empty(len(order), dtype=torch.long, device=drawn.device)
    inverse[torch.tensor(order, device=drawn.device)] = torch.arange(len(order), device=drawn.device)
    return drawn[:, inverse]


def _paths(tree: DraftTree | None, targets: torch.Tensor, valid_BT: torch.Tensor) -> list[list[int]]:
    """Per row, the positions of the accepted path from the root (0) down the children whose candidate equals the parent's draw."""
    B = targets.shape[0]
    if tree is None or tree.size == 0:
        return [[0] for _ in range(B)]
    parent_T = torch.tensor([p + 1 for p in tree.parents], device=targets.device)
    same = tree.tokens.to(targets.device) == targets[:, parent_T]
    match = (same if same.dim() == 2 else same.all(-1)) & valid_BT[:, 1:].to(targets.device)
    children: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parents):
        children.setdefault(p + 1, []).append(i + 1)
    match_rows = match.tolist()
    paths = []
    for b in range(B):
        path = [0]
        while True:
            nxt = next((c for c in children.get(path[-1], ()) if match_rows[b][c - 1]), None)
            if nxt is None:
                break
            path.append(nxt)
        paths.append(path)
    return paths


def _topk(head: Head, hidden_RTD: torch.Tensor, k: int, *, B: int, scale: float) -> torch.Tensor:
    """The target's k most likely tokens per position ``[B, T, k]`` (``[B, T, k, D]``; codebooks ranked alike), guided."""
    if not isinstance(head, CategoricalHead):
        raise ValueError(f"this draft source reads the target's top-k tokens, which needs a categorical head; got {type(head).__name__}")
    ranked = []
    for logits_RTV in head._all_logits(hidden_RTD):
        guided = logits_RTV.shape[0] == 2 * B and scale != 1.0
        x = combine_guidance(logits_RTV[:B], logits_RTV[B:], scale) if guided else logits_RTV[:B].float()
        ranked.append(x.topk(min(k, x.shape[-1]), dim=-1).indices)
    return ranked[0] if len(ranked) == 1 else torch.stack(ranked, dim=-1)


@torch.inference_mode()
def generate_speculative(
    gpt: GPT,
    head: Head,
    program: Program,
    cond: Conditioning,
    *,
    draft: DraftSource,
    sampling: SamplingConfig,
    seeds_B: torch.Tensor,
    capacity: int,
    prefill: torch.Tensor | None = None,
    callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    progress: Callable[[], None] | None = None,
    stats: DecodingStats | None = None,
    gate: DraftGate | None = None,
) -> Any:
    """:func:`mmgen.generation.generate` with candidates from ``draft``: the same tokens, in fewer forwards.

    The arguments are ``generate``'s, plus the draft source, an optional :class:`DecodingStats` that
    counts forwards and tokens, and an optional :class:`~mmgen.draft_gate.DraftGate` that takes plain
    steps where drafting does not pay (None: the source is asked every step). The decoder's capacity
    grows by the largest tree the source proposes.
    """
    if gate is not None and not isinstance(gate, DraftGate):
        raise TypeError(f"gate must be a mmgen.draft_gate.DraftGate or None, got {type(gate).__name__}")
    for name in ("begin", "propose", "observe", "end"):
        if not callable(getattr(draft, name, None)):
            raise TypeError(f"draft must be a draft source (mmgen.drafts) with {name}(), got {type(draft).__name__}")
    state, seeds_B, slots_B, pending, step = _begin(program, cond, sampling, seeds_B, prefill, callback, progress,
                                                    device=gpt.device)
    B = cond.batch_size
    stats = DecodingStats() if stats is None else stats
    guidance = sampling.guidance
    device = gpt.device
    draft.begin(B, prefill)
    room = gpt.cfg.max_seq_len - cond.num_prefix  # a tree may reach past the sample's end: as far as the GPT allows
    decoder = Decoder(gpt, cond, capacity=max(capacity, min(capacity + getattr(draft, "max_nodes", 0), room)))
    last_B = None  # the last kept token of each row: the input of the root slot
    try:
        while (request := program.next_group(state)) is not None:
            root = _one_slot(request)
            timed = gate is not None and not pending and last_B is not None  # not the step that feeds the prefix too
            asked = not pending and last_B is not None and (not timed or gate.wants_draft())
            tree = draft.propose() if asked else None
            start = decoder.next_position
            if tree is not None:
                tree = tree.first(min(tree.size, decoder.layout.seq_len - start - 1))
            if tree is not None and tree.size == 0:
                tree = None
            if tree is None:
                request, valid_BT, mask = root, root.valid_Bn.to(device), None
            else:  # one group: the mask override, not the groups, says who sees whom; keep() renumbers the kept path
                request, valid_BT = _node_slots(program, state, root, tree)
                mask = _tree_mask(decoder, tree.parents, valid_BT, start)
            hidden = decoder.forward(pending + [request], attention_mask=mask)
            stats.forwards += 1
            if tree is None:  # a plain step, drawn as plain decoding draws it
                scales = [guidance.scale_at(step, program.num_steps) if cond.guided else 1.0]
                targets = head.sample(hidden, sampling=sampling, guidance_scale=scales[0], seeds_Bn=(seeds_B + slots_B).view(B, 1))
                state, kept = _accept(program, state, root, targets, step, callback, slots_B, progress)
                m = 1
            else:
                depths = [0] + [d + 1 for d in tree.depths]
                scales = [guidance.scale_at(step + d, program.num_steps) if cond.guided else 1.0 for d in range(max(depths) + 1)]
                targets = _draw_targets(head, hidden, depths, sampling=sampling, scales=scales, seeds_B=seeds_B, slots_B=slots_B)
                paths = _paths(tree, targets, valid_BT)
                live = root.valid_Bn[:, 0].tolist()
                m = min((len(p) for p, alive in zip(paths, live) if alive), default=1)
                kept_BM = torch.tensor([p[:m] if len(p) >= m else p + [-1] * (m - len(p)) for p in paths], device=device)
                accepted = targets.gather(1, kept_BM.clamp(min=0).view(B, m, *([1] * (targets.dim() - 2))).expand(B, m, *targets.shape[2:]))
                state, kept = _accept(program, state, root, accepted, step, callback, slots_B, progress)
                m = kept.shape[1]  # fewer than drawn where a callback replaced a token
                decoder.keep(start, _kept_index(pending, kept_BM[:, :m]))
                stats.proposed += tree.size
                stats.accepted += m - 1
            stats.tokens += m
            topk = _topk(head, hidden, draft.topk, B=B, scale=scales[0]) if asked and getattr(draft, "topk", 0) else None
            inputs = None
            if tree is not None or topk is not None:
                inputs = targets.new_zeros(targets.shape)
                if last_B is not None:
                    inputs[:, 0] = last_B
                if tree is not None:
                    inputs[:, 1:] = tree.tokens.to(inputs.device)
            draft.observe(VerifiedStep(accepted=kept, targets=targets, inputs=inputs, valid=valid_BT, tree=tree,
                                       topk=topk, root_input_known=last_B is not None))
            last_B = kept[:, -1]
            pending = []
            step += m
            if timed:
                gate.end_step(tokens=m, drafted=tree is not None)
    finally:
        decoder.close()
    result = program.result(state)
    seq, valid = result if isinstance(result, tuple) else (result, None)
    draft.end(seq, valid if valid is not None else torch.ones(seq.shape[:2], dtype=torch.bool, device=seq.device))
    return result


def _kept_index(pending: list[GroupRequest], kept_Bm: torch.Tensor) -> torch.Tensor:
    """Offsets to keep from the forward's first slot: the prefilled slots (all), then the path."""
    n = sum(r.size for r in pending)
    if not n:
        return kept_Bm
    B = kept_Bm.shape[0]
    before = torch.arange(n, device=kept_Bm.device).view(1, n).expand(B, n)
    return torch.cat([before, torch.where(kept_Bm >= 0, kept_Bm + n, kept_Bm)], dim=1)


def _accept(program: Program, state: Any, root: GroupRequest, drawn: torch.Tensor, step: int,
            callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None, slots_B: torch.Tensor,
            progress: Callable[[], None] | None) -> tuple[Any, torch.Tensor]:
    """Give the program the drawn tokens ``[B, m, ...]`` step by step; returns its state and the tokens kept
    (a callback's replacement is kept and ends the step there)."""
    kept = []
    request = root
    for i in range(drawn.shape[1]):
        if i:
            request = _one_slot(program.next_group(state))
        tokens = drawn[:, i:i + 1]
        replaced = None if callback is None else callback(step + i, tokens)
        changed = replaced is not None and not torch.equal(replaced, tokens)
        tokens = replaced if changed else tokens
        state = program.accept(state, tokens, request.valid_Bn)
        slots_B += request.valid_Bn.to(slots_B.device).sum(1)
        kept.append(tokens)
        if progress is not None:
            progress()
        if changed:
            break
    return state, torch.cat(kept, dim=1)


def verify_residual(target_probs_NV: torch.Tensor, draft_probs_NV: torch.Tensor | None, candidates_N: torch.Tensor, *,
                    seeds_N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic speculative sampling for one slot of N rows: accept candidate c with probability min(1, p(c) / q(c)).

    ``draft_probs_NV`` is the distribution the candidate was drawn from (None: a candidate chosen any
    other way, a point mass). A rejected row draws from the residual ``max(p - q, 0)`` normalised.
    The output is distributed as ``p`` whatever q is, provided the candidate's randomness is
    independent of ``seeds_N``, which drive the acceptance and the residual draw. Returns
    ``(tokens [N], accepted [N])``.
    """
    N, V = target_probs_NV.shape
    if draft_probs_NV is None:
        draft_probs_NV = torch.zeros_like(target_probs_NV).scatter_(1, candidates_N.view(N, 1), 1.0)
    p_c = target_probs_NV.gather(1, candidates_N.view(N, 1)).squeeze(1)
    q_c = draft_probs_NV.gather(1, candidates_N.view(N, 1)).squeeze(1)
    uniform = _uniform(seeds_N)
    accepted = uniform * q_c < p_c
    residual = (target_probs_NV - draft_probs_NV).clamp(min=0)
    total = residual.sum(1, keepdim=True)
    residual = torch.where(total > 0, residual / total.clamp(min=1e-30), target_probs_NV)
    drawn = sample(residual.clamp(min=1e-38).log(), seed=seeds_N + _RESIDUAL_STREAM)
    return torch.where(accepted, candidates_N, drawn), accepted


_RESIDUAL_STREAM = 0x2545F4914F6CDD1D  # offsets a slot's seed for its residual draw (a stream apart from the draft's)


def _uniform(seeds_N: torch.Tensor) -> torch.Tensor:
    """One uniform in (0, 1) per row from its seed (the sampler's counter-based hash; sample index 1)."""
    cols = torch.zeros(1, 1, dtype=torch.long, device=seeds_N.device)
    return log_uniforms(seeds_N, 1, 1, cols).view(-1).exp()
