"""Octrees of voxel occupancy as token sequences (Uni-3DAR), and the engine program that generates them.

A cubic occupancy grid of side ``R = 2**depth`` becomes a tree: level 0 is the whole cube, a node
at level l is an occupied cell of the ``2**l`` grid, and its **token** is the 8-bit mask of which of
its 8 children (cells of the ``2**(l+1)`` grid) are occupied — bit ``c`` for child
``c = 4·dx + 2·dy + dz``. Only occupied nodes get tokens, level by level and in Morton (z-) order
within a level; the children of level ``depth − 1`` are the voxels themselves. A sample's length is
therefore its own, and what comes next depends on what was drawn: the nodes of level l + 1 are the
set bits of level l. Listing each parent's children in bit order keeps Morton order, so a sequence
is the breadth-first walk of the tree and decodes without any side information.

Before a token is drawn its node is known: its level, its cell and which child of which parent it
is. :class:`OctreeOrder` turns that into the GPT's inputs (summed embeddings of the parent's token,
the child index, the level and, token by token, the previous token) and 4D RoPE coordinates
``(level, x, y, z)`` with the cell's centre in voxel units. :class:`OctreeProgram` runs it in the
engine's loop either **by level** (every node of a level in one forward: next-scale over levels) or
**by token** (one node per forward), stopping each row when its next level is empty or the depth is
reached. Token 0 (no occupied child) never occurs in data; drawn, it is a leaf with nothing below,
and trailing zeros of a row are padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .generation import GroupRequest
from .gpt import GPT
from .programs import DrawnOrder, TeacherForcing
from .protocol import OCTREE_VOCAB, octree_capacity
from .tokens import DiscreteContent, TokenLayout

__all__ = ["OCTREE_VOCAB", "OCTREE_ORDERS", "octree_depth", "octree_capacity", "encode_octree", "decode_octree",
           "octree_nodes", "OctreeNodes", "OctreeOrder", "OctreeProgram"]

OCTREE_ORDERS = ("level", "token")
_BITS = 1 << torch.arange(8)
# child c = 4·dx + 2·dy + dz: the offsets (dx, dy, dz) in the order of the bits
_CHILD_OFFSETS = torch.tensor([[c >> 2 & 1, c >> 1 & 1, c & 1] for c in range(8)])


def octree_depth(resolution: int, *, name: str = "resolution") -> int:
    """``log2(resolution)`` for a power of two ≥ 2, else a ValueError naming ``name``."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2 or resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two >= 2 (an octree halves the cube at every level), got {resolution!r}")
    return resolution.bit_length() - 1


def _check_grid(occupancy: torch.Tensor, *, name: str, batched: bool) -> int:
    """The depth of a cubic power-of-two grid ``[R, R, R]`` (``[B, R, R, R]`` when batched)."""
    rank = 4 if batched else 3
    if not isinstance(occupancy, torch.Tensor) or occupancy.dim() != rank:
        got = tuple(occupancy.shape) if isinstance(occupancy, torch.Tensor) else type(occupancy).__name__
        raise ValueError(f"{name} must be an occupancy grid {'[B, R, R, R]' if batched else '[R, R, R]'}, got {got}")
    sides = tuple(occupancy.shape[-3:])
    if len(set(sides)) != 1:
        raise ValueError(f"{name} must be a cubic grid (R x R x R), got sides {sides}")
    if occupancy.is_floating_point() and bool(torch.isnan(occupancy).any()):
        raise ValueError(f"{name} holds NaN; occupancy must be 0/1 (or probabilities, cut at 0.5)")
    return octree_depth(sides[0], name=f"{name}'s side")


def _morton(coords_N3: torch.Tensor, bits: int) -> torch.Tensor:
    """Morton codes of cell coordinates with ``bits`` bits each, x most significant within a bit triple."""
    code = torch.zeros(coords_N3.shape[0], dtype=torch.long, device=coords_N3.device)
    for b in range(bits):
        for axis, shift in ((0, 2), (1, 1), (2, 0)):
            code |= ((coords_N3[:, axis] >> b) & 1) << (3 * b + shift)
    return code


