"""LlamaGen-style 2D VQ image tokenizer: conv encoder → l2-normalised codebook → conv decoder.

Images ``[B, 3, H, W]`` in [-1, 1] become a ``[B, H/f, W/f]`` grid of ids (f ∈ {4, 8, 16}), read in
raster order by next-token generators. The quantiser is written here rather than taken from
vector-quantize-pytorch: LlamaGen learns its cosine-similarity codebook by gradient (codebook loss +
commitment loss), while the library's cosine codebook is EMA-only (it refuses
``use_cosine_sim`` with a learnable codebook) and expires codes by an EMA-count threshold instead of
"unused for N steps".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent, TokenLayout

from .checks import check_ids_in_range, check_images
from .conv import LatentGridMixin, downsample_factor
from .ldm_conv import check_backbone, conv_stacks

__all__ = ["CosineVectorQuantizer", "VQConfig", "VQImageTokenizer", "default_channel_mult", "reconstruction_loss"]

_DEFAULT_CHANNEL_MULT = {4: (1, 2, 2), 8: (1, 2, 2, 4), 16: (1, 1, 2, 2, 4)}
REC_LOSSES = ("l1", "mse")


def default_channel_mult(downsample: int, channel_mult: Sequence[int] | None = None, *, any_depth: bool = False) -> list[int]:
    """Validate ``downsample`` ∈ {4, 8, 16} and return a ``channel_mult`` with ``log2(downsample) + 1`` levels.

    ``any_depth`` also accepts an explicit ``channel_mult`` of any length (any power-of-two ``downsample``):
    published checkpoints choose their levels freely.
    """
    if not (any_depth and channel_mult is not None) and downsample not in _DEFAULT_CHANNEL_MULT:
        raise ValueError(f"downsample must be one of {sorted(_DEFAULT_CHANNEL_MULT)}, got {downsample!r}")
    if channel_mult is None:
        return list(_DEFAULT_CHANNEL_MULT[downsample])
    mult = list(channel_mult)
    if not mult or any(not isinstance(m, int) or m < 1 for m in mult):
        raise ValueError(f"channel_mult must be a list of positive ints, got {channel_mult!r}")
    if downsample_factor(mult) != downsample:
        _require_positive_int("downsample", downsample)
        power_of_two = downsample & (downsample - 1) == 0
        raise ValueError(
            f"channel_mult {mult} gives downsampling {downsample_factor(mult)}, but downsample={downsample} "
            + (f"needs {downsample.bit_length()} entries" if power_of_two else "is not a power of two")
        )
    return mult


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel L1 or MSE, averaged (the one reconstruction term of the grid tokenizers)."""
    return F.l1_loss(recon, target) if kind == "l1" else F.mse_loss(recon, target)


