"""TiTok's 1D image tokenizer ("An Image is Worth 32 Tokens"), as its published checkpoints compute it.

An image becomes N ids (32, 64 or 128 for TiTok-L32 / B64 / S128) over an l2-normalised codebook. The
encoder is a ViT over ``[class token, patches, N latent tokens]`` with learned absolute positions, a
LayerNorm before the blocks (``ln_pre``) and one on the latent outputs (``ln_post``), and full attention.
The decoder is a second ViT over ``[class token, one mask token per patch, N quantised tokens]``; each
patch output goes through a tanh MLP head to logits over the codes of MaskGIT's VQGAN, whose softmax
weights the VQGAN codebook into a latent grid that the VQGAN's conv decoder (:class:`MaskGITPixelDecoder`)
turns into pixels. This is TiTok's "stage 2" layout (``finetune_decoder=True``), the one all three
published ImageNet tokenizers use.

Why its own module rather than switches on :class:`~tokenizers_visual.flex.FlexImageTokenizer`: almost
every part differs (class tokens, learned positions, pre/post norms, a conv patch embedding, VQ instead
of FSQ, full instead of causal register attention, a second-stage pixel decoder, ids that are not
prefix-decodable), so the switches would outnumber the shared lines. Shared are the transformer block
(flex's ``_Block`` is exactly TiTok's ``ResidualAttentionBlock``) and the cosine codebook of
:mod:`.vq`.

Two quirks of the original are reproduced because the weights were trained with them: the encoder
reads its ``[N, width]`` latent outputs as if they were ``[width, N]`` (a reshape without a transpose,
TiTok's ``is_legacy`` layout) before projecting them to ``token_size``; and MaskGIT's residual blocks
that change width add ``nin_shortcut`` of the block's *output* rather than its input.

Images are ``[B, 3, S, S]`` in [-1, 1] here; TiTok works in [0, 1], so ``encode`` rescales on the way
in and ``decode`` clamps TiTok's output to [0, 1] and rescales it on the way out (``decode_raw`` gives
TiTok's unclamped output in its own scale).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent, TokenLayout

from .checks import check_ids_in_range, check_images
from .flex import _Block
from .ldm_conv import NORM_GROUPS
from .vq import CosineVectorQuantizer

__all__ = ["MaskGITPixelDecoder", "TiTokConfig", "TiTokTokenizer"]


@dataclass
class TiTokConfig:
    """Sizes of a :class:`TiTokTokenizer`; the defaults are TiTok-L32 (ImageNet 256).

    ``pixel_widths`` are the MaskGIT decoder's widths per resolution, highest resolution first
    (MaskGIT's ``hidden_channels * channel_mult``), so it upsamples ``2 ** (len(pixel_widths) - 1)`` times.
    """

    image_size: int = 256
    patch_size: int = 16
    num_latent_tokens: int = 32
    token_size: int = 12
    codebook_size: int = 4096
    enc_width: int = 1024
    enc_layers: int = 24
    enc_heads: int = 16
    dec_width: int = 1024
    dec_layers: int = 24
    dec_heads: int = 16
    mlp_ratio: float = 4.0
    pixel_codebook_size: int = 1024
    pixel_code_dim: int = 256
    pixel_widths: list[int] = field(default_factory=lambda: [128, 128, 256, 256, 512])
    pixel_res_blocks: int = 2
    commitment_beta: float = 0.25

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "num_latent_tokens", "token_size", "codebook_size", "enc_width",
                     "enc_layers", "enc_heads", "dec_width", "dec_layers", "dec_heads", "pixel_codebook_size",
                     "pixel_code_dim", "pixel_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        for width, heads in (("enc_width", "enc_heads"), ("dec_width", "dec_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width}={getattr(self, width)} must be divisible by {heads}={getattr(self, heads)}")
        widths = [int(w) for w in self.pixel_widths]
        if not widths or any(w < 1 or w % NORM_GROUPS for w in widths):
            raise ValueError(f"pixel_widths must be positive multiples of {NORM_GROUPS} (MaskGIT's group norms), "
                             f"got {self.pixel_widths!r}")
        self.pixel_widths = widths
        if self.grid_size * 2 ** (len(widths) - 1) != self.image_size:
            raise ValueError(f"the pixel decoder upsamples the {self.grid_size}x{self.grid_size} patch grid "
                             f"{2 ** (len(widths) - 1)} times ({len(widths)} pixel_widths), which does not give "
                             f"image_size={self.image_size}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)


class _MaskGITResBlock(nn.Module):
    """norm → SiLU → 3×3 conv (no bias), twice; MaskGIT's shortcut when widening is ``skip`` of the *output*."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _group_norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2, self.conv2 = _group_norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.skip = nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h_BCHW = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x_BCHW))))))
        return h_BCHW + (x_BCHW if self.skip is None else self.skip(h_BCHW))


class _UpLevel(nn.Module):
    """One resolution of the pixel decoder: residual blocks ``res.{j}``, then (above level 0) 2× nearest + 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, *, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.res = nn.ModuleList(_MaskGITResBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.upsample = nn.Conv2d(out_channels, out_channels, 3, padding=1) if upsample else None

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        for block in self.res:
            x_BCHW = block(x_BCHW)
        if self.upsample is None:
            return x_BCHW
        return self.upsample(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class MaskGITPixelDecoder(nn.Module):
    """MaskGIT's VQGAN decoder (no attention): latents ``[B, code_dim, h, w]`` → images ``[B, 3, h*f, w*f]``.

    ``levels.{i}`` works at ``H / 2**i`` and runs from the last to the first, as MaskGIT's ``up.{i}``.
    """

    def __init__(self, *, code_dim: int, widths: list[int], num_res_blocks: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(code_dim, widths[-1], 3, padding=1)
        self.mid = nn.ModuleList(_MaskGITResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks))
        inputs = [*widths[1:], widths[-1]]  # level i starts at level i+1's width (the last at its own)
        self.levels = nn.ModuleList(_UpLevel(inputs[i], widths[i], num_blocks=num_res_blocks, upsample=i > 0)
                                    for i in range(len(widths)))
        self.norm_out, self.conv_out = _group_norm(widths[0]), nn.Conv2d(widths[0], 3, 3, padding=1)

    def forward(self, z_BDhw: torch.Tensor) -> torch.Tensor:
        h_BCHW = self.conv_in(z_BDhw)
        for block in self.mid:
            h_BCHW = block(h_BCHW)
        for level in reversed(self.levels):
            h_BCHW = level(h_BCHW)
        return self.conv_out(F.silu(self.norm_out(h_BCHW)))


class _ViT(nn.Module):
    """TiTok's transformer over ``[class token, grid² patch slots, N latent slots]``: learned positions, ln_pre,
    pre-LN blocks, and ln_post (applied by the caller to the slots it reads)."""

    def __init__(self, *, width: int, layers: int, heads: int, mlp_ratio: float, grid_size: int, num_latent: int) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, width))
        self.patch_pos = nn.Parameter(torch.zeros(grid_size**2 + 1, width))  # row 0 is the class token's
        self.latent_pos = nn.Parameter(torch.zeros(num_latent, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio) for _ in range(layers))
        for param in (self.class_token, self.patch_pos, self.latent_pos):
            nn.init.normal_(param, std=width**-0.5)

    def forward(self, patches_BLD: torch.Tensor, latents_BND: torch.Tensor) -> torch.Tensor:
        batch = patches_BLD.shape[0]
        h_BLD = torch.cat([self.class_token.expand(batch, 1, -1), patches_BLD], dim=1) + self.patch_pos
        h_BLD = self.ln_pre(torch.cat([h_BLD, latents_BND + self.latent_pos], dim=1))
        for block in self.blocks:
            h_BLD = block(h_BLD)
        return h_BLD


class TiTokTokenizer(PretrainedModel):
    """Images ``[B, 3, S, S]`` in [-1, 1] ↔ ids ``[B, N]`` over ``codebook_size`` codes (see module docstring)."""

    config_class = TiTokConfig
    modality = "image"

    def __init__(self, config: TiTokConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        g, n = cfg.grid_size, cfg.num_latent_tokens
        # encoder
        self.patch_embed = nn.Conv2d(3, cfg.enc_width, cfg.patch_size, stride=cfg.patch_size)
        self.latent_tokens = nn.Parameter(cfg.enc_width**-0.5 * torch.randn(n, cfg.enc_width))
        self.encoder = _ViT(width=cfg.enc_width, layers=cfg.enc_layers, heads=cfg.enc_heads, mlp_ratio=cfg.mlp_ratio,
                            grid_size=g, num_latent=n)
        self.to_token = nn.Linear(cfg.enc_width, cfg.token_size)
        self.quantizer = CosineVectorQuantizer(codebook_size=cfg.codebook_size, dim=cfg.token_size)
        # decoder
        self.from_token = nn.Linear(cfg.token_size, cfg.dec_width)
        self.mask_token = nn.Parameter(cfg.dec_width**-0.5 * torch.randn(cfg.dec_width))
        self.decoder = _ViT(width=cfg.dec_width, layers=cfg.dec_layers, heads=cfg.dec_heads, mlp_ratio=cfg.mlp_ratio,
                            grid_size=g, num_latent=n)
        self.to_logits = nn.Sequential(nn.Linear(cfg.dec_width, 2 * cfg.dec_width), nn.Tanh(),
                                       nn.Linear(2 * cfg.dec_width, cfg.pixel_codebook_size))
        self.pixel_codebook = nn.Embedding(cfg.pixel_codebook_size, cfg.pixel_code_dim)
        self.pixel_decoder = MaskGITPixelDecoder(code_dim=cfg.pixel_code_dim, widths=cfg.pixel_widths,
                                                 num_res_blocks=cfg.pixel_res_blocks)

    # ---- public description ------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_latent_tokens

    def layout(self) -> TokenLayout:
        """The tokens of one image: a 1D sequence of N single-codebook ids."""
        return TokenLayout.sequence(self.num_tokens, content=DiscreteContent((self.codebook_size,)))

    def token_spec(self) -> TokenSpec:
        """N ids in a row; unlike FlexTok's, a prefix does not decode on its own (the decoder sees all N)."""
        return TokenSpec(content=DiscreteContent((self.codebook_size,)), shape=(self.num_tokens,))

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` are already position-major."""
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    # ---- encode / decode ---------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latents ``[B, N, token_size]`` (TiTok's encoder output, ``[B, T, 1, N]`` there)."""
        check_images(images, size=self.cfg.image_size)
        x01_BCHW = (images.to(self.dtype) + 1.0) / 2.0  # TiTok's pixels are in [0, 1]
        batch, width, n = images.shape[0], self.cfg.enc_width, self.num_tokens
        patches_BLD = self.patch_embed(x01_BCHW).flatten(2).transpose(1, 2)
        h_BLD = self.encoder(patches_BLD, self.latent_tokens.expand(batch, -1, -1))
        latents_BND = self.encoder.ln_post(h_BLD[:, 1 + self.cfg.grid_size**2:])
        # TiTok's legacy layout: the [N, width] outputs are read as [width, N] before the 1x1 projection
        return self.to_token(latents_BND.reshape(batch, width, n).transpose(1, 2))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] → ids ``[B, N]`` (long): the nearest code by cosine similarity."""
        z_BNT = self.encode_latents(images)
        return self.quantizer.nearest(z_BNT.transpose(1, 2).unsqueeze(2)).squeeze(1)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Quantised tokens ``[B, N, token_size]`` (unit-norm code vectors) of ids ``[B, N]``."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] != self.num_tokens:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must have shape [B, {self.num_tokens}], got {got}")
        check_ids_in_range(ids, self.codebook_size)
        return self.quantizer.codes(ids.long().unsqueeze(1)).squeeze(2).transpose(1, 2)

    def proxy_logits(self, codes_BNT: torch.Tensor) -> torch.Tensor:
        """The decoder's logits ``[B, pixel_codebook_size, g, g]`` over MaskGIT-VQGAN codes, one per patch."""
        batch, g = codes_BNT.shape[0], self.cfg.grid_size
        queries_BLD = self.mask_token.expand(batch, g * g, -1)
        h_BLD = self.decoder(queries_BLD, self.from_token(codes_BNT))
        logits_BLK = self.to_logits(self.decoder.ln_post(h_BLD[:, 1:1 + g * g]))
        return rearrange(logits_BLK, "b (h w) k -> b k h w", h=g, w=g)

    def pixels_from_logits(self, logits_BKhw: torch.Tensor) -> torch.Tensor:
        """TiTok's pixels (unclamped, [0, 1] scale): the softmax-weighted VQGAN codebook through the VQGAN decoder."""
        latents_BDhw = torch.einsum("bkhw,kd->bdhw", logits_BKhw.softmax(dim=1), self.pixel_codebook.weight)
        return self.pixel_decoder(latents_BDhw)

    def decode_raw(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` → TiTok's ``decode_tokens`` output as it is: unclamped, in TiTok's [0, 1] scale."""
        return self.pixels_from_logits(self.proxy_logits(self.codes(ids).to(self.dtype)))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, N]`` → images ``[B, 3, S, S]`` in [-1, 1] (TiTok's output clamped to [0, 1], as its demos do)."""
        return self.decode_raw(ids).clamp(0.0, 1.0) * 2.0 - 1.0

    # ---- training ----------------------------------------------------------------------------
    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Pixel MSE through straight-through codes plus codebook and weighted commitment terms (single stage)."""
        z_BT1N = self.encode_latents(images).transpose(1, 2).unsqueeze(2)
        zq_BT1N, ids_B1N, terms = self.quantizer(z_BT1N)
        rec_BCHW = self.pixels_from_logits(self.proxy_logits(zq_BT1N.squeeze(2).transpose(1, 2))) * 2.0 - 1.0
        rec = F.mse_loss(rec_BCHW, images.to(self.dtype))
        total = rec + terms["codebook"] + self.cfg.commitment_beta * terms["commit"]
        logs = {"rec": rec.item(), "codebook": terms["codebook"].item(), "commit": terms["commit"].item(),
                "usage": torch.unique(ids_B1N).numel() / self.codebook_size}
        return total, logs
