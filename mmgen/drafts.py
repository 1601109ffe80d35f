"""Draft sources for :func:`mmgen.speculative.generate_speculative`: where candidate tokens come from.

None of them changes what is generated (verification keeps plain decoding's tokens); they differ in
how many of their candidates the target confirms per forward, and in what that costs:

- :class:`NGramDraft` (Lookahead / prompt-lookup retrieval): the continuations that followed the
  latest n tokens earlier in the row (its prompt and its output so far) and in the sequences of
  earlier calls, which it remembers.
- :class:`RecycledDraft` (Token Recycling): an adjacency table from each token to the target's top-k
  next tokens the last time that token was fed, expanded into a static tree.
- :class:`JacobiDraft` (Jacobi decoding): a window of guesses for the next positions; each forward's
  draws at the window become the next guesses (fixed-point iteration), so an unchanged prefix is
  accepted as soon as it is consistent.
- :class:`ModelDraft`: a small GPT of the same tokens drafts a chain (speculative decoding).

Tokens are ids ``[B, ...]`` of one codebook or frames of D codebooks (keys are tuples then).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from .generation import Decoder, _prefill
from .speculative import DraftTree, VerifiedStep, _fork, chain_parents

__all__ = ["NGramDraft", "RecycledDraft", "JacobiDraft", "ModelDraft", "chains_tree", "branching_parents"]

Token = Any  # an int (one codebook) or a tuple of D ints (a frame)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _as_tokens(x: torch.Tensor) -> list[list[Token]]:
    """``[B, m]`` ids or ``[B, m, D]`` frames → per row a list of hashable tokens."""
    rows = x.tolist()
    return rows if x.dim() == 2 else [[tuple(t) for t in row] for row in rows]


def chains_tree(chains: list[list[list[Token]]], *, length: int, like: torch.Tensor) -> DraftTree:
    """Per row up to ``len(chains[b])`` candidate chains (each at most ``length`` long) as a tree of fixed chains."""
    B = len(chains)
    width = max((len(c) for c in chains), default=0)
    N = width * length
    extra = tuple(like.shape[2:])
    tokens = torch.zeros(B, N, *extra, dtype=torch.long)
    valid = torch.zeros(B, N, dtype=torch.bool)
    for b, row in enumerate(chains):
        for c, chain in enumerate(row):
            chain = chain[:length]
            if chain:
                tokens[b, c * length:c * length + len(chain)] = torch.tensor(chain, dtype=torch.long)
                valid[b, c * length:c * length + len(chain)] = True
    parents = tuple(-1 if i % length == 0 else i - 1 for i in range(N))
    return DraftTree(tokens.to(like.device), parents, valid.to(like.device))


class _History:
    """Each row's tokens so far (prompt, then what was kept), for the sources that read them."""

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        self.rows: list[list[Token]] = [[] for _ in range(batch_size)] if prefill is None else _as_tokens(prefill)
        self.like: torch.Tensor | None = None if prefill is None else prefill[:, :1]

    def extend(self, step: VerifiedStep) -> list[int]:
        """Append the kept tokens; returns where each row's new tokens start."""
        self.like = step.accepted[:, :1]
        starts = [len(row) for row in self.rows]
        for row, new in zip(self.rows, _as_tokens(step.accepted)):
            row.extend(new)
        return starts


class NGramDraft(_History):
    """Candidates by retrieval: what followed the row's last ``n`` tokens (n = ``max_ngram`` .. 1) before.

    Looks in the row itself first (latest match first), then in the sequences of earlier calls
    (``memory`` of them are kept, oldest dropped). ``branches`` distinct continuations of up to
    ``length`` tokens are verified together as a tree of chains.
    """

    topk = 0

    def __init__(self, *, max_ngram: int = 3, length: int = 6, branches: int = 2, memory: int = 64) -> None:
        self.max_ngram, self.length = _positive("max_ngram", max_ngram), _positive("length", length)
        self.branches, self.memory = _positive("branches", branches), _positive("memory", memory)
        self.max_nodes = self.branches * self.length
        self._pool: OrderedDict[int, list[Token]] = OrderedDict()
        self._pool_index: dict[tuple, list[tuple[int, int]]] = {}
        self._next_id = 0

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        super().begin(batch_size, prefill)
        self._index: list[dict[tuple, list[int]]] = [{} for _ in range(batch_size)]
        for b, row in enumerate(self.rows):
            self._add(self._index[b], row, 0, lambda j: j)

    def _add(self, index: dict, row: list[Token], start: int, value: Any) -> None:
        """Index the n-grams ending before each position ``j >= start`` (j: where their continuation begins)."""
        for j in range(max(start, 1), len(row) + 1):
            for n in range(1, min(self.max_ngram, j) + 1):
                index.setdefault(tuple(row[j - n:j]), []).append(value(j))

    def propose(self) -> DraftTree | None:
        chains = []
        for b, row in enumerate(self.rows):
            found: list[list[Token]] = []
            for n in range(min(self.max_ngram, len(row)), 0, -1):
                key = tuple(row[-n:])
                sources = [(row, j) for j in reversed(self._index[b].get(key, ())) if j < len(row)]
                sources += [(self._pool[i], j) for i, j in reversed(self._pool_index.get(key, ())) if i in self._pool]
                for seq, j in sources:
                    chain = seq[j:j + self.length]
                    if chain and chain not in found:
                        found.append(chain)
                    if len(found) == self.branches:
                        break
                if len(found) == self.branches:
                    break
            chains.append(found)
        if self.like is None or not any(chains):
            return None
        return chains_tree(chains, length=self.length, like=self.like)

    def observe(self, step: VerifiedStep) -> None:
        starts = self.extend(step)
        for b, start in enumerate(starts):
            self._add(self._index[b], self.rows[b], start + 1, lambda j: j)

    def end(self, sequences: torch.Tensor, valid: torch.Tensor) -> None:
        for row, keep in zip(_as_tokens(sequences), valid.tolist()):
            row = [t for t, k in zip(row, keep) if k]
            seq_id = self._next_id
            self._next_id += 1
            self._pool[seq_id] = row
            self._add(self._pool_index, row, 0, lambda j, i=seq_id: (i, j))
            while len(self._pool) > self.memory:
                self._pool.popitem(last=False)  # its index entries are skipped from now on