def encode_octree(occupancy_RRR: torch.Tensor) -> torch.Tensor:
    """One grid (0/1, or probabilities cut at 0.5) → its token sequence ``[L]`` (long, values 1..255)."""
    depth = _check_grid(occupancy_RRR, name="occupancy", batched=False)
    occ = (occupancy_RRR > 0.5) if occupancy_RRR.is_floating_point() else occupancy_RRR.bool()
    if not bool(occ.any()):
        raise ValueError("occupancy is empty (no voxel is occupied): an empty shape has no octree")
    levels, fine = [], occ
    for level in range(depth - 1, -1, -1):  # fine: occupancy of the 2**(level+1) grid, children of this level's cells
        side = 1 << level
        children = fine.view(side, 2, side, 2, side, 2).permute(0, 2, 4, 1, 3, 5).reshape(side, side, side, 8)
        tokens = (children.long() * _BITS.to(children.device)).sum(-1)
        cells = tokens.nonzero()
        order = torch.argsort(_morton(cells, level))
        cells = cells[order]
        levels.append(tokens[cells[:, 0], cells[:, 1], cells[:, 2]])
        fine = children.any(-1)
    return torch.cat(levels[::-1])


@dataclass
class OctreeNodes:
    """What is known about each token of a sequence before it is drawn: level, cell, which child of which parent.

    ``cells_N3``: the node's cell at its level (0..2**level − 1 per axis); ``parent_N`` the parent's
    token (0 for the root), ``child_N`` the child index in the parent (0 for the root). ``length``:
    tokens the tree uses; ``complete``: the sequence held them all.
    """

    level_N: torch.Tensor
    cells_N3: torch.Tensor
    child_N: torch.Tensor
    parent_N: torch.Tensor
    length: int
    complete: bool

    def coords(self, depth: int) -> torch.Tensor:
        """RoPE coordinates ``[N, 4]``: the level, then the cell's centre in voxel units of the finest grid."""
        scale = (1 << (depth - self.level_N)).unsqueeze(1).float()
        return torch.cat([self.level_N.unsqueeze(1).float(), (self.cells_N3.float() + 0.5) * scale], dim=1)


