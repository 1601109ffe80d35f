"""1D flexible-length image tokenizer (FlexTok / TiTok): any prefix of the token sequence decodes.

The encoder is a ViT over image patches plus ``num_tokens`` (N) learned register tokens. Patches
attend only to patches; register ``r`` attends to every patch and to registers ``<= r``. So the
first k register outputs never depend on later registers, and ``encode(x, num_tokens=k)`` is
exactly the first k ids of ``encode(x)`` — a prefix is a self-contained description (FlexTok's
causal register mask). Each register output is projected to ``len(fsq_levels)`` channels and
quantised with FSQ (vector-quantize-pytorch), so a token is one id in ``prod(fsq_levels)``.

The decoder is a deterministic TiTok-style ViT: learned mask tokens for the patch grid plus the N
register slots (kept tokens' FSQ codes, dropped slots filled with a learned "empty" token), full
attention, and a linear head from each patch token to its pixels. Training uses FlexTok's nested
dropout: per image a length k is drawn and registers ``>= k`` are replaced by the empty token, so
the decoder learns to reconstruct from every prefix, coarse to fine.

Shapes: ``x_BCHW`` images in [-1, 1]; ``ids_BK`` token ids (K <= N); ``h_BLD`` transformer states.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ

from mmgen.hub import PretrainedModel
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent, TokenLayout

from .checks import check_ids_in_range, check_images

__all__ = ["NESTED_DROPOUT_MODES", "FlexImageTokenizer", "FlexImageTokenizerConfig"]

NESTED_DROPOUT_MODES = ("pow2", "uniform", "none")


@dataclass
class FlexImageTokenizerConfig:
    """Size and training options of a :class:`FlexImageTokenizer`.

    ``nested_dropout`` picks the training distribution of the kept length k: ``"pow2"`` draws
    k uniformly from {1, 2, 4, ..., N} (N must then be a power of two), ``"uniform"`` from 1..N,
    ``"none"`` always keeps all N tokens (a plain TiTok-style tokenizer).
    """

    image_size: int = 32
    patch_size: int = 4
    num_tokens: int = 32
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    enc_dim: int = 128
    enc_layers: int = 4
    enc_heads: int = 4
    dec_dim: int = 128
    dec_layers: int = 4
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    nested_dropout: str = "pow2"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "num_tokens", "enc_dim", "enc_layers", "enc_heads",
                     "dec_dim", "dec_layers", "dec_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        levels = list(self.fsq_levels)
        if not levels or any(not isinstance(l, int) or isinstance(l, bool) or l < 3 for l in levels):
            raise ValueError(f"fsq_levels must be a non-empty list of ints >= 3, got {self.fsq_levels!r}")
        self.fsq_levels = levels
        for dim, heads in (("enc_dim", "enc_heads"), ("dec_dim", "dec_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(f"{dim}={getattr(self, dim)} must be divisible by {heads}={getattr(self, heads)}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.nested_dropout not in NESTED_DROPOUT_MODES:
            raise ValueError(f"nested_dropout must be one of {NESTED_DROPOUT_MODES}, got {self.nested_dropout!r}")
        if self.nested_dropout == "pow2" and self.num_tokens & (self.num_tokens - 1):
            raise ValueError(f"nested_dropout='pow2' needs num_tokens to be a power of two, got {self.num_tokens}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def _sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position table ``[grid*grid, dim]`` (rows then columns, MAE-style frequencies)."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    axis = torch.arange(grid, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    angles_y, angles_x = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    table = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return F.pad(table, (0, dim - table.shape[1]))


class _Block(nn.Module):
    """Pre-LN transformer block; ``allowed_LL`` (True = may attend) restricts attention when given."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h_BLD: torch.Tensor, allowed_LL: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(h_BLD)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed_LL)
        h_BLD = h_BLD + self.proj(rearrange(attn, "b h l d -> b l (h d)"))
        return h_BLD + self.mlp(self.norm2(h_BLD))


