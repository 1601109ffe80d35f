"""Uni-3DAR's octree tokenizer: voxel occupancy (or points) ↔ one 8-bit child-occupancy token per occupied node.

Nothing is learned: the tokens are the octree itself (:mod:`mmgen.octree`), level by level in Morton
order, so the round trip is exact and a shape's length is its own (more surface, more nodes). The
tokenizer is still a saved model like the others (a config, no weights) so pipelines load it from
their folder. Point clouds ``[B, N, 3]`` in [-1, 1] are voxelised first (the cells their points fall in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.hub import PretrainedModel
from mmgen.octree import OCTREE_VOCAB, OctreeNodes, decode_octree, encode_octree, octree_capacity, octree_depth, octree_nodes
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent

__all__ = ["OctreeConfig", "OctreeTokenizer"]


@dataclass
class OctreeConfig:
    """``resolution``: the side R of the occupancy grids (a power of two, 2..256); the tree has log2(R) levels."""

    resolution: int = 32

    def __post_init__(self) -> None:
        octree_depth(self.resolution)
        if self.resolution > 256:
            raise ValueError(f"resolution must be at most 256 (a grid of 16.7M voxels), got {self.resolution}")


class OctreeTokenizer(PretrainedModel):
    """Occupancy grids ``[B, R, R, R]`` ↔ octree ids ``[B, L]`` (values 1..255, rows padded with 0 to the longest).

    ``encode(grids)`` cuts probabilities at 0.5; ``decode(ids)`` gives 0/1 float grids. ``nodes(ids_L)``
    tells each token's level and cell, known before it is drawn.
    """

    config_class = OctreeConfig
    modality = "shape"
    has_weights = False

    def __init__(self, config: OctreeConfig | dict | None = None) -> None:
        super().__init__()
        self.cfg = self._register_typed_config(OctreeConfig() if config is None else config)
        self.depth = octree_depth(self.cfg.resolution)
        # each child's bit; not saved. With no weights, it is what places the tokenizer on a device (pipeline.device)
        self.register_buffer("child_bits", 1 << torch.arange(8), persistent=False)

    @property
    def capacity(self) -> int:
        """The most tokens a shape can take (every cell of every level occupied)."""
        return octree_capacity(self.depth)

    def token_spec(self) -> TokenSpec:
        return TokenSpec(content=DiscreteContent((OCTREE_VOCAB,)), shape=(self.capacity,), octree_depth=self.depth)

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """Grids ``[B, R, R, R]`` as given, or point clouds ``[B, N, 3]`` voxelised."""
        R = self.cfg.resolution
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] == 3:
            return _voxelise(x, R)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (R, R, R):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"shapes must be occupancy grids [B, {R}, {R}, {R}] (this tokenizer's resolution) or point "
                             f"clouds [B, N, 3], got {got}")
        return x

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Grids ``[B, R, R, R]`` (or points ``[B, N, 3]``) → ids ``[B, L]``, L the longest tree, rows padded with 0."""
        grids = self._grids(x)
        trees = []
        for b, grid in enumerate(grids):
            try:
                trees.append(encode_octree(grid))
            except ValueError as err:
                raise ValueError(f"shape {b}: {err}") from None
        return torch.nn.utils.rnn.pad_sequence(trees, batch_first=True)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, L]`` (rows padded with 0) → occupancy ``[B, R, R, R]`` (float 0/1)."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must have shape [B, L] (one octree per row), got {got}")
        grids = []
        for b, row in enumerate(ids):
            try:
                grids.append(decode_octree(row, self.depth))
            except (ValueError, TypeError) as err:
                raise type(err)(f"ids row {b}: {err}") from None
        return torch.stack(grids).float()

    def nodes(self, ids_L: torch.Tensor) -> OctreeNodes:
        """Level, cell and parent of each token of one sequence ``[L]``."""
        return octree_nodes(ids_L, self.depth)

    def lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokens each row's tree uses ``[B]``."""
        return torch.tensor([octree_nodes(row, self.depth).length for row in ids])

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions


def _voxelise(points_BN3: torch.Tensor, resolution: int) -> torch.Tensor:
    """Point clouds in [-1, 1] → 0/1 grids of the cells they fall in."""
    if bool(torch.isnan(points_BN3).any()):
        raise ValueError("points hold NaN; a point cloud must be finite coordinates in [-1, 1]")
    if bool((points_BN3.abs() > 1).any()):
        raise ValueError("points must lie in [-1, 1] on every axis (normalise the cloud into the cube first)")
    cells = ((points_BN3 + 1) / 2 * resolution).long().clamp(0, resolution - 1)
    B = points_BN3.shape[0]
    grids = torch.zeros(B, resolution, resolution, resolution, device=points_BN3.device)
    batch = torch.arange(B, device=points_BN3.device).view(B, 1).expand(B, cells.shape[1])
    grids[batch, cells[..., 0], cells[..., 1], cells[..., 2]] = 1.0
    return grids