def _children(cells_n3: torch.Tensor, tokens_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cells, child indices and parent tokens of the occupied children of nodes, in Morton order."""
    occupied_n8 = (tokens_n.unsqueeze(1) & _BITS.to(tokens_n.device)) != 0
    cells_n83 = 2 * cells_n3.unsqueeze(1) + _CHILD_OFFSETS.to(cells_n3.device)
    child_n8 = torch.arange(8, device=tokens_n.device).expand_as(occupied_n8)
    parent_n8 = tokens_n.unsqueeze(1).expand_as(occupied_n8)
    return cells_n83[occupied_n8], child_n8[occupied_n8], parent_n8[occupied_n8]


def octree_nodes(ids_L: torch.Tensor, depth: int) -> OctreeNodes:
    """Walk a sequence ``[L]`` (trailing padding allowed) level by level; see :class:`OctreeNodes`."""
    device = ids_L.device
    cells = torch.zeros(1, 3, dtype=torch.long, device=device)
    child = parent = torch.zeros(1, dtype=torch.long, device=device)
    pieces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    start, complete = 0, True
    for level in range(depth):
        n = cells.shape[0]
        if n == 0:
            break
        if start + n > ids_L.shape[0]:
            complete = False
            n = ids_L.shape[0] - start
            cells, child, parent = cells[:n], child[:n], parent[:n]
        pieces.append((level, cells, child, parent))
        tokens = ids_L[start:start + n].long()
        start += n
        if not complete:
            break
        cells, child, parent = _children(cells, tokens)
    level_N = torch.cat([torch.full((c.shape[0],), lv, dtype=torch.long, device=device) for lv, c, _, _ in pieces])
    return OctreeNodes(level_N, torch.cat([p[1] for p in pieces]), torch.cat([p[2] for p in pieces]),
                       torch.cat([p[3] for p in pieces]), length=start, complete=complete)


def decode_octree(ids_L: torch.Tensor, depth: int) -> torch.Tensor:
    """A token sequence ``[L]`` (trailing zeros are padding) → the bool occupancy grid ``[R, R, R]``, R = 2**depth."""
    if not isinstance(ids_L, torch.Tensor) or ids_L.dim() != 1:
        got = tuple(ids_L.shape) if isinstance(ids_L, torch.Tensor) else type(ids_L).__name__
        raise ValueError(f"ids must be one sequence [L] of octree tokens, got {got}")
    DiscreteContent((OCTREE_VOCAB,)).check_ids(ids_L.unsqueeze(0), name="ids")
    nodes = octree_nodes(ids_L, depth)
    if not nodes.complete:
        raise ValueError(f"ids end before the octree does: its levels need more than the {ids_L.shape[0]} tokens given")
    if bool(ids_L[nodes.length:].any()):
        raise ValueError(f"ids go on after the octree ends at token {nodes.length}: everything after it must be padding (0)")
    R = 1 << depth
    grid = torch.zeros(R, R, R, dtype=torch.bool, device=ids_L.device)
    last = nodes.level_N == depth - 1
    if bool(last.any()):
        voxels, _, _ = _children(nodes.cells_N3[last], ids_L[:nodes.length][last].long())
        grid[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = True
    return grid


@dataclass(frozen=True)
class OctreeOrder(DrawnOrder):
    """How a pipeline lays out octree tokens: ``by="level"`` (a level per step) or ``"token"`` (a node per step).

    Sequences are ``[B, L]`` ids padded with 0 to :attr:`num_positions`. The GPT's input tables are the
    parent's token, the child index and the level (and the previous token, by token): :attr:`input_content`.
    """

    depth: int
    by: str = "level"

    def __post_init__(self) -> None:
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int (levels of the octree), got {self.depth!r}")
        if self.by not in OCTREE_ORDERS:
            raise ValueError(f"by must be one of {OCTREE_ORDERS}, got {self.by!r}")

    @property
    def num_positions(self) -> int:
        return octree_capacity(self.depth)

    @property
    def input_content(self) -> DiscreteContent:
        tables = (OCTREE_VOCAB, 8, self.depth)
        return DiscreteContent(tables + ((OCTREE_VOCAB,) if self.by == "token" else ()))

    def layout(self, *, content: Any = None) -> TokenLayout:
        """The root's layout (the one position every tree has); the rest depends on what is drawn."""
        root = torch.tensor([[[0.0, *(float(1 << (self.depth - 1)),) * 3]]])
        return TokenLayout(root, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), content)

    def to_sequence(self, native: torch.Tensor) -> torch.Tensor:
        """Padded ids ``[B, L]`` → ``[B, num_positions]`` (zeros appended)."""
        if not isinstance(native, torch.Tensor) or native.dim() != 2 or native.shape[1] > self.num_positions:
            got = tuple(native.shape) if isinstance(native, torch.Tensor) else type(native).__name__
            raise ValueError(f"octree ids must have shape [B, L] with L <= {self.num_positions}, got {got}")
        return torch.nn.functional.pad(native, (0, self.num_positions - native.shape[1]))

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return seq

    def node_inputs(self, nodes: OctreeNodes, previous_N: torch.Tensor) -> torch.Tensor:
        """The input ids ``[N, tables]`` of nodes; ``previous_N``: the token drawn just before each (by token only).

        The root's row is unused: it takes the start embedding.
        """
        columns = [nodes.parent_N, nodes.child_N, nodes.level_N] + ([previous_N.long()] if self.by == "token" else [])
        return torch.stack(columns, dim=1)

    def lengths(self, seq: torch.Tensor) -> torch.Tensor:
        """Tokens of each tree of data ``[N, L]``: its non-zero ids (data never holds 0, the padding)."""
        return (seq != 0).sum(1)

    def program(self, *, gpt: GPT) -> "OctreeProgram":
        return OctreeProgram(gpt=gpt, order=self)


@dataclass
class _Row:
    """One sample's tree so far: every node known (drawn or waiting), the tokens drawn, the next node to draw."""

    cells: list[torch.Tensor]
    child: list[torch.Tensor]
    parent: list[torch.Tensor]
    level: list[torch.Tensor]
    tokens: list[torch.Tensor] = field(default_factory=list)
    drawn: int = 0
    known: int = 1

    def pending(self, by: str) -> tuple[int, int]:
        """``(start, stop)`` of the nodes the next group holds: the rest of a level, or one node."""
        if self.drawn >= self.known:
            return self.drawn, self.drawn
        return self.drawn, (self.known if by == "level" else self.drawn + 1)


@dataclass
class _OctreeState:
    rows: list[_Row]
    first: bool = True