def register_mask(num_patches: int, num_registers: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """FlexTok's encoder mask (True = may attend): patches see patches; register r sees every patch and registers <= r."""
    total = num_patches + num_registers
    allowed = torch.zeros(total, total, dtype=torch.bool, device=device)
    allowed[:, :num_patches] = True
    allowed[num_patches:, num_patches:] = torch.ones(num_registers, num_registers, dtype=torch.bool, device=device).tril()
    return allowed


class NestedDropoutMixin:
    """What register tokenizers (flex, condensed video) share: FSQ ids of the registers, nested-dropout prefix
    lengths and the decoder's register slots. Needs ``cfg.nested_dropout``, ``max_tokens``, ``fsq``,
    ``empty_token`` and ``dec_register_pos``."""

    cfg: Any
    max_tokens: int
    fsq: nn.Module
    empty_token: nn.Parameter
    dec_register_pos: nn.Parameter

    def _quantize(self, latents_BKC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes_BKC, ids_BK = self.fsq(latents_BKC)
        return codes_BKC, ids_BK.long()

    def _register_slots(self, tokens_BKD: torch.Tensor, *, keep_B: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's N register slots plus their positions: a prefix's tokens, then the empty token (also from
        ``keep_B[b]`` on, for nested dropout)."""
        batch, k, _ = tokens_BKD.shape
        n = self.max_tokens
        registers_BND = self.empty_token.expand(batch, n, -1).clone()
        registers_BND[:, :k] = tokens_BKD
        if keep_B is not None:
            kept_BN = torch.arange(n, device=tokens_BKD.device).unsqueeze(0) < keep_B.unsqueeze(1)
            registers_BND = torch.where(kept_BN.unsqueeze(-1), registers_BND, self.empty_token)
        return registers_BND + self.dec_register_pos

    def sample_keep_lengths(self, batch_size: int, *, device: torch.device | str | None = None) -> torch.Tensor:
        """Nested dropout: kept prefix lengths ``[B]`` drawn from the configured distribution (global RNG)."""
        n = self.max_tokens
        if self.cfg.nested_dropout == "none":
            return torch.full((batch_size,), n, dtype=torch.long, device=device)
        if self.cfg.nested_dropout == "uniform":
            return torch.randint(1, n + 1, (batch_size,), device=device)
        exponents = torch.randint(0, n.bit_length(), (batch_size,), device=device)
        return 2**exponents

    def _check_num_tokens(self, num_tokens: int | None, *, name: str = "num_tokens") -> int:
        if num_tokens is None:
            return self.max_tokens
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or not 1 <= num_tokens <= self.max_tokens:
            raise ValueError(
                f"{name} must be an int in [1, {self.max_tokens}] (the tokenizer's max_tokens), got {num_tokens!r}"
            )
        return num_tokens


class FlexImageTokenizer(NestedDropoutMixin, PretrainedModel):
    """Images ``[B, 3, S, S]`` in [-1, 1] ↔ 1D ids ``[B, k]``, any ``1 <= k <= max_tokens`` (see module docstring)."""

    config_class = FlexImageTokenizerConfig

    def __init__(self, config: FlexImageTokenizerConfig) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        patch_dim = 3 * cfg.patch_size**2
        code_dim = len(cfg.fsq_levels)
        # encoder
        self.patch_embed = nn.Linear(patch_dim, cfg.enc_dim)
        self.to_pixels = nn.Linear(cfg.dec_dim, patch_dim)  # the decoder's head, the mirror of patch_embed
        self.enc_patch_pos = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.enc_dim))
        self.registers = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.enc_dim))
        self.encoder = nn.ModuleList(_Block(cfg.enc_dim, cfg.enc_heads, cfg.mlp_ratio) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(cfg.enc_dim)
        self.to_code = nn.Linear(cfg.enc_dim, code_dim)
        # FSQ has no parameters, only buffers derived from the levels, and calls .item() while building them,
        # which fails on the meta device that checkpoint validation builds models on: build it on the CPU there.
        on_meta = torch.empty(0).device.type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            self.fsq = FSQ(levels=cfg.fsq_levels)
        # decoder
        self.from_code = nn.Linear(code_dim, cfg.dec_dim)
        self.dec_register_pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dec_dim))
        self.empty_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_dim))
        self.patch_queries = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.dec_dim))
        self.decoder = nn.ModuleList(_Block(cfg.dec_dim, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(cfg.dec_dim)
        self.apply(self._init_weights)
        # Position-like tables start at unit scale (2D sin-cos for patches): background patches are
        # identical and registers start alike, so without this, position and register identity are
        # drowned by content and the model sits at the mean image for hundreds of steps.
        for param in (self.registers, self.dec_register_pos, self.empty_token):
            nn.init.trunc_normal_(param, std=0.7)
        # FSQ bounds latents with tanh: start them small, where its straight-through gradient is alive.
        nn.init.trunc_normal_(self.to_code.weight, std=0.02)
        with torch.no_grad():
            self.enc_patch_pos.copy_(_sincos_2d(cfg.grid_size, cfg.enc_dim).unsqueeze(0))
            self.patch_queries.copy_(_sincos_2d(cfg.grid_size, cfg.dec_dim).unsqueeze(0))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """LeCun-normal linears: the usual ViT 0.02 keeps attention uniform for hundreds of CPU-scale steps."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=module.in_features**-0.5)
            nn.init.zeros_(module.bias)

    # ---- public description ------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return int(self.fsq.codebook_size)

    @property
    def max_tokens(self) -> int:
        return self.cfg.num_tokens

    def layout(self, *, num_tokens: int | None = None) -> TokenLayout:
        """The tokens of one image: a causal 1D sequence of ``num_tokens`` (default N) single-codebook ids."""
        k = self._check_num_tokens(num_tokens)
        return TokenLayout.sequence(k, content=DiscreteContent((self.codebook_size,)))

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    modality = "image"

    def token_spec(self) -> TokenSpec:
        """A 1D sequence of N ids, coarse to fine: any prefix decodes."""
        return TokenSpec(content=DiscreteContent((self.codebook_size,)), shape=(self.max_tokens,), prefix_decodable=True)

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, k]`` are already position-major."""
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    # ---- encode / decode ---------------------------------------------------------------------
    def encode(self, images: torch.Tensor, *, num_tokens: int | None = None) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` → ids ``[B, k]`` (long); the first k ids of the full encoding."""
        k = self._check_num_tokens(num_tokens)
        _, ids_BK = self._quantize(self._encode_latents(self._check_input(images), k))
        return ids_BK

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, k]`` with ``1 <= k <= N`` → images ``[B, 3, S, S]`` in [-1, 1]."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must have shape [B, k] with 1 <= k <= {self.max_tokens}, got {got}")
        self._check_num_tokens(ids.shape[1], name="ids length k")
        check_ids_in_range(ids, self.codebook_size)
        codes_BKC = self.fsq.indices_to_codes(ids.long()).to(self.dtype)
        return self._decode_codes(codes_BKC).clamp(-1.0, 1.0)

    # ---- training ----------------------------------------------------------------------------
    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Pixel MSE of reconstructions from a nested-dropout prefix (k drawn per image)."""
        x_BCHW = self._check_input(images)
        codes_BNC, ids_BN = self._quantize(self._encode_latents(x_BCHW, self.max_tokens))
        keep_B = self.sample_keep_lengths(x_BCHW.shape[0], device=x_BCHW.device)
        rec_BCHW = self._decode_codes(codes_BNC, keep_B=keep_B)
        rec = F.mse_loss(rec_BCHW, x_BCHW)
        used = torch.unique(ids_BN).numel()
        logs = {"rec": rec.item(), "usage": used / self.codebook_size, "keep_mean": keep_B.float().mean().item()}
        return rec, logs

    # ---- internals ---------------------------------------------------------------------------
    def _check_input(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, size_multiple=self.cfg.patch_size, size=self.cfg.image_size)
        return images.to(self.dtype)

    def _encode_latents(self, x_BCHW: torch.Tensor, k: int) -> torch.Tensor:
        """Run the encoder with the first k registers only (exact: registers are causal) → ``[B, k, C]``."""
        p, num_patches = self.cfg.patch_size, self.cfg.num_patches
        patches_BLD = self.patch_embed(rearrange(x_BCHW, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p))
        h_BLD = torch.cat(
            [patches_BLD + self.enc_patch_pos, self.registers[:, :k].expand(x_BCHW.shape[0], -1, -1)], dim=1
        )
        allowed_LL = register_mask(num_patches, k, device=x_BCHW.device)
        for block in self.encoder:
            h_BLD = block(h_BLD, allowed_LL)
        return self.to_code(self.enc_norm(h_BLD[:, num_patches:]))

    def _decode_codes(self, codes_BKC: torch.Tensor, *, keep_B: torch.Tensor | None = None) -> torch.Tensor:
        """FSQ codes of a prefix (``K <= N``) → images; slots ``>= K`` (or ``>= keep_B[b]``) get the empty token."""
        batch = codes_BKC.shape[0]
        g, p = self.cfg.grid_size, self.cfg.patch_size
        registers_BND = self._register_slots(self.from_code(codes_BKC), keep_B=keep_B)
        h_BLD = torch.cat([self.patch_queries.expand(batch, -1, -1), registers_BND], dim=1)
        for block in self.decoder:
            h_BLD = block(h_BLD)
        pixels = self.to_pixels(self.dec_norm(h_BLD[:, : self.cfg.num_patches]))
        return rearrange(pixels, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=g, w=g, p1=p, p2=p)
