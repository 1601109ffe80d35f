"""VAT-style variational shape tokenizer: an occupancy shape as a short pyramid of ids, coarse to fine.

After VAT ("3D representation in 512 bytes"), in our own design:

1. **Points.** An occupancy grid ``[B, R, R, R]`` becomes a surface point cloud: one point on each of
   ``num_points`` exposed voxel faces (an occupied voxel's face whose 6-neighbour is empty), at a
   uniform spot of that face. Encode draws with the same fixed seed for every sample, so a shape's
   tokens do not depend on the run or on its place in the batch. A point cloud ``[B, N, 3]`` in
   [-1, 1] may be given directly.
2. **In-context compression.** Fourier features of the points feed a small transformer in which
   ``num_latents`` learned queries cross-attend to the points, then attend to each other: the
   token count is fixed whatever the resolution or the number of points.
3. **Variational bottleneck.** Each latent is a diagonal Gaussian of ``latent_dim`` channels
   (reparameterised in training, the mean at encode) pulled towards N(0, 1) by ``kl_weight`` · KL,
   which keeps the latents in a compact region that one codebook covers.
4. **Multi-scale residual quantisation** along the latent axis, as VAR does in 2D: at scale k the
   residual is area-pooled to ``scales[k]`` tokens, each takes its nearest code of ONE shared
   codebook, the codes are linearly upsampled back to ``num_latents`` and refined by a 1D
   convolution (``x·(1−r) + conv(x)·r``), added to the reconstruction and subtracted from the
   residual. Codes are learnt straight-through with VAR's codebook loss, the commitment applying to
   the full sum only (see :meth:`ScaleResidualQuantizer.forward`); codes idle for
   ``dead_code_steps`` steps restart on residuals of the batch.
5. **Occupancy decoder.** The quantised latents pass a few self-attention layers; query points
   (Fourier features of xyz) cross-attend to them and an MLP gives the occupancy logit.
   :meth:`VariationalShapeTokenizer.decode` queries the ``R³`` voxel centres in chunks.

Tokens: ids ``[B, scales[k]]`` per scale (a list) or the flat ``[B, L]`` form, ``L = Σ scales``;
the default scales ``(1, 2, 4, 8, 16, 32)`` give 63 ids, and with 512 codes a shape is
``63 · log2(512) / 8 = 70.9`` bytes (:attr:`VariationalShapeTokenizer.bytes_per_shape`). For
next-scale generation the tokenizer is a :class:`mmgen.protocol.ScaleContext`: scale k's inputs
are the running reconstruction of scales < k pooled to scale k's length, the very tensor the
quantiser subtracted at encode.

Grids are indexed (x, y, z), z vertical; voxel (i, j, k) has its centre at ``(i + 0.5) / R · 2 − 1``.
Shapes: ``B`` batch, ``N`` latents, ``C`` latent channels, ``D`` width, ``P`` / ``Q`` points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmgen.hub import PretrainedModel
from mmgen.metrics import codebook_usage
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent

from .checks import check_ids_in_range, check_index
from .kl import LOGVAR_RANGE, gaussian_kl

__all__ = [
    "ScaleQuantOutput",
    "ScaleResidualQuantizer",
    "VariationalShapeConfig",
    "VariationalShapeTokenizer",
    "exposed_faces",
    "surface_band",
    "surface_points",
    "voxel_centres",
]

ENCODE_SEED = 0  # the seed of every sample's surface points at encode
POINT_RANGE_TOLERANCE = 1e-4  # points may sit this far outside [-1, 1] (rounding on the grid's outer faces)

ScaleIds = Sequence[torch.Tensor] | torch.Tensor


@dataclass
class VariationalShapeConfig:
    """Architecture and training options of a :class:`VariationalShapeTokenizer`.

    ``resolution`` is the grid side R it reads and decodes; ``num_points`` the surface points the
    encoder sees. ``num_latents`` latent vectors of ``latent_dim`` channels are quantised over
    ``scales`` (strictly increasing, the finest equal to ``num_latents``) with ``codebook_size``
    codes. ``width``, ``depth`` (self-attention layers on each side) and ``heads`` size the
    transformers; ``num_frequencies`` octaves of Fourier features (base π) embed xyz.
    ``refine_ratio`` is the conv refinement's r (VAR's ``quant_resi``).

    Loss: BCE of occupancy at ``num_queries`` voxel centres per shape (half uniform, half within
    ``surface_band`` voxels of the surface) + ``vq_weight`` · (codebook loss + ``beta`` · commitment)
    + ``kl_weight`` · KL. ``dead_code_steps`` > 0 restarts codes no scale picked for that many steps.
    ``quantizer_warmup_steps`` > 0: the first that many training calls decode the continuous latents
    while the codebook follows them (see :meth:`ScaleResidualQuantizer.forward`).
    """

    resolution: int = 32
    num_points: int = 1024
    num_latents: int = 32
    width: int = 128
    depth: int = 2
    heads: int = 4
    latent_dim: int = 16
    codebook_size: int = 512
    scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    num_frequencies: int = 6
    refine_ratio: float = 0.5
    kl_weight: float = 1e-4
    beta: float = 0.25
    vq_weight: float = 1.0
    dead_code_steps: int = 20
    quantizer_warmup_steps: int = 0
    num_queries: int = 2048
    surface_band: int = 2

    def __post_init__(self) -> None:
        self.scales = tuple(self.scales)
        for name in ("resolution", "num_points", "num_latents", "width", "depth", "heads", "latent_dim",
                     "num_frequencies", "surface_band"):
            _require_int(name, getattr(self, name), minimum=1)
        _require_int("codebook_size", self.codebook_size, minimum=2)
        _require_int("num_queries", self.num_queries, minimum=2)
        _require_int("dead_code_steps", self.dead_code_steps, minimum=0)
        _require_int("quantizer_warmup_steps", self.quantizer_warmup_steps, minimum=0)
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        if len(self.scales) < 2:
            raise ValueError(f"scales must name at least two scales (coarse to fine), got {self.scales}")
        for i, n in enumerate(self.scales):
            _require_int(f"scales[{i}]", n, minimum=1)
        if any(b <= a for a, b in zip(self.scales, self.scales[1:])):
            raise ValueError(f"scales must be strictly increasing, got {self.scales}")
        if self.scales[-1] != self.num_latents:
            raise ValueError(f"scales[-1]={self.scales[-1]} must equal num_latents={self.num_latents} (the finest "
                             "scale is the whole latent sequence)")
        if not 0.0 <= float(self.refine_ratio) <= 1.0:
            raise ValueError(f"refine_ratio must lie in [0, 1], got {self.refine_ratio!r}")
        for name in ("kl_weight", "beta", "vq_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def num_tokens(self) -> int:
        return sum(self.scales)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


# ---- geometry --------------------------------------------------------------------------------------
# The 6 face directions (−x, +x, −y, +y, −z, +z) as unit normals.
FACE_NORMALS_63 = torch.tensor([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=torch.float32)


def voxel_centres(resolution: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``R³`` voxel centres ``[R³, 3]`` in [-1, 1], in the flattened (x, y, z) order of a grid."""
    axis = (torch.arange(resolution, dtype=torch.float32, device=device) + 0.5) / resolution * 2 - 1
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def exposed_faces(occupied_BRRR: torch.Tensor) -> torch.Tensor:
    """Per voxel and direction, whether the voxel is occupied and its neighbour that way is empty: ``[B, 6, R, R, R]``.

    Outside the grid counts as empty, so a shape touching the border is closed there.
    """
    occ = F.pad(occupied_BRRR.float(), (1, 1) * 3).bool()
    inner = occ[:, 1:-1, 1:-1, 1:-1]
    neighbours = (occ[:, :-2, 1:-1, 1:-1], occ[:, 2:, 1:-1, 1:-1], occ[:, 1:-1, :-2, 1:-1],
                  occ[:, 1:-1, 2:, 1:-1], occ[:, 1:-1, 1:-1, :-2], occ[:, 1:-1, 1:-1, 2:])
    return torch.stack([inner & ~n for n in neighbours], dim=1)