def branching_parents(branching: tuple[int, ...]) -> tuple[tuple[int, ...], list[int]]:
    """A static tree: ``branching[d]`` children per node at depth d. Returns its parents and each node's rank among siblings."""
    parents, ranks, frontier = [], [], [-1]
    for width in branching:
        nxt = []
        for parent in frontier:
            for r in range(width):
                parents.append(parent)
                ranks.append(r)
                nxt.append(len(parents) - 1)
        frontier = nxt
    return tuple(parents), ranks


class _LastKept:
    """The last kept token of each row (the root slot's input), and a tensor whose device drafts go to."""

    def _keep_last(self, tokens: torch.Tensor | None) -> None:
        self._last: list[Token] | None = None if tokens is None else [row[-1] for row in _as_tokens(tokens)]
        self._like = None if tokens is None else tokens[:, :1]


class RecycledDraft(_LastKept):
    """Token Recycling: the target's top-k next tokens, remembered per fed token, drafted as a static tree.

    After every forward, each position's fed token maps to the target's ``k`` most likely next
    tokens there (``k = max(branching)``; guided logits). The tree from the last kept token takes
    ``branching[d]`` of them at depth d. The table lives as long as the source (across calls). The
    default, a chain of 5 top-1 tokens, was the fastest on this package's CPU benchmark (a wider tree
    confirms a few more tokens per forward but costs more per forward there).
    """

    def __init__(self, *, branching: tuple[int, ...] = (1, 1, 1, 1, 1)) -> None:
        if not branching or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in branching):
            raise ValueError(f"branching must be a non-empty tuple of positive ints (children per depth), got {branching!r}")
        self.branching = tuple(branching)
        self.topk = max(self.branching)
        self.parents, self._ranks = branching_parents(self.branching)
        self.max_nodes = len(self.parents)
        self.table: dict[Token, list[Token]] = {}

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        self._keep_last(prefill)

    def propose(self) -> DraftTree | None:
        if self._last is None:
            return None
        B, N = len(self._last), len(self.parents)
        tokens: list[list[Token]] = []
        valid = torch.zeros(B, N, dtype=torch.bool)
        zero: Token = tuple(0 for _ in self._last[0]) if isinstance(self._last[0], tuple) else 0
        for b, last in enumerate(self._last):
            row: list[Token] = []
            for i, (parent, rank) in enumerate(zip(self.parents, self._ranks)):
                source = last if parent < 0 else (row[parent] if valid[b, parent] else None)
                options = self.table.get(source) if source is not None else None
                if options is not None and rank < len(options):
                    row.append(options[rank])
                    valid[b, i] = True
                else:
                    row.append(zero)
            tokens.append(row)
        if not bool(valid.any()):
            return None
        like = self._like
        return DraftTree(torch.tensor(tokens, dtype=torch.long, device=like.device), self.parents, valid.to(like.device))

    def observe(self, step: VerifiedStep) -> None:
        self._keep_last(step.accepted)
        if step.topk is None:  # a plain step the source was not asked for: nothing to learn from
            return
        inputs = _as_tokens(step.inputs)
        ranked = step.topk.tolist() if step.topk.dim() == 3 else [[[tuple(c) for c in pos] for pos in row]
                                                                  for row in step.topk.tolist()]
        valid = step.valid.tolist()
        for b in range(len(inputs)):
            for t in range(0 if step.root_input_known else 1, len(inputs[b])):
                if valid[b][t]:
                    self.table[inputs[b][t]] = ranked[b][t]

    def end(self, sequences: torch.Tensor, valid: torch.Tensor) -> None:
        return None