class OctreeProgram:
    """Generate octree tokens in the engine's loop (see the module docstring); ``result`` is ``(ids [B, L'], valid)``."""

    def __init__(self, *, gpt: GPT, order: OctreeOrder) -> None:
        self.gpt, self.order = gpt, order
        self.depth = order.depth

    @property
    def num_steps(self) -> int:
        """Forwards of a full tree: its levels, or (by token) an upper bound, the capacity."""
        return self.depth if self.order.by == "level" else self.num_positions

    @property
    def num_positions(self) -> int:
        return self.order.num_positions

    def start(self, batch_size: int, device: torch.device) -> _OctreeState:
        zeros = torch.zeros(1, dtype=torch.long, device=device)
        return _OctreeState([_Row([torch.zeros(1, 3, dtype=torch.long, device=device)], [zeros], [zeros], [zeros])
                             for _ in range(batch_size)])

    def next_group(self, state: _OctreeState) -> GroupRequest | None:
        device = self.gpt.device
        if state.first:
            B = len(state.rows)
            coords = self.order.layout().coords.to(device).expand(B, 1, 4)
            return GroupRequest(inputs_BnD=self.gpt.start_inputs(B, 1), coords_BnC=coords,
                                valid_Bn=torch.ones(B, 1, dtype=torch.bool, device=device), shared=True)
        spans = [row.pending(self.order.by) for row in state.rows]
        n = max(stop - start for start, stop in spans)
        if n == 0:
            return None
        B, tables = len(state.rows), self.order.input_content.num_codebooks
        ids = torch.zeros(B, n, tables, dtype=torch.long, device=device)
        coords = torch.zeros(B, n, 4, device=device)
        valid = torch.zeros(B, n, dtype=torch.bool, device=device)
        for b, (row, (start, stop)) in enumerate(zip(state.rows, spans)):
            if stop == start:
                continue
            nodes = _row_nodes(row, start, stop)
            k = stop - start
            ids[b, :k] = self.order.node_inputs(nodes, row.tokens[0][start - 1:stop - 1])
            coords[b, :k] = nodes.coords(self.depth)
            valid[b, :k] = True
        return GroupRequest(inputs_BnD=self.gpt.embed_tokens(ids), coords_BnC=coords, valid_Bn=valid)

    def accept(self, state: _OctreeState, tokens: torch.Tensor, valid_Bn: torch.Tensor) -> _OctreeState:
        state.first = False
        for b, row in enumerate(state.rows):
            k = int(valid_Bn[b].sum())
            if k == 0:
                continue
            drawn = tokens[b, :k].long()
            start, stop = row.drawn, row.drawn + k
            row.tokens.append(drawn)
            row.drawn = stop
            nodes = _row_nodes(row, start, stop)
            inner = nodes.level_N < self.depth - 1  # the last level's children are voxels, not nodes
            if bool(inner.any()):
                cells, child, parent = _children(nodes.cells_N3[inner], drawn[inner])
                row.cells.append(cells)
                row.child.append(child)
                row.parent.append(parent)
                row.level.append(_child_levels(nodes.level_N[inner], drawn[inner]))
                row.known += cells.shape[0]
        return state

    def fork(self, state: _OctreeState) -> _OctreeState:
        """A copy that later ``accept`` calls leave the original untouched by (speculative drafts)."""
        rows = [_Row(list(r.cells), list(r.child), list(r.parent), list(r.level), list(r.tokens), r.drawn, r.known)
                for r in state.rows]
        return _OctreeState(rows, state.first)

    def draft_slots(self, state: _OctreeState, tokens_BN: torch.Tensor,
                    depths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """By token: the slots after candidate tokens in one go, where those slots are nodes already known.

        Node i's token fills node ``drawn + depths[i]`` of its row and its slot is the next node, whose cell,
        parent and level are known once it is in the queue; it holds the candidate as its previous token.
        None (fork per node instead) by level, at the start, or where a slot's node follows from a candidate.
        """
        deepest = max(depths, default=0) + 1
        live = [row.drawn < row.known for row in state.rows]
        if self.order.by != "token" or state.first or any(alive and row.drawn + deepest >= row.known
                                                           for row, alive in zip(state.rows, live)):
            return None
        device = self.gpt.device
        B, N = tokens_BN.shape[:2]
        offsets = torch.tensor(depths, dtype=torch.long) + 1
        tables = self.order.input_content.num_codebooks
        ids = torch.zeros(B, N, tables, dtype=torch.long, device=device)
        coords = torch.zeros(B, N, 4, device=device)
        for b, row in enumerate(state.rows):
            if not live[b]:
                continue
            nodes = _row_nodes(row, row.drawn, row.drawn + deepest + 1)
            index = offsets.to(nodes.level_N.device)
            picked = OctreeNodes(nodes.level_N[index], nodes.cells_N3[index], nodes.child_N[index], nodes.parent_N[index],
                                 length=nodes.length, complete=True)
            ids[b] = self.order.node_inputs(picked, tokens_BN[b].to(device))
            coords[b] = picked.coords(self.depth)
        valid = torch.tensor(live, dtype=torch.bool, device=device).view(B, 1).expand(B, N)
        return self.gpt.embed_tokens(ids), coords, valid

    def result(self, state: _OctreeState) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [torch.cat(row.tokens) for row in state.rows]
        L = max(s.shape[0] for s in seqs)
        ids = torch.zeros(len(seqs), L, dtype=torch.long, device=seqs[0].device)
        valid = torch.zeros(len(seqs), L, dtype=torch.bool, device=seqs[0].device)
        for b, s in enumerate(seqs):
            ids[b, :s.shape[0]], valid[b, :s.shape[0]] = s, True
        return ids, valid

    def teacher(self, seq: torch.Tensor, *, generator: torch.Generator | None = None) -> TeacherForcing:
        """Training on padded sequences ``[B, L]``: each row's own layout, cut to the batch's longest tree."""
        if not isinstance(seq, torch.Tensor) or seq.dim() != 2:
            got = tuple(seq.shape) if isinstance(seq, torch.Tensor) else type(seq).__name__
            raise ValueError(f"octree sequences must have shape [B, L], got {got}")
        walks = [octree_nodes(row, self.depth) for row in seq]
        if not all(w.complete for w in walks):
            raise ValueError("a sequence ends before its octree does: tokens must hold whole trees (see tokenize)")
        B, L = seq.shape[0], max(w.length for w in walks)
        tables = self.order.input_content.num_codebooks
        ids = torch.zeros(B, L, tables, dtype=torch.long, device=seq.device)
        coords = torch.zeros(B, L, 4, device=seq.device)
        groups = torch.zeros(B, L, dtype=torch.long, device=seq.device)
        valid = torch.zeros(B, L, dtype=torch.bool, device=seq.device)
        for b, walk in enumerate(walks):
            n = walk.length
            ids[b, :n] = self.order.node_inputs(walk, torch.cat([seq.new_zeros(1), seq[b, :n - 1]]))
            coords[b, :n] = walk.coords(self.depth)
            groups[b, :n] = walk.level_N if self.order.by == "level" else torch.arange(n, device=seq.device)
            groups[b, n:] = groups[b, n - 1]
            valid[b, :n] = True
        start = self.gpt.start_inputs(B, 1)
        inputs = torch.cat([start, self.gpt.embed_tokens(ids[:, 1:]).to(start.dtype)], dim=1)
        return TeacherForcing(inputs_BLD=inputs, layout=TokenLayout(coords, groups, valid), targets=seq[:, :L], mask=valid)


def _child_levels(levels_n: torch.Tensor, tokens_n: torch.Tensor) -> torch.Tensor:
    """The level of each child :func:`_children` lists: one more than its parent's."""
    counts = ((tokens_n.unsqueeze(1) & _BITS.to(tokens_n.device)) != 0).sum(1)
    return torch.repeat_interleave(levels_n + 1, counts)


def _row_nodes(row: _Row, start: int, stop: int) -> OctreeNodes:
    """Nodes ``start..stop`` of a row's breadth-first list (its pieces joined once, kept joined)."""
    for name in ("level", "cells", "child", "parent", "tokens"):
        pieces = getattr(row, name)
        if len(pieces) > 1:
            setattr(row, name, [torch.cat(pieces)])
    level, cells, child, parent = (getattr(row, name)[0][start:stop] for name in ("level", "cells", "child", "parent"))
    return OctreeNodes(level, cells, child, parent, length=stop, complete=True)