def surface_points(occupied_BRRR: torch.Tensor, *, num_points: int, seeds: Sequence[int]) -> torch.Tensor:
    """``num_points`` points ``[B, P, 3]`` on the exposed voxel faces of each (non-empty) grid.

    Sample b draws with a generator seeded by ``seeds[b]``: the faces without replacement (with it
    when there are fewer faces than points), then a uniform spot on each face.
    """
    resolution = occupied_BRRR.shape[-1]
    voxel = 2.0 / resolution
    faces = exposed_faces(occupied_BRRR).cpu()
    out = []
    for faces_6RRR, seed in zip(faces, seeds):
        where_F4 = faces_6RRR.nonzero()
        generator = torch.Generator().manual_seed(int(seed))
        count = where_F4.shape[0]
        pick_P = (torch.randperm(count, generator=generator)[:num_points] if count >= num_points
                  else torch.randint(count, (num_points,), generator=generator))
        spot_P3 = torch.rand(num_points, 3, generator=generator) - 0.5
        direction_P, index_P3 = where_F4[pick_P, 0], where_F4[pick_P, 1:]
        normal_P3 = FACE_NORMALS_63[direction_P]
        centre_P3 = (index_P3.float() + 0.5) * voxel - 1
        out.append(centre_P3 + voxel * (0.5 * normal_P3 + spot_P3 * (1 - normal_P3.abs())))
    return torch.stack(out).to(occupied_BRRR.device)