class JacobiDraft(_LastKept):
    """Jacobi decoding: a window of ``window`` guesses for the next positions, refined by every forward.

    The target's draws at the window's positions (each conditioned on the guesses before it) are the
    next guesses for the positions after the kept ones; empty places repeat the last kept token.
    """

    topk = 0

    def __init__(self, *, window: int = 8) -> None:
        self.window = _positive("window", window)
        self.max_nodes = self.window

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        self._guesses: list[list[Token]] = [[] for _ in range(batch_size)]
        self._keep_last(prefill)

    def propose(self) -> DraftTree | None:
        if self._last is None:
            return None
        chains = [(guesses + [last] * self.window)[:self.window] for guesses, last in zip(self._guesses, self._last)]
        tokens = torch.tensor(chains, dtype=torch.long, device=self._like.device)
        return DraftTree(tokens, chain_parents(self.window), torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    def observe(self, step: VerifiedStep) -> None:
        m = step.accepted.shape[1]
        if step.tree is not None:
            self._guesses = [row[m:] for row in _as_tokens(step.targets)]
        self._keep_last(step.accepted)

    def end(self, sequences: torch.Tensor, valid: torch.Tensor) -> None:
        return None


class ModelDraft:
    """Speculative decoding with a small GPT: it drafts a chain of ``length`` tokens, greedily or by sampling.

    ``gpt``, ``head`` and ``program`` are the draft model's (a pipeline of the same tokenizer and
    sequence order, built by ``pipe.program()``), ``cond`` its conditioning of the same rows. It draws
    with the target's sampling settings and the same per-slot seeds, which couples its draws to the
    target's: where the two distributions agree the draft's token is the target's.
    """

    topk = 0

    def __init__(self, *, gpt: Any, head: Any, program: Any, cond: Any, sampling: Any, seeds_B: torch.Tensor,
                 length: int = 4) -> None:
        self.gpt, self.head, self.program, self.cond, self.sampling = gpt, head, program, cond, sampling
        self.length = _positive("length", length)
        self.max_nodes = self.length
        self.seeds_B = seeds_B.to(gpt.device)

    def begin(self, batch_size: int, prefill: torch.Tensor | None) -> None:
        self.state = self.program.start(batch_size, self.gpt.device)
        self.slots_B = torch.zeros(batch_size, dtype=torch.long, device=self.gpt.device)
        self.pending = []
        if prefill is not None:
            self.state, self.pending, self.slots_B, _ = _prefill(self.program, self.state, prefill, self.slots_B)
        self.decoder = Decoder(self.gpt, self.cond, capacity=self.program.num_positions)
        self.started = False
        self.step = 0

    def _draw(self, hidden: torch.Tensor, depth: int) -> torch.Tensor:
        guidance = self.sampling.guidance
        scale = guidance.scale_at(self.step + depth, self.program.num_steps) if self.cond.guided else 1.0
        seeds = (self.seeds_B + self.slots_B + depth).view(-1, 1)
        return self.head.sample(hidden, sampling=self.sampling, guidance_scale=scale, seeds_Bn=seeds)

    def propose(self) -> DraftTree | None:
        if not self.started:
            return None
        state = _fork(self.program, self.state)
        self._drafted_from, self._fed_before = self.decoder.next_position, len(self.pending)
        drafted, requests = [], list(self.pending)
        self.pending = []
        for depth in range(self.length):
            request = self.program.next_group(state)
            if request is None:
                break
            hidden = self.decoder.forward(requests + [request])
            requests = []
            tokens = self._draw(hidden, depth)
            drafted.append(tokens)
            state = self.program.accept(state, tokens, request.valid_Bn)
        self._drafted = len(drafted)
        if not drafted:
            return None
        tokens = torch.cat(drafted, dim=1)
        return DraftTree(tokens, chain_parents(tokens.shape[1]), torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    def observe(self, step: VerifiedStep) -> None:
        m = step.accepted.shape[1]
        keep = 0
        if self.started and step.tree is not None:  # its cache holds the slots of the kept tokens it drafted; drop the rest
            keep = min(m, self._drafted)
            B = step.accepted.shape[0]
            kept = torch.arange(self._fed_before + keep, device=self.gpt.device).view(1, -1).expand(B, -1).contiguous()
            self.decoder.keep(self._drafted_from, kept)
        for i in range(m):
            request = self.program.next_group(self.state)
            if i >= keep:
                self.pending.append(request)
            self.state = self.program.accept(self.state, step.accepted[:, i:i + 1], request.valid_Bn)
            self.slots_B += request.valid_Bn.to(self.slots_B.device).sum(1)
        self.step += m
        self.started = True

    def end(self, sequences: torch.Tensor, valid: torch.Tensor) -> None:
        self.decoder.close()
