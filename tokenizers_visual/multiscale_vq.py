"""VAR's multi-scale residual VQ tokenizer (next-scale tokens), reproduced exactly.

An image is encoded to a feature map ``f`` of ``codebook_dim`` channels on an ``h × w`` grid
(``h = w = patch_nums[-1]``) and quantised coarse to fine with ONE shared codebook: at scale
``k`` the residual ``f_rest`` is area-downsampled to ``pn_k × pn_k``, each cell takes its nearest
code, the codes are bicubic-upsampled back to ``h × w`` and passed through a φ convolution
``x·(1−r) + conv3x3(x)·r``; the result is added to the reconstruction ``f_hat`` and subtracted from
``f_rest``. The last scale is the full grid and is neither down- nor upsampled. φ convolutions are
shared in ``share_quant_resi = K`` groups and picked per scale by VAR's "ticks" rule, so the
algorithm (and the quantiser's weights) match FoundationVision/VAR ``models/quant.py``.

Tokens: a list of ``[B, pn, pn]`` id maps, one per scale, or the flat ``[B, L]`` form
(``L = Σ pn²``, scale by scale, row-major within a scale) described by :meth:`layout`. The
next-scale generator uses :meth:`MultiScaleVQTokenizer.ids_to_next_scale_inputs` (teacher forcing)
and :meth:`MultiScaleVQTokenizer.next_scale_input` (sampling), VAR's ``idxBl_to_var_input`` and
``get_next_autoregressive_input``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent, TokenLayout

from .checks import check_ids_in_range, check_images, check_index
from .conv import downsample_factor
from .ldm_conv import check_backbone, conv_stacks

__all__ = [
    "MultiScaleVQConfig",
    "MultiScaleVQTokenizer",
    "MultiScaleResidualQuantizer",
    "MultiScaleQuantOutput",
    "phi_indices",
]

ScaleIds = Sequence[torch.Tensor] | torch.Tensor


@dataclass
class MultiScaleVQConfig:
    """Architecture and training options of a :class:`MultiScaleVQTokenizer`.

    ``patch_nums`` are the token-map sizes from coarse to fine; the last one must be the latent
    grid ``image_size / 2 ** (len(channel_mult) - 1)``. ``share_quant_resi`` is VAR's K: 0 gives
    one φ per scale, 1 one φ for all scales, K > 1 K partially shared φ. ``quant_resi`` is φ's
    ratio r (0 turns φ into the identity). ``using_znorm`` picks codes by cosine instead of l2.
    ``codebook_init`` follows VAR's ``eini``: > 0 truncated normal of that std, < 0 uniform in
    ±|eini| / codebook_size, 0 keeps ``nn.Embedding``'s N(0, 1). ``dead_code_steps`` > 0 restarts a
    code that no scale picked for that many training steps from a residual of the batch (not in VAR).

    ``backbone`` and ``attention`` mean what they mean in :class:`~tokenizers_visual.vq.VQConfig`:
    ``"conv"`` is our own small stack, ``"ldm"`` the taming / latent-diffusion one of VAR's published VQVAE
    (:mod:`.ldm_conv`), ``attention`` its self-attention at the lowest resolution and in the middle.
    ``quant_conv_kernel`` is the size of the square convs around the quantiser: 1 here by default, VAR's 3.
    """

    image_size: int = 32
    in_channels: int = 3
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    codebook_size: int = 512
    codebook_dim: int = 32
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    using_znorm: bool = False
    beta: float = 0.25
    codebook_init: float = 0.0
    dead_code_steps: int = 0
    vq_weight: float = 1.0
    l1_weight: float = 0.0
    backbone: str = "conv"
    attention: bool = False
    quant_conv_kernel: int = 1

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.patch_nums = tuple(self.patch_nums)
        for name in ("image_size", "in_channels", "channels", "num_res_blocks", "codebook_size", "codebook_dim",
                     "quant_conv_kernel"):
            _require_positive(name, getattr(self, name))
        if not self.quant_conv_kernel % 2:
            raise ValueError(f"quant_conv_kernel must be odd (the convs keep the grid size), got {self.quant_conv_kernel}")
        if not self.channel_mult:
            raise ValueError("channel_mult must name at least one level")
        for i, mult in enumerate(self.channel_mult):
            _require_positive(f"channel_mult[{i}]", mult)
        check_backbone(self.backbone, attention=self.attention, channels=self.channels, channel_mult=self.channel_mult)
        if len(self.patch_nums) < 2:
            raise ValueError(f"patch_nums must name at least two scales (coarse to fine), got {self.patch_nums}")
        for i, pn in enumerate(self.patch_nums):
            _require_positive(f"patch_nums[{i}]", pn)
        if any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:])):
            raise ValueError(f"patch_nums must be strictly increasing, got {self.patch_nums}")
        factor = downsample_factor(self.channel_mult)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} must be divisible by the downsampling factor {factor} (channel_mult={self.channel_mult})")
        if self.patch_nums[-1] != self.image_size // factor:
            raise ValueError(
                f"patch_nums[-1]={self.patch_nums[-1]} must equal the latent grid size image_size / {factor} = "
                f"{self.image_size // factor}"
            )
        if not isinstance(self.share_quant_resi, int) or isinstance(self.share_quant_resi, bool) or self.share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be an int >= 0 (0: one φ per scale), got {self.share_quant_resi!r}")
        if not 0.0 <= self.quant_resi <= 1.0:
            raise ValueError(f"quant_resi must lie in [0, 1], got {self.quant_resi!r}")
        if not isinstance(self.dead_code_steps, int) or isinstance(self.dead_code_steps, bool) or self.dead_code_steps < 0:
            raise ValueError(f"dead_code_steps must be an int >= 0 (0: never restart codes, as VAR), got {self.dead_code_steps!r}")
        for name in ("beta", "vq_weight", "l1_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        phi_indices(self.patch_nums, self.share_quant_resi)  # raises if some φ would never be used

    @property
    def downsample(self) -> int:
        return downsample_factor(self.channel_mult)


def _require_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def phi_indices(patch_nums: Sequence[int], share_quant_resi: int) -> tuple[int, ...]:
    """Index of the φ used at each scale, by VAR's ticks rule (``PhiShared`` / ``PhiPartiallyShared`` / ``PhiNonShared``).

    Scale ``si`` of ``SN`` sits at ``si / (SN - 1)`` in [0, 1]; with ``K`` φ the ticks are
    ``linspace(1/(3K), 1 − 1/(3K), K)`` for K = 4 and ``linspace(1/(2K), 1 − 1/(2K), K)`` otherwise
    (as in VAR); the nearest tick wins, the first on a tie. ``K = 0`` means one φ per scale.
    """
    num_scales = len(patch_nums)
    count = num_scales if share_quant_resi == 0 else share_quant_resi
    if count == 1:
        return (0,) * num_scales
    edge = 1 / 3 / count if count == 4 else 1 / 2 / count
    ticks = np.linspace(edge, 1 - edge, count)
    chosen = tuple(int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales))
    unused = sorted(set(range(count)) - set(chosen))
    if unused:
        raise ValueError(
            f"share_quant_resi={share_quant_resi} gives φ {unused} no scale of patch_nums {tuple(patch_nums)} "
            f"(scales use φ {chosen}); use fewer shared φ"
        )
    return chosen


class Phi(nn.Conv2d):
    """VAR's φ: ``x·(1−r) + conv3x3(x)·r``, a residual refinement of the upsampled codes."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.ratio) + super().forward(h_BChw) * self.ratio