def dilate(mask_BRRR: torch.Tensor, *, width: int, outside: bool = False) -> torch.Tensor:
    """Boolean dilation by a cube of side ``2·width + 1`` (separable ORs of shifted copies); ``outside`` fills beyond the grid."""
    R = mask_BRRR.shape[-1]
    out = mask_BRRR
    for axis in (1, 2, 3):
        padded = F.pad(out.float(), (0, 0) * (3 - axis) + (width, width), value=float(outside)).bool()
        shifted = [padded.narrow(axis, offset, R) for offset in range(2 * width + 1)]
        out = torch.stack(shifted).any(0)
    return out


def surface_band(occupied_BRRR: torch.Tensor, *, width: int) -> torch.Tensor:
    """Voxels within ``width`` (in the max-norm) of the occupied / empty boundary, outside the grid being empty."""
    eroded = ~dilate(~occupied_BRRR, width=width, outside=True)
    return dilate(occupied_BRRR, width=width) & ~eroded


# ---- networks ----------------------------------------------------------------------------------------
class FourierEmbedding(nn.Module):
    """xyz → ``[xyz, sin(2^k π xyz), cos(2^k π xyz)]`` → MLP: lets linear layers resolve voxel-scale detail."""

    def __init__(self, *, num_frequencies: int, width: int) -> None:
        super().__init__()
        self.num_frequencies = num_frequencies
        self.mlp = nn.Sequential(nn.Linear(3 + 6 * num_frequencies, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, xyz_BP3: torch.Tensor) -> torch.Tensor:
        freqs_F = math.pi * 2.0 ** torch.arange(self.num_frequencies, dtype=xyz_BP3.dtype, device=xyz_BP3.device)
        angles_BPK = (xyz_BP3[..., None] * freqs_F).flatten(-2)
        return self.mlp(torch.cat([xyz_BP3, angles_BPK.sin(), angles_BPK.cos()], dim=-1))


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself for self-attention)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_kv, self.out = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)

    def forward(self, x_BLD: torch.Tensor, context_BSD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        head_dim = D // self.heads
        q = self.to_q(x_BLD).view(B, L, self.heads, head_dim).transpose(1, 2)
        k, v = self.to_kv(context_BSD).view(B, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, or with ``cross`` attention to a separately normalised context."""

    def __init__(self, width: int, heads: int, *, cross: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.context_norm = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x_BLD: torch.Tensor, context_BSD: torch.Tensor | None = None) -> torch.Tensor:
        h_BLD = self.norm(x_BLD)
        kv_BSD = h_BLD if self.context_norm is None else self.context_norm(context_BSD)
        x_BLD = x_BLD + self.attn(h_BLD, kv_BSD)
        return x_BLD + self.mlp(self.mlp_norm(x_BLD))


class PointSetEncoder(nn.Module):
    """Points → ``num_latents`` Gaussians: learned queries cross-attend to the embedded points, then self-attend."""

    def __init__(self, cfg: VariationalShapeConfig) -> None:
        super().__init__()
        self.embed = FourierEmbedding(num_frequencies=cfg.num_frequencies, width=cfg.width)
        # Unit-scale queries (as the decoder's positions): at the usual 0.02 the attention outputs swamp them, every
        # latent starts as the same average of the points, and training hardly breaks that symmetry.
        self.queries_ND = nn.Parameter(torch.randn(cfg.num_latents, cfg.width))
        self.cross = Block(cfg.width, cfg.heads, cross=True)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.to_gaussian = nn.Linear(cfg.width, 2 * cfg.latent_dim)

    def forward(self, points_BP3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``[B, N, C]`` of each latent."""
        h_BND = self.cross(self.queries_ND.expand(points_BP3.shape[0], -1, -1), self.embed(points_BP3))
        for block in self.blocks:
            h_BND = block(h_BND)
        mean_BNC, logvar_BNC = self.to_gaussian(self.norm(h_BND)).chunk(2, dim=-1)
        return mean_BNC, logvar_BNC.clamp(*LOGVAR_RANGE)


class OccupancyDecoder(nn.Module):
    """Quantised latents → context tokens (self-attention); query points cross-attend to them → occupancy logits."""

    def __init__(self, cfg: VariationalShapeConfig) -> None:
        super().__init__()
        self.latent_in = nn.Linear(cfg.latent_dim, cfg.width)
        self.position_ND = nn.Parameter(torch.randn(cfg.num_latents, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.context_norm = nn.LayerNorm(cfg.width)
        self.embed = FourierEmbedding(num_frequencies=cfg.num_frequencies, width=cfg.width)
        self.cross = Block(cfg.width, cfg.heads, cross=True)
        self.head = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, 1))

    def context(self, latents_BNC: torch.Tensor) -> torch.Tensor:
        """The tokens ``[B, N, D]`` every query attends to (computed once per shape, whatever the queries)."""
        h_BND = self.latent_in(latents_BNC) + self.position_ND
        for block in self.blocks:
            h_BND = block(h_BND)
        return self.context_norm(h_BND)

    def query(self, context_BND: torch.Tensor, points_BQ3: torch.Tensor) -> torch.Tensor:
        """Occupancy logits ``[B, Q]`` at the points."""
        return self.head(self.cross(self.embed(points_BQ3), context_BND))[..., 0]


# ---- quantiser -----------------------------------------------------------------------------------------
class Refine(nn.Conv1d):
    """VAR's φ along the latent axis: ``x·(1−r) + conv3(x)·r``, a residual refinement of the upsampled codes."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h_BCN: torch.Tensor) -> torch.Tensor:
        return h_BCN * (1 - self.ratio) + super().forward(h_BCN) * self.ratio


@dataclass
class ScaleQuantOutput:
    """One pass of the quantiser: the quantised latents ``[B, N, C]`` (gradients pass straight through to the
    input), ids ``[B, n_k]`` per scale, the inputs ``[B, n_k, C]`` the scales were quantised against (the
    running reconstruction of scales < k, pooled) and the codebook + commitment loss."""

    latents_BNC: torch.Tensor
    ids: list[torch.Tensor]
    contexts: list[torch.Tensor]
    vq_loss: torch.Tensor


class ScaleResidualQuantizer(nn.Module):
    """Multi-scale residual VQ over a 1D latent sequence with one codebook (VAR's quantiser in 1D).

    The running reconstruction ``f_hat`` is kept as ``[B, C, N]`` (for pooling and convolution); the
    same :meth:`accumulate` and :meth:`context` serve encoding, teacher forcing and generation, so
    their numbers are identical.
    """

    def __init__(self, *, codebook_size: int, dim: int, scales: Sequence[int], refine_ratio: float, beta: float,
                 dead_code_steps: int, warmup_steps: int = 0) -> None:
        super().__init__()
        self.scales, self.beta, self.dead_code_steps = tuple(scales), beta, dead_code_steps
        self.codebook_size, self.length = codebook_size, self.scales[-1]
        self.embedding = nn.Embedding(codebook_size, dim)
        self.refines = nn.ModuleList(Refine(dim, refine_ratio) for _ in self.scales)
        self.register_buffer("idle_steps_V", torch.zeros(codebook_size, dtype=torch.long))
        self.warmup_steps = warmup_steps
        if warmup_steps:  # saved with the weights, so a resumed run goes on where it was (absent without a warm-up)
            self.register_buffer("training_calls", torch.zeros((), dtype=torch.long))
        self.last_restarted = 0

    def pool(self, f_BCN: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Area pooling of a full-length sequence to scale ``scale_index``'s ``[B, C, n]``."""
        n = self.scales[scale_index]
        return f_BCN if n == f_BCN.shape[-1] else F.adaptive_avg_pool1d(f_BCN, n)

    def scale_update(self, scale_index: int, ids_Bn: torch.Tensor) -> torch.Tensor:
        """What scale ``scale_index``'s ids add to ``f_hat``: codes, linearly upsampled to N, refined: ``[B, C, N]``."""
        codes_BCn = self.embedding(ids_Bn).transpose(1, 2)
        if codes_BCn.shape[-1] != self.length:
            codes_BCn = F.interpolate(codes_BCn, size=self.length, mode="linear", align_corners=False)
        return self.refines[scale_index](codes_BCn)

    def accumulate(self, f_hat_BCN: torch.Tensor | None, scale_index: int, ids_Bn: torch.Tensor) -> torch.Tensor:
        """``f_hat`` after adding scale ``scale_index`` (``None`` before scale 0)."""
        h_BCN = self.scale_update(scale_index, ids_Bn)
        return h_BCN if f_hat_BCN is None else f_hat_BCN + h_BCN

    def context(self, f_hat_BCN: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Scale ``scale_index``'s inputs ``[B, n, C]``: ``f_hat`` of the scales before it, pooled to its length."""
        return self.pool(f_hat_BCN.detach(), scale_index).transpose(1, 2)

    def nearest_ids(self, rest_MC: torch.Tensor) -> torch.Tensor:
        """Nearest code (l2) of each row."""
        codes_VC = self.embedding.weight.detach()
        dist_MV = rest_MC.square().sum(1, keepdim=True) - 2 * rest_MC @ codes_VC.T + codes_VC.square().sum(1)
        return dist_MV.argmin(dim=1)

    def forward(self, z_BNC: torch.Tensor, *, track_usage: bool = False) -> ScaleQuantOutput:
        """Quantise latents ``[B, N, C]`` scale by scale.

        ``vq_loss``: VAR's codebook term, the mean over scales of ``mse(f_hat_k, z.detach())``, plus
        ``β·mse(z, f_hat.detach())`` on the full reconstruction only. VAR commits ``z`` to every partial
        ``f_hat_k``; along a 1D latent axis that pulls every latent towards the pooled (constant) coarse
        codes, and the encoder gives up: all latents become one vector and the fine scales carry nothing.
        ``track_usage`` (training) restarts codes idle for ``dead_code_steps`` steps; it changes no id of this call.

        Warm-up: the first ``warmup_steps`` calls with ``track_usage`` return the continuous latents with the
        codebook term alone (no commitment). Quantised from the first step, the decoder learns from codes that
        lag behind a fast-moving encoder: on the primitives that roughly halved how fast the autoencoder learnt,
        and the shipped preset needs the warm-up to keep cubes (BENCHMARKS.md). During the warm-up the codes
        follow the latents (idle ones restart on them), so quantising afterwards costs little.
        """
        B, N, C = z_BNC.shape
        if (N, C) != (self.length, self.embedding.embedding_dim):
            raise ValueError(f"latents must be [B, {self.length}, {self.embedding.embedding_dim}], got {tuple(z_BNC.shape)}")
        z_BCN = z_BNC.transpose(1, 2)
        f_BCN = z_BCN.detach()
        f_hat_BCN, ids, contexts, rests = None, [], [], []
        codebook_loss = z_BNC.new_zeros(())
        for k in range(len(self.scales)):
            context_BnC = z_BNC.new_zeros(B, self.scales[0], C) if f_hat_BCN is None else self.context(f_hat_BCN, k)
            rest_MC = (self.pool(f_BCN, k).transpose(1, 2) - context_BnC).reshape(-1, C)
            ids_Bn = self.nearest_ids(rest_MC).view(B, -1)
            f_hat_BCN = self.accumulate(f_hat_BCN, k, ids_Bn)
            codebook_loss = codebook_loss + F.mse_loss(f_hat_BCN, f_BCN)
            ids.append(ids_Bn)
            contexts.append(context_BnC)
            rests.append(rest_MC)
        if track_usage and self.dead_code_steps:
            self._restart_dead_codes(torch.cat(ids, dim=1), torch.cat(rests))
        codebook_loss = codebook_loss / len(self.scales)
        if track_usage and self.warmup_steps:
            self.training_calls += 1
            if int(self.training_calls) <= self.warmup_steps:
                return ScaleQuantOutput(z_BNC, ids, contexts, codebook_loss)
        latents_BNC = (z_BCN + (f_hat_BCN - z_BCN).detach()).transpose(1, 2)
        vq_loss = codebook_loss + self.beta * F.mse_loss(z_BCN, f_hat_BCN.detach())
        return ScaleQuantOutput(latents_BNC, ids, contexts, vq_loss)

    @torch.no_grad()
    def _restart_dead_codes(self, ids_BL: torch.Tensor, rest_MC: torch.Tensor) -> None:
        """Move codes that no scale picked for ``dead_code_steps`` steps onto residuals of this batch.

        A small codebook trained from scratch otherwise collapses onto a few codes. Hits are summed
        over processes and every process takes rank 0's new codes.
        """
        hits_V = ids_BL.flatten().bincount(minlength=self.codebook_size)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits_V)
        self.idle_steps_V.add_(1).masked_fill_(hits_V > 0, 0)
        dead_K = (self.idle_steps_V >= self.dead_code_steps).nonzero().squeeze(1)
        self.last_restarted = int(dead_K.numel())
        if not self.last_restarted:
            return
        new_KC = rest_MC[torch.randint(rest_MC.shape[0], (self.last_restarted,), device=rest_MC.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new_KC, src=0)
        self.embedding.weight.data[dead_K] = new_KC.to(self.embedding.weight.dtype)
        self.idle_steps_V[dead_K] = 0


# ---- the tokenizer -------------------------------------------------------------------------------------
class VariationalShapeTokenizer(PretrainedModel):
    """Occupancy grids ``[B, R, R, R]`` (or point clouds) ↔ ids ``[B, n_k]`` per scale; decodes occupancy anywhere.

    ``encode(x)`` gives the ids coarse to fine (a list); ``decode(ids)`` occupancy probabilities at the
    voxel centres, ``decode_points(ids, points)`` logits at any points; ``num_scales=k`` decodes from
    the first k scales alone. Train with ``loss, logs = tokenizer.loss(grids)``.
    """

    config_class = VariationalShapeConfig
    modality = "shape"

    def __init__(self, config: VariationalShapeConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.encoder = PointSetEncoder(cfg)
        self.quantizer = ScaleResidualQuantizer(codebook_size=cfg.codebook_size, dim=cfg.latent_dim, scales=cfg.scales,
                                                refine_ratio=cfg.refine_ratio, beta=cfg.beta,
                                                dead_code_steps=cfg.dead_code_steps,
                                                warmup_steps=cfg.quantizer_warmup_steps)
        self.decoder = OccupancyDecoder(cfg)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_scales(self) -> int:
        return len(self.cfg.scales)

    @property
    def num_tokens(self) -> int:
        """L = Σ scales, the length of the flat token sequence."""
        return self.cfg.num_tokens

    @property
    def bytes_per_shape(self) -> float:
        """Storage of one shape's ids: ``num_tokens · log2(codebook_size) / 8`` (70.9 for the defaults)."""
        return self.num_tokens * math.log2(self.cfg.codebook_size) / 8

    # ---- inputs --------------------------------------------------------------------------------
    def check_grid(self, grid: torch.Tensor, *, name: str = "shapes") -> torch.Tensor:
        """A boolean occupancy ``[B, R, R, R]`` (voxel > 0.5) from a grid of values in [0, 1], or a clear error."""
        R = self.cfg.resolution
        if not isinstance(grid, torch.Tensor):
            raise TypeError(f"{name} must be a tensor: an occupancy grid [B, {R}, {R}, {R}], got {type(grid).__name__}")
        if grid.dim() != 4:
            raise ValueError(f"{name} must be an occupancy grid [B, {R}, {R}, {R}], got shape {tuple(grid.shape)}")
        if not grid.shape[1] == grid.shape[2] == grid.shape[3]:
            raise ValueError(f"{name} must be a cubic grid [B, R, R, R], got shape {tuple(grid.shape)}")
        if grid.shape[1] != R:
            raise ValueError(f"{name} must have resolution {R} (this tokenizer's config.resolution), got {grid.shape[1]}")
        values = grid.detach().float()
        if values.isnan().any():
            raise ValueError(f"{name} holds NaN; an occupancy grid holds values in [0, 1]")
        if values.numel() and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"{name} must hold occupancy in [0, 1], found values in [{float(values.min()):.3g}, "
                             f"{float(values.max()):.3g}]")
        occupied = values > 0.5
        self._check_not_empty(occupied.flatten(1).any(1), name=name, what="no occupied voxel")
        return occupied

    def check_points(self, points: torch.Tensor, *, name: str = "points") -> torch.Tensor:
        """Float points ``[B, N, 3]`` in [-1, 1] with N >= 1, or a clear error."""
        if not isinstance(points, torch.Tensor) or not points.is_floating_point():
            got = points.dtype if isinstance(points, torch.Tensor) else type(points).__name__
            raise TypeError(f"{name} must be a float tensor [B, N, 3] in [-1, 1], got {got}")
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"{name} must have shape [B, N, 3] (xyz in [-1, 1]), got {tuple(points.shape)}")
        self._check_not_empty(torch.full((points.shape[0],), points.shape[1] > 0), name=name, what="no point (N = 0)")
        finite = points.detach().isfinite()
        if not finite.all():
            raise ValueError(f"{name} holds NaN or infinite coordinates ({int((~finite).sum())} of them)")
        peak = float(points.detach().abs().max())
        if peak > 1 + POINT_RANGE_TOLERANCE:
            raise ValueError(f"{name} must lie in [-1, 1] (the grid's cube), found |coordinate| = {peak:.3g}")
        return points.float()

    @staticmethod
    def _check_not_empty(present_B: torch.Tensor, *, name: str, what: str) -> None:
        empty = (~present_B).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{name}[{empty[0]}] is an empty shape ({what}); every shape needs a surface to encode")

    def points_of(self, x: torch.Tensor, *, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """The encoder's points ``[B, P, 3]``: the given cloud, or ``num_points`` surface points of a grid.

        ``seeds`` (one per sample) draws a grid's points; by default every sample uses the same fixed
        seed, so encode is deterministic.
        """
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            occupied = self.check_grid(x, name="x")
            seeds = [ENCODE_SEED] * x.shape[0] if seeds is None else seeds
            return surface_points(occupied, num_points=self.cfg.num_points, seeds=seeds)
        if isinstance(x, torch.Tensor) and (x.dim() != 3 or x.shape[-1] != 3):
            R = self.cfg.resolution
            hint = " (one grid needs a batch axis: x[None])" if tuple(x.shape) == (R, R, R) else ""
            raise ValueError(f"x must be an occupancy grid [B, {R}, {R}, {R}] or a point cloud [B, N, 3], "
                             f"got shape {tuple(x.shape)}{hint}")
        return self.check_points(x, name="x")

    # ---- tokens ------------------------------------------------------------------------------
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Grids or points → the posterior means ``[B, N, C]`` that :meth:`encode` quantises."""
        return self.encoder(self.points_of(x))[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Occupancy grids ``[B, R, R, R]`` or points ``[B, N, 3]`` → ids ``[B, scales[k]]`` (long) per scale."""
        return self.quantizer(self.encode_latents(x)).ids

    def encode_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Grids or points → ids ``[B, L]``, scale by scale."""
        return torch.cat(self.encode(x), dim=1)

    def _scale_ids(self, ids: ScaleIds, *, name: str = "ids") -> list[torch.Tensor]:
        """Validate ids as a flat ``[B, L]`` tensor or a list of per-scale ``[B, n_k]`` tensors; return the list."""
        scales, V = self.cfg.scales, self.cfg.codebook_size
        if isinstance(ids, torch.Tensor):
            check_ids_in_range(ids, V, name=name)
            if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
                raise ValueError(f"flat {name} must have shape [B, {self.num_tokens}] (scales {scales} concatenated), "
                                 f"got {tuple(ids.shape)}")
            return list(ids.long().split(scales, dim=1))
        if not isinstance(ids, (list, tuple)) or len(ids) != len(scales):
            got = f"{len(ids)} scales" if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise ValueError(f"{name} must be a [B, L] tensor or a list of {len(scales)} per-scale tensors "
                             f"(scales {scales}), got {got}")
        for k, (ids_k, n) in enumerate(zip(ids, scales)):
            check_ids_in_range(ids_k, V, name=f"{name}[{k}]")
            if ids_k.dim() != 2 or tuple(ids_k.shape) != (ids[0].shape[0], n):
                raise ValueError(f"{name}[{k}] must have shape [B, {n}] with the batch of {name}[0], got {tuple(ids_k.shape)}")
        return [ids_k.long() for ids_k in ids]

    def ids_to_latents(self, ids: ScaleIds, *, num_scales: int | None = None) -> torch.Tensor:
        """Quantised latents ``[B, N, C]``: the sum over the first ``num_scales`` scales (all by default)."""
        levels = self._scale_ids(ids)
        if num_scales is None:
            num_scales = self.num_scales
        elif isinstance(num_scales, bool) or not isinstance(num_scales, int) or not 1 <= num_scales <= self.num_scales:
            raise ValueError(f"num_scales must be an int in [1, {self.num_scales}], got {num_scales!r}")
        f_hat_BCN = None
        for k in range(num_scales):
            f_hat_BCN = self.quantizer.accumulate(f_hat_BCN, k, levels[k])
        return f_hat_BCN.transpose(1, 2)

    def decode_points(self, ids: ScaleIds, points_BQ3: torch.Tensor, *, num_scales: int | None = None) -> torch.Tensor:
        """Occupancy logits ``[B, Q]`` at arbitrary points ``[B, Q, 3]`` in [-1, 1] (keeps gradients)."""
        latents_BNC = self.ids_to_latents(ids, num_scales=num_scales)
        points_BQ3 = self.check_points(points_BQ3, name="points_BQ3")
        if points_BQ3.shape[0] != latents_BNC.shape[0]:
            raise ValueError(f"points_BQ3 has a batch of {points_BQ3.shape[0]}, the ids one of {latents_BNC.shape[0]}")
        return self.decoder.query(self.decoder.context(latents_BNC), points_BQ3)

    @torch.no_grad()
    def decode(self, ids: ScaleIds, *, num_scales: int | None = None, chunk_size: int = 8192) -> torch.Tensor:
        """Ids (per-scale list or flat ``[B, L]``) → occupancy probabilities ``[B, R, R, R]`` in [0, 1].

        The ``R³`` voxel centres are queried ``chunk_size`` at a time, which bounds memory;
        ``num_scales=k`` decodes the first k scales alone (a coarser shape).
        """
        _require_int("chunk_size", chunk_size, minimum=1)
        latents_BNC = self.ids_to_latents(ids, num_scales=num_scales)
        context_BND = self.decoder.context(latents_BNC)
        R, B = self.cfg.resolution, latents_BNC.shape[0]
        centres_Q3 = voxel_centres(R, device=latents_BNC.device)
        logits = [self.decoder.query(context_BND, chunk_Q3.expand(B, -1, -1)) for chunk_Q3 in centres_Q3.split(chunk_size)]
        return torch.cat(logits, dim=1).sigmoid().view(B, R, R, R)

    # ---- tokenizer protocol (mmgen.protocol), with ScaleContext for next-scale generation ------------
    def token_spec(self) -> TokenSpec:
        """A 1D pyramid of ``scales[k]`` ids per scale, coarse to fine, one shared codebook."""
        return TokenSpec(content=DiscreteContent((self.cfg.codebook_size,)), scales=tuple((n,) for n in self.cfg.scales))

    def to_positions(self, ids: ScaleIds) -> list[torch.Tensor]:
        """Ids (list or flat) → the ``[B, n_k]`` row of every scale."""
        return self._scale_ids(ids)

    def from_positions(self, positions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._scale_ids(list(positions), name="positions")

    @property
    def context_dim(self) -> int:
        """Channels of the next-scale inputs (the latent space)."""
        return self.cfg.latent_dim

    def teacher_context(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """Inputs ``[B, L − n_0, latent_dim]`` of scales 1..K−1 from the true ids (teacher forcing)."""
        levels = self._scale_ids(ids_BL, name="ids_BL")
        f_hat_BCN, inputs = None, []
        for k in range(self.num_scales - 1):
            f_hat_BCN = self.quantizer.accumulate(f_hat_BCN, k, levels[k])
            inputs.append(self.quantizer.context(f_hat_BCN, k + 1))
        return torch.cat(inputs, dim=1)

    def context_step(self, state: torch.Tensor | None, scale_index: int,
                     ids_Bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state`` is the running ``f_hat [B, C, N]`` (None before scale 0); returns it and scale k+1's inputs."""
        n = self.cfg.scales[check_index("scale_index", scale_index, self.num_scales)]
        check_ids_in_range(ids_Bn, self.cfg.codebook_size, name="ids_Bn")
        if ids_Bn.dim() != 2 or ids_Bn.shape[1] != n:
            raise ValueError(f"ids_Bn of scale {scale_index} must have shape [B, {n}], got {tuple(ids_Bn.shape)}")
        state = self.quantizer.accumulate(state, scale_index, ids_Bn.long())
        if scale_index == self.num_scales - 1:
            return state, None
        return state, self.quantizer.context(state, scale_index + 1)

    # ---- training ------------------------------------------------------------------------------
    def sample_queries(self, occupied_BRRR: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training queries ``[B, Q, 3]`` at voxel centres and their occupancy ``[B, Q]`` (float 0 / 1).

        Half are uniform over the grid, half within ``surface_band`` voxels of the surface, where
        the decoder has the most to learn. Uses the global torch generator.
        """
        B, R = occupied_BRRR.shape[0], self.cfg.resolution
        near = self.cfg.num_queries // 2
        band_BV = surface_band(occupied_BRRR, width=self.cfg.surface_band).flatten(1).float()
        index_BQ = torch.cat([torch.randint(R**3, (B, self.cfg.num_queries - near), device=band_BV.device),
                              torch.multinomial(band_BV, near, replacement=True)], dim=1)
        targets_BQ = occupied_BRRR.flatten(1).gather(1, index_BQ).float()
        return voxel_centres(R, device=band_BV.device)[index_BQ], targets_BQ

    def forward(self, points_BP3: torch.Tensor) -> tuple[ScaleQuantOutput, torch.Tensor, torch.Tensor]:
        """Points → the quantiser's output on a posterior sample (the mean in eval mode), mean and log-variance."""
        mean_BNC, logvar_BNC = self.encoder(points_BP3)
        z_BNC = mean_BNC + (0.5 * logvar_BNC).exp() * torch.randn_like(mean_BNC) if self.training else mean_BNC
        return self.quantizer(z_BNC, track_usage=self.training), mean_BNC, logvar_BNC

    def loss(self, shapes_BRRR: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``bce + vq_weight·vq + kl_weight·kl`` on occupancy grids, with float logs (bce, iou, vq, kl, usage, ...).

        The encoder sees fresh surface points every call (seeds from the global generator); ``iou``
        is measured on the queried points.
        """
        occupied = self.check_grid(shapes_BRRR, name="shapes_BRRR")
        seeds = torch.randint(2**62, (occupied.shape[0],)).tolist()
        quant, mean_BNC, logvar_BNC = self(surface_points(occupied, num_points=self.cfg.num_points, seeds=seeds))
        queries_BQ3, targets_BQ = self.sample_queries(occupied)
        logits_BQ = self.decoder.query(self.decoder.context(quant.latents_BNC), queries_BQ3)
        bce = F.binary_cross_entropy_with_logits(logits_BQ, targets_BQ)
        kl = gaussian_kl(mean_BNC, logvar_BNC)
        total = bce + self.cfg.vq_weight * quant.vq_loss + self.cfg.kl_weight * kl
        predicted, target = logits_BQ.detach() > 0, targets_BQ > 0.5
        iou = (predicted & target).sum() / (predicted | target).sum().clamp(min=1)
        usage = codebook_usage(torch.cat(quant.ids, dim=1), self.cfg.codebook_size)
        logs = {"bce": bce.item(), "iou": iou.item(), "vq": quant.vq_loss.item(), "kl": kl.item(),
                "usage": usage["usage"], "perplexity": usage["perplexity"],
                "restarted": float(self.quantizer.last_restarted)}
        return total, logs
