"""KL-VAE image tokenizer: a continuous latent grid, plus TokenBridge-style post-training quantisation.

Images ``[B, 3, H, W]`` in [-1, 1] become latents ``[B, latent_dim, H/f, W/f]`` for continuous-token
generators (FlowAR, xAR, MAR). ``fit_quantizer`` then turns the trained model's latents into
discrete ids without retraining, as TokenBridge does: every channel is quantised on its own into
``ptq_levels`` uniform bins over ``mean ± ptq_sigma·std`` of that channel (TokenBridge's fixed
``[-σ_max, σ_max]`` range for a unit-Gaussian latent, measured on the data instead of assumed from
the prior, and trimmed to the observed min / max so that no bins are spent where no latent falls).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import ContinuousContent, DiscreteContent, TokenLayout

from .checks import check_ids_in_range, check_images
from .conv import ConvDecoder, ConvEncoder, LatentGridMixin
from .vq import REC_LOSSES, default_channel_mult, reconstruction_loss

__all__ = ["KLConfig", "KLImageTokenizer", "gaussian_kl"]

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp: keeps exp(logvar) finite early in training


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)) per element, averaged: 0.5·(μ² + σ² − 1 − log σ²)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


@dataclass
class KLConfig:
    """Size and training options of a :class:`KLImageTokenizer`.

    The loss is per-pixel reconstruction + ``kl_weight`` · per-latent-element KL to N(0, 1).
    ``ptq_levels`` and ``ptq_sigma`` set the post-training quantiser (bins per channel, range in
    channel standard deviations).
    """

    image_size: int = 32
    downsample: int = 4
    channels: int = 32
    channel_mult: list[int] | None = None
    num_res_blocks: int = 1
    latent_dim: int = 4
    kl_weight: float = 1e-4
    rec_loss: str = "l1"
    ptq_levels: int = 64
    ptq_sigma: float = 3.0

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "num_res_blocks", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.channel_mult = default_channel_mult(self.downsample, self.channel_mult)
        if self.image_size % self.downsample:
            raise ValueError(f"image_size={self.image_size} must be divisible by downsample={self.downsample}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {REC_LOSSES}, got {self.rec_loss!r}")
        if not float(self.kl_weight) >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        if not isinstance(self.ptq_levels, int) or isinstance(self.ptq_levels, bool) or self.ptq_levels < 2:
            raise ValueError(f"ptq_levels must be an int >= 2, got {self.ptq_levels!r}")
        if not float(self.ptq_sigma) > 0:
            raise ValueError(f"ptq_sigma must be > 0, got {self.ptq_sigma!r}")


class KLImageTokenizer(LatentGridMixin, PretrainedModel):
    """Images ``[B, 3, H, W]`` in [-1, 1] ↔ latents ``[B, latent_dim, H/f, W/f]`` (a diagonal-Gaussian VAE).

    ``encode`` gives the posterior mean (``sample=True`` draws from it); ``decode`` maps latents back.
    After ``fit_quantizer``, ``quantize`` / ``dequantize`` convert latents to ids
    ``[B, h, w, latent_dim]`` (one id per channel) and back, described by ``ptq_layout``.
    """

    config_class = KLConfig

    def __init__(self, config: KLConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        backbone = {"channels": cfg.channels, "channel_mult": cfg.channel_mult, "num_res_blocks": cfg.num_res_blocks}
        self.encoder = ConvEncoder(in_channels=3, out_channels=2 * cfg.latent_dim, **backbone)
        self.decoder = ConvDecoder(in_channels=cfg.latent_dim, out_channels=3, **backbone)
        self.register_buffer("ptq_low", torch.full((cfg.latent_dim,), -float(cfg.ptq_sigma)))
        self.register_buffer("ptq_high", torch.full((cfg.latent_dim,), float(cfg.ptq_sigma)))
        self.register_buffer("ptq_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def layout(self, image_size: int | None = None) -> TokenLayout:
        """Raster-order grid of continuous ``latent_dim`` vectors (position (y, x) is ``latents[:, :, y, x]``)."""
        return TokenLayout.grid(self.grid_shape(image_size), content=ContinuousContent(self.cfg.latent_dim))

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    modality = "image"

    def token_spec(self) -> TokenSpec:
        """An ``h × w`` grid of continuous ``latent_dim`` vectors."""
        return TokenSpec(content=ContinuousContent(self.cfg.latent_dim), shape=self.grid_shape())

    def to_positions(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, h, w]`` → position-major ``[B, h, w, C]``."""
        self._check_latents(latents)
        return latents.permute(0, 2, 3, 1)

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """``[B, h, w, C]`` → the latents ``[B, C, h, w]`` that :meth:`decode` takes."""
        return positions.permute(0, 3, 1, 2)

    def ptq_layout(self, image_size: int | None = None) -> TokenLayout:
        """Grid layout of the quantised ids: each position holds ``latent_dim`` ids of ``ptq_levels`` values."""
        content = DiscreteContent((self.cfg.ptq_levels,) * self.cfg.latent_dim)
        return TokenLayout.grid(self.grid_shape(image_size), content=content)

    # ---- continuous tokens -------------------------------------------------------------------
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log-variance of q(z | images), each ``[B, latent_dim, h, w]``."""
        check_images(images, size_multiple=self.cfg.downsample)
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, images: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images → latents ``[B, latent_dim, H/f, W/f]``: the posterior mean, or a draw with ``sample=True``."""
        mean, logvar = self.posterior(images)
        if not sample:
            return mean
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (or None), got {type(generator).__name__}")
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * noise

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, latent_dim, h, w]`` (the ``grid_shape()`` grid) → images ``[B, 3, h*f, w*f]`` clamped to [-1, 1]."""
        self._check_latents(latents)
        self.check_grid(latents.shape[2:], name="latents")
        return self.decoder(latents).clamp(-1, 1)

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction of a posterior sample (the mean in eval mode) + ``kl_weight``·KL, and logs."""
        mean, logvar = self.posterior(images)
        latents = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
        recon = self.decoder(latents)
        rec = reconstruction_loss(recon, images, self.cfg.rec_loss)
        kl = gaussian_kl(mean, logvar)
        mse = (recon.detach().clamp(-1, 1) - images).pow(2).mean().item()
        logs = {
            "rec": rec.item(),
            "kl": kl.item(),
            "psnr": float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item(),
            "latent_std": mean.detach().std().item(),
        }
        return rec + self.cfg.kl_weight * kl, logs

    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            got = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise TypeError(f"latents must be a float tensor [B, {self.cfg.latent_dim}, h, w], got {got}")
        if latents.dim() != 4 or latents.shape[1] != self.cfg.latent_dim:
            raise ValueError(f"latents must have shape [B, {self.cfg.latent_dim}, h, w], got {tuple(latents.shape)}")

    # ---- post-training quantisation (TokenBridge) --------------------------------------------
    @torch.no_grad()
    def fit_quantizer(self, latents: torch.Tensor) -> None:
        """Set each channel's range to ``mean ± ptq_sigma·std`` of ``latents [N, latent_dim, h, w]``, within min / max."""
        self._check_latents(latents)
        per_channel_CN = latents.detach().transpose(0, 1).reshape(self.cfg.latent_dim, -1).float()
        if per_channel_CN.shape[1] < 2:
            raise ValueError("fit_quantizer needs at least two latent positions to estimate a range")
        mean_C, std_C = per_channel_CN.mean(dim=1), per_channel_CN.std(dim=1)
        low_C = torch.maximum(mean_C - self.cfg.ptq_sigma * std_C, per_channel_CN.min(dim=1).values)
        high_C = torch.minimum(mean_C + self.cfg.ptq_sigma * std_C, per_channel_CN.max(dim=1).values)
        if bool((high_C <= low_C).any()):
            raise ValueError("fit_quantizer: a latent channel is constant over the sample; encode more varied images")
        self.ptq_low.copy_(low_C)
        self.ptq_high.copy_(high_C)
        self.ptq_fitted.fill_(True)

    def _bins(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.ptq_fitted):
            raise RuntimeError("the post-training quantiser is not fitted: call fit_quantizer(tok.encode(images)) first")
        width_C = (self.ptq_high - self.ptq_low) / self.cfg.ptq_levels
        return self.ptq_low.view(1, -1, 1, 1), width_C.view(1, -1, 1, 1)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, latent_dim, h, w]`` → ids ``[B, h, w, latent_dim]`` in ``[0, ptq_levels)``; out-of-range values clip."""
        self._check_latents(latents)
        low, width = self._bins()
        ids_BChw = torch.floor((latents - low) / width).clamp(0, self.cfg.ptq_levels - 1).long()
        return ids_BChw.permute(0, 2, 3, 1)

    def dequantize(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w, latent_dim]`` → latents ``[B, latent_dim, h, w]`` at the bin centres."""
        check_ids_in_range(ids, self.cfg.ptq_levels)
        if ids.dim() != 4 or ids.shape[-1] != self.cfg.latent_dim:
            raise ValueError(f"ids must have shape [B, h, w, {self.cfg.latent_dim}] (one id per latent channel), got {tuple(ids.shape)}")
        low, width = self._bins()
        return low + (ids.permute(0, 3, 1, 2).to(width.dtype) + 0.5) * width