def _require_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), for training logs."""
    mse = F.mse_loss(recon.detach().clamp(-1, 1), target).item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item()


@dataclass
class VQConfig:
    """Size and training options of a :class:`VQImageTokenizer`.

    ``downsample`` (4, 8 or 16) fixes the grid: a 32×32 image gives 8×8, 4×4 or 2×2 ids.
    ``channel_mult`` defaults to LlamaGen's per-level widths for that factor. A code that no
    training batch picks for ``dead_code_steps`` consecutive steps is dead: it is restarted from a
    random encoder output of the current batch when ``restart_dead_codes`` is on.

    ``backbone`` picks the conv stacks: ``"conv"`` is our own small design (:mod:`.conv`), ``"ldm"`` the
    taming / latent-diffusion one of published tokenizers (:mod:`.ldm_conv`; every width a multiple of 32,
    its decoder has ``num_res_blocks + 1`` blocks per level, and any explicit ``channel_mult`` length is
    accepted). ``attention`` (``"ldm"`` only) adds self-attention at the lowest resolution and in the middle.
    """

    image_size: int = 32
    downsample: int = 4
    channels: int = 32
    channel_mult: list[int] | None = None
    num_res_blocks: int = 1
    z_channels: int = 32
    codebook_size: int = 512
    codebook_dim: int = 8
    commitment_beta: float = 0.25
    codebook_weight: float = 1.0
    rec_loss: str = "l1"
    dead_code_steps: int = 50
    restart_dead_codes: bool = True
    usage_decay: float = 0.99
    backbone: str = "conv"
    attention: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "num_res_blocks", "z_channels", "codebook_size", "codebook_dim", "dead_code_steps"):
            _require_positive_int(name, getattr(self, name))
        self.channel_mult = default_channel_mult(self.downsample, self.channel_mult, any_depth=self.backbone == "ldm")
        check_backbone(self.backbone, attention=self.attention, channels=self.channels, channel_mult=self.channel_mult)
        if self.image_size % self.downsample:
            raise ValueError(f"image_size={self.image_size} must be divisible by downsample={self.downsample}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        for name in ("commitment_beta", "codebook_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.usage_decay) < 1.0:
            raise ValueError(f"usage_decay must be in [0, 1), got {self.usage_decay!r}")


class CosineVectorQuantizer(nn.Module):
    """Nearest-code lookup by cosine similarity against an l2-normalised, gradient-learned codebook.

    Training-mode ``forward`` returns straight-through codes, ids and the (unweighted) codebook and
    commitment losses, and updates the usage statistics: ``usage_ema`` (EMA of each code's share of
    assignments) and ``steps_unused`` (training steps since each code was last picked). Before the
    lookup it restarts dead codes from random encoder outputs of the batch, so a restarted code is
    never one the current autograd graph has already used. ``eval()`` changes nothing: ids are a
    pure function of the input. Under ``torch.distributed`` the counts are summed over processes and
    restarted codes come from rank 0's batch, so every process keeps the same codebook.
    """

    def __init__(self, *, codebook_size: int, dim: int, dead_code_steps: int = 50, restart_dead_codes: bool = True,
                 usage_decay: float = 0.99) -> None:
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.dead_code_steps, self.restart_dead_codes, self.usage_decay = dead_code_steps, restart_dead_codes, usage_decay
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.normal_(self.embedding.weight)
        self.register_buffer("usage_ema", torch.zeros(codebook_size))
        # every code starts dead, so the first training batch initialises the codebook from encoder outputs
        self.register_buffer("steps_unused", torch.full((codebook_size,), dead_code_steps, dtype=torch.long))
        self.last_restarted = 0

    def normalized_codebook(self) -> torch.Tensor:
        """The ``[K, D]`` unit-norm code vectors that quantised latents are made of."""
        return F.normalize(self.embedding.weight, dim=-1)

    def nearest(self, z_BDhw: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` of the most cosine-similar code for each position; changes no state."""
        z_NhwD = F.normalize(z_BDhw, dim=1).permute(0, 2, 3, 1)
        return torch.einsum("bhwd,kd->bhwk", z_NhwD, self.normalized_codebook()).argmax(dim=-1)

    def codes(self, ids_Bhw: torch.Tensor) -> torch.Tensor:
        """Quantised latents ``[B, D, h, w]`` (unit-norm code vectors) for ids ``[B, h, w]``."""
        return F.embedding(ids_Bhw, self.normalized_codebook()).permute(0, 3, 1, 2)

    def forward(self, z_BDhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z_BDhw = F.normalize(z_BDhw, dim=1)
        self.last_restarted = self._restart_dead_codes(z_BDhw) if self.training and self.restart_dead_codes else 0
        ids_Bhw = self.nearest(z_BDhw)
        zq_BDhw = self.codes(ids_Bhw)
        losses = {
            "codebook": F.mse_loss(zq_BDhw, z_BDhw.detach()),
            "commit": F.mse_loss(z_BDhw, zq_BDhw.detach()),
        }
        if self.training:
            self._track_usage(ids_Bhw)
        return z_BDhw + (zq_BDhw - z_BDhw).detach(), ids_Bhw, losses

    @torch.no_grad()
    def _track_usage(self, ids_Bhw: torch.Tensor) -> None:
        counts_K = torch.bincount(ids_Bhw.reshape(-1), minlength=self.codebook_size).to(self.usage_ema.dtype)
        if _distributed():
            dist.all_reduce(counts_K)
        self.usage_ema.mul_(self.usage_decay).add_(counts_K / counts_K.sum().clamp_min(1), alpha=1 - self.usage_decay)
        self.steps_unused.add_(1).masked_fill_(counts_K > 0, 0)

    @torch.no_grad()
    def _restart_dead_codes(self, z_BDhw: torch.Tensor) -> int:
        """Move codes idle for ``dead_code_steps`` onto random vectors of the batch; return how many moved."""
        dead_K = self.steps_unused >= self.dead_code_steps
        num_dead = int(dead_K.sum())
        if not num_dead:
            return 0
        z_ND = z_BDhw.permute(0, 2, 3, 1).reshape(-1, self.dim)
        if z_ND.shape[0] >= num_dead:
            picks = torch.randperm(z_ND.shape[0], device=z_ND.device)[:num_dead]
        else:
            picks = torch.randint(0, z_ND.shape[0], (num_dead,), device=z_ND.device)
        fresh_ND = z_ND[picks].to(self.embedding.weight.dtype).contiguous()
        if _distributed():
            dist.broadcast(fresh_ND, src=0)
        # through .data: a graph kept for gradient accumulation must not see a version bump; the
        # rows it holds for these codes were unused, so their gradients are zero either way
        self.embedding.weight.data[dead_K] = fresh_ND
        self.steps_unused[dead_K] = 0
        self.usage_ema[dead_K] = 0.0
        return num_dead

    def codebook_usage(self) -> dict[str, float]:
        """Training-time usage: fraction of live codes (picked within ``dead_code_steps`` steps) and EMA perplexity."""
        total = float(self.usage_ema.sum())
        if total > 0:
            p_K = self.usage_ema / total
            perplexity = float(torch.exp(-(p_K * torch.log(p_K.clamp_min(1e-12))).sum()))
        else:
            perplexity = 0.0
        return {"usage": float((self.steps_unused < self.dead_code_steps).float().mean()), "perplexity": perplexity}


class VQImageTokenizer(LatentGridMixin, PretrainedModel):
    """Images ``[B, 3, H, W]`` in [-1, 1] ↔ ids ``[B, H/f, W/f]`` over ``codebook_size`` codes.

    Encoder (``ConvEncoder``, or ``LDMEncoder`` for ``backbone="ldm"``) → 1×1 conv to ``codebook_dim`` →
    :class:`CosineVectorQuantizer` → 1×1 conv → decoder. Train with ``loss, logs = tok.loss(images)``.
    """

    config_class = VQConfig

    def __init__(self, config: VQConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        encoder_class, decoder_class, backbone = conv_stacks(cfg.backbone, channels=cfg.channels, channel_mult=cfg.channel_mult,
                                                             num_res_blocks=cfg.num_res_blocks, attention=cfg.attention)
        self.encoder = encoder_class(in_channels=3, out_channels=cfg.z_channels, **backbone)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.quantizer = CosineVectorQuantizer(
            codebook_size=cfg.codebook_size, dim=cfg.codebook_dim, dead_code_steps=cfg.dead_code_steps,
            restart_dead_codes=cfg.restart_dead_codes, usage_decay=cfg.usage_decay,
        )
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.decoder = decoder_class(in_channels=cfg.z_channels, out_channels=3, **backbone)

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    def layout(self, image_size: int | None = None) -> TokenLayout:
        """Raster-order grid layout of one image's ids (row-major, matching ``ids.reshape(B, -1)``)."""
        return TokenLayout.grid(self.grid_shape(image_size), content=DiscreteContent((self.cfg.codebook_size,)))

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    modality = "image"

    def token_spec(self) -> TokenSpec:
        """An ``h × w`` grid of ids from one codebook."""
        return TokenSpec(content=DiscreteContent((self.cfg.codebook_size,)), shape=self.grid_shape())

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` are already position-major."""
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, size_multiple=self.cfg.downsample)
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → ids ``[B, H/f, W/f]`` (long); no state changes in any mode."""
        with torch.no_grad():
            return self.quantizer.nearest(self._latents(images))

    def ids_to_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` → quantised latents ``[B, codebook_dim, h, w]`` (unit-norm code vectors)."""
        check_ids_in_range(ids, self.cfg.codebook_size)
        if ids.dim() != 3:
            raise ValueError(f"ids must have shape [B, h, w] (a grid per image), got {tuple(ids.shape)}")
        return self.quantizer.codes(ids.long())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantised latents ``[B, codebook_dim, h, w]`` → images ``[B, 3, h*f, w*f]`` clamped to [-1, 1]."""
        if latents.dim() != 4 or latents.shape[1] != self.cfg.codebook_dim:
            raise ValueError(f"latents must have shape [B, {self.cfg.codebook_dim}, h, w], got {tuple(latents.shape)}")
        return self.decoder(self.post_quant_conv(latents)).clamp(-1, 1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w]`` (the ``grid_shape()`` grid) → images ``[B, 3, h*f, w*f]`` in [-1, 1]."""
        latents = self.ids_to_latents(ids)
        self.check_grid(ids.shape[1:], name="ids")
        return self.decode_latents(latents)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Straight-through reconstruction (unclamped), ids and VQ losses; updates usage stats in training."""
        zq_BDhw, ids_Bhw, losses = self.quantizer(self._latents(images))
        return self.decoder(self.post_quant_conv(zq_BDhw)), ids_Bhw, losses

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + ``codebook_weight``·codebook + ``commitment_beta``·commitment, and logs."""
        recon, ids_Bhw, vq = self(images)
        rec = reconstruction_loss(recon, images, self.cfg.rec_loss)
        total = rec + self.cfg.codebook_weight * vq["codebook"] + self.cfg.commitment_beta * vq["commit"]
        logs = {
            "rec": rec.item(),
            "codebook": vq["codebook"].item(),
            "commit": vq["commit"].item(),
            "psnr": _psnr(recon, images),
            "usage": ids_Bhw.unique().numel() / self.cfg.codebook_size,
            "restarted": float(self.quantizer.last_restarted),
        }
        return total, logs

    def codebook_usage(self) -> dict[str, float]:
        """Usage tracked during training: ``usage`` (fraction of live codes) and ``perplexity`` (of the usage EMA)."""
        return self.quantizer.codebook_usage()