@dataclass
class MultiScaleQuantOutput:
    """What one pass of the quantiser gives: ``f_hat`` (straight-through in training), ids per scale, VAR's vq loss."""

    f_hat_BChw: torch.Tensor
    ids: list[torch.Tensor]
    vq_loss: torch.Tensor
    f_hats: list[torch.Tensor] | None = None


class MultiScaleResidualQuantizer(nn.Module):
    """VAR's ``VectorQuantizer2``: multi-scale residual quantisation with one codebook and ticked φ."""

    def __init__(self, *, codebook_size: int, codebook_dim: int, patch_nums: Sequence[int], quant_resi: float = 0.5,
                 share_quant_resi: int = 4, using_znorm: bool = False, beta: float = 0.25,
                 dead_code_steps: int = 0) -> None:
        super().__init__()
        self.dead_code_steps = dead_code_steps
        self.last_restarted = 0
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.patch_nums = tuple(patch_nums)
        self.using_znorm, self.beta = using_znorm, beta
        self.phi_index = phi_indices(self.patch_nums, share_quant_resi)
        count = len(self.patch_nums) if share_quant_resi == 0 else share_quant_resi
        self.phis = nn.ModuleList(
            Phi(codebook_dim, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity() for _ in range(count)
        )
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        # VAR's per-scale EMA of code hits and its update counter (``record_hit``), kept for resuming.
        self.register_buffer("ema_hits_SV", torch.zeros(len(self.patch_nums), codebook_size))
        self.register_buffer("hit_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("idle_steps_V", torch.zeros(codebook_size, dtype=torch.long))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, scale_index: int) -> nn.Module:
        return self.phis[self.phi_index[scale_index]]

    def nearest_ids(self, rest_NC: torch.Tensor) -> torch.Tensor:
        """Nearest code per row: l2 (VAR's expanded distance) or, with ``using_znorm``, cosine."""
        codes_VC = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(rest_NC, dim=-1) @ F.normalize(codes_VC.T, dim=0), dim=1)
        dist_NV = rest_NC.square().sum(dim=1, keepdim=True) + codes_VC.square().sum(dim=1)
        dist_NV.addmm_(rest_NC, codes_VC.T, alpha=-2, beta=1)
        return torch.argmin(dist_NV, dim=1)

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, pn, pn]`` → code map ``[B, C, pn, pn]``."""
        return self.embedding(ids).permute(0, 3, 1, 2)

    def scale_update(self, scale_index: int, codes_BChw: torch.Tensor) -> torch.Tensor:
        """What scale ``scale_index`` adds to ``f_hat``: bicubic upsampling to the full grid (not at the last scale), then φ."""
        size = self.patch_nums[-1]
        if scale_index != self.num_scales - 1:
            codes_BChw = F.interpolate(codes_BChw, size=(size, size), mode="bicubic")
        return self.phi(scale_index)(codes_BChw.contiguous())

    def forward(self, f_BChw: torch.Tensor, *, track_usage: bool = False, return_f_hats: bool = False) -> MultiScaleQuantOutput:
        """Quantise ``f [B, C, h, w]`` scale by scale (VAR's ``forward`` / ``f_to_idxBl_or_fhat``).

        ``vq_loss`` is VAR's: the mean over scales of ``β·mse(f_hat.detach(), f) + mse(f_hat,
        f.detach())``; the returned ``f_hat`` carries the straight-through gradient to ``f``.
        ``track_usage`` (training) updates VAR's per-scale EMA of code hits (summed over processes)
        and, with ``dead_code_steps``, restarts idle codes; neither changes this call's output.
        """
        f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        if C != self.codebook_dim or (H, W) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"features must be [B, {self.codebook_dim}, {self.patch_nums[-1]}, {self.patch_nums[-1]}], got {tuple(f_BChw.shape)}")
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            f_no_grad = f_BChw.detach()
            f_rest = f_no_grad.clone()
            f_hat = torch.zeros_like(f_rest)
            vq_loss = f_BChw.new_zeros(())
            ids, f_hats, rests = [], [], []
            seen_V = torch.zeros(self.codebook_size, dtype=torch.bool, device=f_BChw.device)
            last = self.num_scales - 1
            for si, pn in enumerate(self.patch_nums):
                rest_BChw = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != last else f_rest
                rest_NC = rest_BChw.permute(0, 2, 3, 1).reshape(-1, C)
                ids_N = self.nearest_ids(rest_NC)
                if track_usage:
                    seen_V |= self._record_hits(si, ids_N) > 0
                    rests.append(rest_NC.clone())
                ids_Bhw = ids_N.view(B, pn, pn)
                h_BChw = self.scale_update(si, self.ids_to_codes(ids_Bhw))
                f_hat = f_hat + h_BChw
                f_rest -= h_BChw.detach()
                ids.append(ids_Bhw)
                if return_f_hats:
                    f_hats.append(f_hat.detach())
                vq_loss = vq_loss + F.mse_loss(f_hat.detach(), f_BChw) * self.beta + F.mse_loss(f_hat, f_no_grad)
            vq_loss = vq_loss / self.num_scales
            f_hat = (f_hat.detach() - f_no_grad) + f_BChw
            if track_usage and self.dead_code_steps:
                self._restart_dead_codes(seen_V, torch.cat(rests))
        return MultiScaleQuantOutput(f_hat, ids, vq_loss, f_hats if return_f_hats else None)

    @torch.no_grad()
    def _record_hits(self, scale_index: int, ids_N: torch.Tensor) -> torch.Tensor:
        hits_V = ids_N.bincount(minlength=self.codebook_size).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(hits_V)
        updates = int(self.hit_updates)
        if updates == 0:
            self.ema_hits_SV[scale_index].copy_(hits_V)
        else:
            keep = 0.9 if updates < 100 else 0.99
            self.ema_hits_SV[scale_index].mul_(keep).add_(hits_V * (1 - keep))
        self.hit_updates += 1
        return hits_V

    @torch.no_grad()
    def _restart_dead_codes(self, seen_V: torch.Tensor, rest_NC: torch.Tensor) -> None:
        """Move codes no scale picked for ``dead_code_steps`` steps onto residuals of this batch.

        Not part of VAR (off by default): small codebooks trained from scratch otherwise collapse
        onto a few codes. Residuals come from every scale; processes take rank 0's choice.
        """
        self.idle_steps_V.add_(1).masked_fill_(seen_V, 0)
        dead_D = (self.idle_steps_V >= self.dead_code_steps).nonzero().squeeze(1)
        self.last_restarted = int(dead_D.numel())
        if not self.last_restarted:
            return
        new_DC = rest_NC[torch.randint(rest_NC.shape[0], (self.last_restarted,), device=rest_NC.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new_DC, src=0)
        self.embedding.weight.data[dead_D] = new_DC.to(self.embedding.weight.dtype)
        self.idle_steps_V[dead_D] = 0

    def scale_usage(self, *, batch_size: int) -> list[float]:
        """VAR's per-scale usage: fraction of codes whose EMA hit count reaches 8% of a uniform share.

        ``batch_size`` is the per-process batch of the tracked steps (VAR's margin scales with it).
        """
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        margin = world * batch_size * self.patch_nums[-1] ** 2 / self.codebook_size * 0.08
        return [float((row >= margin).float().mean()) for row in self.ema_hits_SV]

    def ids_to_f_hats(self, ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Cumulative ``f_hat`` after each scale (VAR's ``embed_to_fhat``), from ids ``[B, pn, pn]`` per scale."""
        f_hat, f_hats = None, []
        for si, ids_Bhw in enumerate(ids):
            h_BChw = self.scale_update(si, self.ids_to_codes(ids_Bhw))
            f_hat = h_BChw if f_hat is None else f_hat + h_BChw
            f_hats.append(f_hat)
        return f_hats

    def next_scale_input(self, *, scale_index: int, f_hat_BChw: torch.Tensor | None,
                         codes_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``scale_index``'s codes to ``f_hat``; return it and the next scale's input ``[B, pn_next², C]``."""
        h_BChw = self.scale_update(scale_index, codes_BChw.float())
        f_hat_BChw = h_BChw if f_hat_BChw is None else f_hat_BChw + h_BChw
        if scale_index == self.num_scales - 1:
            return f_hat_BChw, None
        pn = self.patch_nums[scale_index + 1]
        next_BChw = F.interpolate(f_hat_BChw, size=(pn, pn), mode="area")
        return f_hat_BChw, next_BChw.flatten(2).transpose(1, 2)


class MultiScaleVQTokenizer(PretrainedModel):
    """``encoder → conv → VAR multi-scale residual VQ → conv → decoder``.

    The encoder and decoder are ``ConvEncoder`` / ``ConvDecoder``, or ``LDMEncoder`` / ``LDMDecoder`` for
    ``backbone="ldm"``; the convs around the quantiser are ``quant_conv_kernel`` square (1×1 by default).

    ``encode(images)`` gives ids ``[B, pn, pn]`` per scale, ``encode_flat`` the ``[B, L]`` form;
    ``decode`` accepts either. ``loss(images)`` is the training objective: reconstruction MSE
    (+ optional L1) plus ``vq_weight`` × VAR's vq loss.
    """

    config_class = MultiScaleVQConfig

    def __init__(self, config: MultiScaleVQConfig) -> None:
        super().__init__()
        config = self._register_typed_config(config)
        self.cfg = config
        encoder_class, decoder_class, arch = conv_stacks(config.backbone, channels=config.channels, channel_mult=config.channel_mult,
                                                         num_res_blocks=config.num_res_blocks, attention=config.attention)
        self.encoder = encoder_class(in_channels=config.in_channels, out_channels=config.codebook_dim, **arch)
        kernel = config.quant_conv_kernel
        self.quant_conv = nn.Conv2d(config.codebook_dim, config.codebook_dim, kernel, padding=kernel // 2)
        self.quantizer = MultiScaleResidualQuantizer(
            codebook_size=config.codebook_size, codebook_dim=config.codebook_dim, patch_nums=config.patch_nums,
            quant_resi=config.quant_resi, share_quant_resi=config.share_quant_resi,
            using_znorm=config.using_znorm, beta=config.beta, dead_code_steps=config.dead_code_steps,
        )
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.codebook_dim, kernel, padding=kernel // 2)
        self.decoder = decoder_class(in_channels=config.codebook_dim, out_channels=config.in_channels, **arch)
        self._init_codebook(config.codebook_init)

    def _init_codebook(self, eini: float) -> None:
        weight = self.quantizer.embedding.weight
        if weight.is_meta:
            return
        with torch.no_grad():
            if eini > 0:
                nn.init.trunc_normal_(weight, std=eini)
            elif eini < 0:
                weight.uniform_(-abs(eini) / self.cfg.codebook_size, abs(eini) / self.cfg.codebook_size)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.cfg.patch_nums

    @property
    def num_scales(self) -> int:
        return len(self.cfg.patch_nums)

    @property
    def num_tokens(self) -> int:
        """L = Σ pn², the length of the flat token sequence."""
        return sum(pn * pn for pn in self.cfg.patch_nums)

    @property
    def codebook(self) -> torch.Tensor:
        """The shared codebook ``[codebook_size, codebook_dim]`` (e.g. for soft, probability-weighted codes)."""
        return self.quantizer.embedding.weight

    def layout(self) -> TokenLayout:
        """Next-scale layout: one group per scale, ``(scale, y, x)`` coordinates, the flat order of :meth:`encode_flat`."""
        return TokenLayout.scales(self.cfg.patch_nums, content=DiscreteContent((self.cfg.codebook_size,)))

    # ---- images <-> features -----------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        check_images(images, channels=self.cfg.in_channels, size_multiple=self.cfg.downsample)
        if tuple(images.shape[-2:]) != (self.cfg.image_size,) * 2:
            raise ValueError(
                f"images must be {self.cfg.image_size}x{self.cfg.image_size} for this tokenizer (patch_nums end at "
                f"{self.cfg.patch_nums[-1]}), got {images.shape[-2]}x{images.shape[-1]}"
            )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` → pre-quantisation features ``f [B, codebook_dim, h, w]``."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images))

    def decode_f_hat(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Cumulative feature map ``[B, codebook_dim, h, w]`` → images in [-1, 1] (VAR's ``fhat_to_img``)."""
        side, dim = self.cfg.patch_nums[-1], self.cfg.codebook_dim
        if not isinstance(f_hat_BChw, torch.Tensor) or f_hat_BChw.dim() != 4 or tuple(f_hat_BChw.shape[1:]) != (dim, side, side):
            got = tuple(f_hat_BChw.shape) if isinstance(f_hat_BChw, torch.Tensor) else type(f_hat_BChw).__name__
            raise ValueError(f"f_hat must have shape [B, {dim}, {side}, {side}] (codebook_dim, the finest scale), got {got}")
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)

    # ---- tokens ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images ``[B, 3, H, W]`` in [-1, 1] → ids ``[B, pn, pn]`` (long) for each scale, coarse to fine."""
        return self.quantizer(self.features(images)).ids

    def encode_flat(self, images: torch.Tensor) -> torch.Tensor:
        """Images → ids ``[B, L]`` in the order of :meth:`layout`."""
        return self.flatten_ids(self.encode(images))

    def flatten_ids(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ids per scale → ``[B, L]``, scale by scale, row-major within a scale."""
        ids = self._scale_ids(ids)
        return torch.cat([ids_Bhw.flatten(1) for ids_Bhw in ids], dim=1)

    def unflatten_ids(self, ids_BL: torch.Tensor) -> list[torch.Tensor]:
        """``[B, L]`` → ids ``[B, pn, pn]`` per scale."""
        return self._scale_ids(ids_BL)

    def _scale_ids(self, ids: ScaleIds) -> list[torch.Tensor]:
        """Validate ids in either form and return them as ``[B, pn, pn]`` maps."""
        pns = self.cfg.patch_nums
        if isinstance(ids, torch.Tensor):
            check_ids_in_range(ids, self.cfg.codebook_size)
            if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
                raise ValueError(f"flat ids must have shape [B, {self.num_tokens}] (L = Σ pn² for patch_nums {pns}), got {tuple(ids.shape)}")
            return [chunk.reshape(-1, pn, pn) for chunk, pn in zip(ids.split([pn * pn for pn in pns], dim=1), pns)]
        if not isinstance(ids, (list, tuple)) or len(ids) != len(pns):
            got = len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise ValueError(f"ids must be a [B, L] tensor or a list of {len(pns)} per-scale tensors (patch_nums {pns}), got {got}")
        out = []
        for si, (ids_si, pn) in enumerate(zip(ids, pns)):
            check_ids_in_range(ids_si, self.cfg.codebook_size, name=f"ids[{si}]")
            if ids_si.dim() == 2 and ids_si.shape[1] == pn * pn:
                ids_si = ids_si.reshape(-1, pn, pn)
            if ids_si.dim() != 3 or tuple(ids_si.shape[1:]) != (pn, pn) or ids_si.shape[0] != ids[0].shape[0]:
                raise ValueError(f"ids[{si}] must have shape [B, {pn}, {pn}] or [B, {pn * pn}] with the batch of ids[0], got {tuple(ids_si.shape)}")
            out.append(ids_si.long())
        return out

    def ids_to_f_hat(self, ids: ScaleIds, *, every_scale: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Cumulative feature map ``[B, codebook_dim, h, w]`` from ids (or the list after each scale)."""
        f_hats = self.quantizer.ids_to_f_hats(self._scale_ids(ids))
        return f_hats if every_scale else f_hats[-1]

    def decode(self, ids: ScaleIds) -> torch.Tensor:
        """Ids (per-scale list or flat ``[B, L]``) → images ``[B, 3, H, W]`` in [-1, 1]."""
        return self.decode_f_hat(self.ids_to_f_hat(ids))

    # ---- next-scale generation -----------------------------------------------------------------
    def ids_to_codes(self, ids: torch.Tensor, *, scale_index: int) -> torch.Tensor:
        """One scale's ids (``[B, pn, pn]`` or ``[B, pn²]``) → its code map ``[B, codebook_dim, pn, pn]``."""
        pn = self.cfg.patch_nums[check_index("scale_index", scale_index, self.num_scales)]
        check_ids_in_range(ids, self.cfg.codebook_size)
        if ids.shape[1:] not in ((pn, pn), (pn * pn,)):
            raise ValueError(f"ids of scale {scale_index} must have shape [B, {pn}, {pn}] or [B, {pn * pn}], got {tuple(ids.shape)}")
        return self.quantizer.ids_to_codes(ids.reshape(-1, pn, pn))

    def ids_to_next_scale_inputs(self, ids: ScaleIds) -> torch.Tensor:
        """Teacher-forcing inputs for scales 1..K−1: ``[B, L − pn₀², codebook_dim]`` (VAR's ``idxBl_to_var_input``).

        The input of scale k+1 is the cumulative ``f_hat`` of scales ≤ k, area-downsampled to
        ``pn_{k+1} × pn_{k+1}``, flattened row-major.
        """
        ids = self._scale_ids(ids)
        f_hat, inputs = None, []
        for si in range(self.num_scales - 1):
            f_hat, next_BlC = self.quantizer.next_scale_input(
                scale_index=si, f_hat_BChw=f_hat, codes_BChw=self.quantizer.ids_to_codes(ids[si])
            )
            inputs.append(next_BlC)
        return torch.cat(inputs, dim=1)

    def next_scale_input(self, *, scale_index: int, f_hat: torch.Tensor | None,
                         codes_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sampling step (VAR's ``get_next_autoregressive_input``): add scale ``scale_index``'s codes to ``f_hat``.

        ``f_hat`` is ``None`` before the first scale. Returns the new ``f_hat [B, codebook_dim, h, w]``
        (decode it with :meth:`decode_f_hat`) and the next scale's input ``[B, pn_next², codebook_dim]``,
        or ``None`` after the last scale. ``codes_BChw`` may be soft (probability-weighted) codes.
        """
        pn = self.cfg.patch_nums[check_index("scale_index", scale_index, self.num_scales)]
        if codes_BChw.dim() != 4 or tuple(codes_BChw.shape[1:]) != (self.cfg.codebook_dim, pn, pn):
            raise ValueError(f"codes of scale {scale_index} must have shape [B, {self.cfg.codebook_dim}, {pn}, {pn}], got {tuple(codes_BChw.shape)}")
        return self.quantizer.next_scale_input(scale_index=scale_index, f_hat_BChw=f_hat, codes_BChw=codes_BChw)

    # ---- tokenizer protocol (mmgen.protocol), with ScaleContext for next-scale generation ------------
    modality = "image"

    def token_spec(self) -> TokenSpec:
        """A pyramid of ``pn × pn`` id maps, coarse to fine, one shared codebook."""
        return TokenSpec(content=DiscreteContent((self.cfg.codebook_size,)), scales=tuple((pn, pn) for pn in self.cfg.patch_nums))

    def to_positions(self, ids: ScaleIds) -> list[torch.Tensor]:
        """Ids (per-scale list or flat) → the ``[B, pn, pn]`` map of every scale."""
        return self._scale_ids(ids)

    def from_positions(self, positions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._scale_ids(list(positions))

    @property
    def context_dim(self) -> int:
        """Channels of the next-scale inputs (codebook space)."""
        return self.cfg.codebook_dim

    def teacher_context(self, ids_BL: torch.Tensor) -> torch.Tensor:
        return self.ids_to_next_scale_inputs(ids_BL)

    def context_step(self, state: torch.Tensor | None, scale_index: int,
                     ids_Bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state`` is the running ``f_hat`` (None before scale 0); returns it updated and scale k+1's inputs."""
        codes_BChw = self.ids_to_codes(ids_Bn, scale_index=scale_index)
        return self.next_scale_input(scale_index=scale_index, f_hat=state, codes_BChw=codes_BChw)

    # ---- training ------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, MultiScaleQuantOutput]:
        """Reconstruction ``[B, 3, H, W]`` (unclamped, straight-through) and the quantiser's output."""
        quant = self.quantizer(self.features(images), track_usage=self.training)
        return self.decoder(self.post_quant_conv(quant.f_hat_BChw)), quant

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training objective: ``mse(rec, x) + l1_weight·|rec − x| + vq_weight·vq_loss``, with logs."""
        rec, quant = self(images)
        mse = F.mse_loss(rec, images)
        total = mse + self.cfg.vq_weight * quant.vq_loss
        if self.cfg.l1_weight:
            total = total + self.cfg.l1_weight * F.l1_loss(rec, images)
        used = torch.zeros(self.cfg.codebook_size, dtype=torch.bool, device=images.device)
        for ids_Bhw in quant.ids:
            used[ids_Bhw.flatten()] = True
        logs = {"rec": mse.item(), "vq": quant.vq_loss.item(), "usage": used.float().mean().item(),
                "restarted": float(self.quantizer.last_restarted)}
        return total, logs
