"""The shared GPT backbone: one Llama-style decoder for every tokenizer and every paradigm.

RMSNorm, SwiGLU, grouped-query attention, N-D rotary positions from the token layout, optional
QK-norm and AdaLN. Attention follows the layout's groups (causal is the case of one position per
group), runs through ``scaled_dot_product_attention`` and uses a static preallocated KV cache for
prefill and step decoding, whose filled length can be rolled back (speculative decoding) and whose
mask can be overridden (tree verification). The GPT knows nothing about classes, text or output
vocabularies: conditioning arrives as prefix embeddings (with a validity mask) or an AdaLN vector
from a :mod:`mmgen.conditioning` conditioner, and :mod:`mmgen.heads` turn ``hidden_states`` into
tokens. Its only vocabularies are the input tables for discrete tokens (none for continuous models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import CompiledStep
from .hub import PretrainedModel
from .rope import NDRotaryEmbedding, apply_rotary
from .tokens import ContinuousContent, DiscreteContent, TokenLayout, _check_real

__all__ = ["GPTConfig", "GPT", "KVCache", "split_guidance_batch"]

NORMS = ("rms", "layer")
FFNS = ("swiglu", "gelu")
MAX_LOG_SCALE = math.log(100.0)  # VAR's cap on the l2 attention's learned scale


@dataclass
class GPTConfig:
    """Size and options of a :class:`GPT`. ``None`` fields are derived in ``__post_init__``.

    ``vocab_size``: the input tables of discrete tokens, an int or one per codebook; 0 for a model
    whose inputs are only continuous (``input_dim``) or learned (``start_token``).
    ``codebook_embed_dim``: for many codebooks of one vocabulary whose ids mean the same thing in every
    slot (a latent frame's ids folded into one position), one shared table of this width, the slots'
    embeddings concatenated and projected to ``dim``; 0 (default): a ``dim``-wide table per codebook, summed.

    Switches for published GPT-2-style models (VAR; ``mmgen convert``), off by default: ``norm_type="layer"``
    (LayerNorm instead of RMSNorm; ``norm_affine=False`` drops its weights), ``ffn_type="gelu"`` (fc → GELU
    (tanh) → fc instead of SwiGLU), ``l2_attention`` (queries and keys l2-normalised, queries times a
    learned per-head scale ``exp(min(s_h, log 100))``, softmax scale 1), ``rope=False`` with
    ``absolute_positions`` (a learned embedding per sequence position) and ``num_levels`` embeddings (a
    learned table indexed by each position's first coordinate, VAR's scale index; positions with
    a negative or NaN first coordinate, the prefix, get none).
    """

    vocab_size: int | list[int] = 1024
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    ffn_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    coord_rank: int = 1
    qk_norm: bool = False
    max_seq_len: int = 2048
    attention_bias: bool = False
    mlp_bias: bool = False
    adaln_dim: int = 0
    input_dim: int = 0
    start_token: bool = False
    init_std: float = 0.02
    norm_type: str = "rms"
    norm_affine: bool = True
    ffn_type: str = "swiglu"
    l2_attention: bool = False
    rope: bool = True
    absolute_positions: bool = False
    num_levels: int = 0
    codebook_embed_dim: int = 0

    def __post_init__(self) -> None:
        sizes = list(self.vocab_size) if isinstance(self.vocab_size, (list, tuple)) else [self.vocab_size]
        no_tables = sizes == [0]
        if not sizes or (not no_tables and any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes)):
            raise ValueError(f"vocab_size must be a positive int, a list of them (one per codebook) or 0, got {self.vocab_size!r}")
        self.vocab_size = sizes[0] if len(sizes) == 1 else sizes
        for name in ("dim", "n_layers", "n_heads", "coord_rank", "max_seq_len"):
            _require_positive(name, getattr(self, name))
        for name in ("qk_norm", "attention_bias", "mlp_bias", "start_token", "norm_affine", "l2_attention", "rope",
                     "absolute_positions"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta"):
            _check_real(name, getattr(self, name), above=0)
        _check_real("init_std", self.init_std, at_least=0)
        if self.norm_type not in NORMS:
            raise ValueError(f"norm_type must be one of {NORMS}, got {self.norm_type!r}")
        if self.ffn_type not in FFNS:
            raise ValueError(f"ffn_type must be one of {FFNS}, got {self.ffn_type!r}")
        if not self.norm_affine and self.norm_type == "rms":
            raise ValueError("norm_affine=False is for norm_type='layer' (VAR's LayerNorm without weights)")
        if self.qk_norm and self.l2_attention:
            raise ValueError("qk_norm and l2_attention both normalise queries and keys; pick one")
        for name in ("adaln_dim", "input_dim", "num_levels", "codebook_embed_dim"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.codebook_embed_dim and (len(sizes) < 2 or len(set(sizes)) != 1):
            raise ValueError(f"codebook_embed_dim shares one table among codebooks of one size; it needs at least two "
                             f"codebooks of one vocabulary, got vocab_size={self.vocab_size!r}")
        if no_tables and not self.input_dim and not self.start_token:
            raise ValueError("vocab_size=0 needs another input: input_dim > 0 (continuous tokens) or start_token=True")
        self.n_kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        _require_positive("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads} (or set head_dim)")
            self.head_dim = self.dim // self.n_heads
        _require_positive("head_dim", self.head_dim)
        if self.ffn_dim is None:
            self.ffn_dim = 64 * math.ceil(8 * self.dim / 3 / 64)
        _require_positive("ffn_dim", self.ffn_dim)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Input vocabularies, one per codebook; empty for a model without token tables."""
        if self.vocab_size == 0:
            return ()
        return (self.vocab_size,) if isinstance(self.vocab_size, int) else tuple(self.vocab_size)


def _require_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def split_guidance_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a doubled CFG batch ``[2B, ...]`` (conditional rows first) into ``(cond, uncond)``."""
    if x.shape[0] % 2:
        raise ValueError(f"a classifier-free-guidance batch must be even (cond rows then uncond rows), got {x.shape[0]} rows")
    return x.chunk(2, dim=0)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_f = x.float()
        x_f = x_f * torch.rsqrt(x_f.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x_f.to(x.dtype)


def _norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm_type == "layer":
        return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
    return RMSNorm(cfg.dim, cfg.norm_eps)


class KVCache(nn.Module):
    """Static keys/values ``[B, n_kv_heads, max_seq_len, head_dim]`` filled position by position."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int, *, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k_BHTD: torch.Tensor, v_BHTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k_BHTD.shape[2]
        self.k[:, :, start:end] = k_BHTD
        self.v[:, :, start:end] = v_BHTD
        return self.k[:, :, :end], self.v[:, :, :end]

    def gather(self, start: int, index_Bm: torch.Tensor) -> None:
        """Positions ``start + index_Bm[b]`` of row b move to ``start .. start + m`` (a kept speculative path)."""
        B, H, _, Dh = self.k.shape
        where = (start + index_Bm).view(B, 1, -1, 1).expand(B, H, -1, Dh)
        m = index_Bm.shape[1]
        self.k[:, :, start:start + m] = self.k.gather(2, where)
        self.v[:, :, start:start + m] = self.v.gather(2, where)

    def forget(self, start: int, stop: int) -> None:
        """Zero positions ``start .. stop`` (as never written)."""
        self.k[:, :, start:stop] = 0
        self.v[:, :, start:stop] = 0

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (zeroed, as never written): a rollback."""
        self.forget(length, self.k.shape[2])


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, bias=cfg.attention_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.log_scale = nn.Parameter(torch.full((cfg.n_heads,), math.log(4.0))) if cfg.l2_attention else None
        self.softmax_scale = 1.0 if cfg.l2_attention else None
        self.cache: KVCache | None = None

    def _qkv(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values ``[B, heads, T, head_dim]``, normalised (QK-norm) and rotated."""
        B, T, _ = x_BTD.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.wqkv(x_BTD).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.log_scale is not None:
            scale_H11 = self.log_scale.clamp(max=MAX_LOG_SCALE).exp().view(-1, 1, 1)
            q, k = F.normalize(q, dim=-1) * scale_H11, F.normalize(k, dim=-1)
        if cos is None:
            return q, k, v
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x_BTD, cos, sin, mask, start_pos: int | None) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q, k, v = self._qkv(x_BTD, cos, sin)
        if start_pos is not None and self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)
        is_causal = isinstance(mask, str)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None if is_causal else mask,
            is_causal=is_causal,
            scale=self.softmax_scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def step(self, x_R1D: torch.Tensor, cos, sin, mask_R11L: torch.Tensor, position_1: torch.Tensor) -> torch.Tensor:
        """One position, static shapes: write its key/value at ``position_1`` and attend over the whole cache (masked)."""
        q, k, v = self._qkv(x_R1D, cos, sin)
        self.cache.k.index_copy_(2, position_1, k.to(self.cache.k.dtype))
        self.cache.v.index_copy_(2, position_1, v.to(self.cache.v.dtype))
        out = F.scaled_dot_product_attention(q, self.cache.k, self.cache.v, attn_mask=mask_R11L, scale=self.softmax_scale,
                                             enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(x_R1D.shape[0], 1, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    """SwiGLU with the gate and up projections fused into one matmul (``ffn_type="gelu"``: one projection, GELU)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.gelu = cfg.ffn_type == "gelu"
        self.w13 = nn.Linear(cfg.dim, (1 if self.gelu else 2) * cfg.ffn_dim, bias=cfg.mlp_bias)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu:
            return self.w2(F.gelu(self.w13(x), approximate="tanh"))
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = _norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = _norm(cfg)
        self.ffn = FeedForward(cfg)
        self.adaln = nn.Linear(cfg.adaln_dim, 6 * cfg.dim) if cfg.adaln_dim else None

    def forward(self, x, cos, sin, mask, start_pos, condition, *, attend=None) -> torch.Tensor:
        """``attend``: the attention call to use instead of ``self.attn`` (the static decode step's)."""
        attend = attend or (lambda h: self.attn(h, cos, sin, mask, start_pos))
        if self.adaln is None:
            x = x + attend(self.attn_norm(x))
            return x + self.ffn(self.ffn_norm(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(condition).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * attend(self.attn_norm(x) * (1 + scale1) + shift1)
        return x + gate2 * self.ffn(self.ffn_norm(x) * (1 + scale2) + shift2)


class GPT(PretrainedModel):
    """Llama-style decoder trunk over any token layout. Build with ``GPT(GPTConfig(...))``.

    ``gpt.hidden_states(gpt.embed_tokens(ids), layout=...)`` gives ``[B, T, dim]``; a head from
    :mod:`mmgen.heads` turns them into logits or latents, and :mod:`mmgen.generation` drives the
    KV-cached loop.
    """

    config_class = GPTConfig

    def __init__(self, config: GPTConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.content = DiscreteContent(cfg.codebook_sizes) if cfg.codebook_sizes else None
        if cfg.codebook_embed_dim:  # one table for every slot; the projection tells the slots apart
            self.tok_embeddings = nn.ModuleList([nn.Embedding(cfg.codebook_sizes[0], cfg.codebook_embed_dim)])
            self.codebook_proj = nn.Linear(len(cfg.codebook_sizes) * cfg.codebook_embed_dim, cfg.dim, bias=False)
        else:
            self.tok_embeddings = nn.ModuleList(nn.Embedding(v, cfg.dim) for v in cfg.codebook_sizes)
            self.codebook_proj = None
        self.input_proj = nn.Linear(cfg.input_dim, cfg.dim) if cfg.input_dim else None
        self.start_embedding = nn.Parameter(torch.zeros(cfg.dim)) if cfg.start_token else None
        self.rotary = NDRotaryEmbedding(head_dim=cfg.head_dim, coord_rank=cfg.coord_rank, theta=cfg.rope_theta) if cfg.rope else None
        self.position_embeddings = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.absolute_positions else None
        self.level_embeddings = nn.Embedding(cfg.num_levels, cfg.dim) if cfg.num_levels else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = _norm(cfg)
        self.final_adaln = nn.Linear(cfg.adaln_dim, 2 * cfg.dim) if cfg.adaln_dim else None
        self.apply(self._init_weights)
        if self.start_embedding is not None:
            nn.init.normal_(self.start_embedding, std=cfg.init_std)
        for module in [block.adaln for block in self.layers] + [self.final_adaln]:
            if module is not None:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- inputs ------------------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, T]`` (or ``[B, T, D]`` for D codebooks) → embeddings ``[B, T, dim]``, summed over codebooks
        (or, with ``codebook_embed_dim``, looked up in the shared table, concatenated and projected)."""
        if self.content is None:
            raise ValueError("token ids given, but the model was built with vocab_size=0 (no token tables)")
        self.content.check_ids(ids, name="input_ids")
        if self.codebook_proj is not None:
            return self.codebook_proj(self.tok_embeddings[0](ids).flatten(-2))
        if len(self.tok_embeddings) == 1:
            return self.tok_embeddings[0](ids)
        return sum(table(ids[..., d]) for d, table in enumerate(self.tok_embeddings))

    def embed_inputs(self, x_BTC: torch.Tensor) -> torch.Tensor:
        """Continuous inputs ``[B, T, input_dim]`` (VAR's next-scale features, continuous latents) → ``[B, T, dim]``."""
        if self.input_proj is None:
            raise ValueError("continuous inputs given, but the model was built with input_dim=0")
        if not isinstance(x_BTC, torch.Tensor) or x_BTC.dim() != 3 or x_BTC.shape[-1] != self.cfg.input_dim:
            got = tuple(x_BTC.shape) if isinstance(x_BTC, torch.Tensor) else type(x_BTC).__name__
            raise ValueError(f"continuous inputs must have shape [B, T, {self.cfg.input_dim}] (x_BTC), got {got}")
        return self.input_proj(x_BTC.to(self.input_proj.weight.dtype))

    def start_inputs(self, batch_size: int, length: int) -> torch.Tensor:
        """The learned start embedding ``[B, length, dim]``: the input of the first group, which has nothing before it."""
        if self.start_embedding is None:
            raise ValueError("a start input is needed, but the model was built with start_token=False")
        return self.start_embedding.view(1, 1, -1).expand(batch_size, length, -1)

    # ---- cache -------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, *, dtype: torch.dtype | None = None) -> None:
        """Preallocate the KV cache (for CFG pass the doubled batch: cond rows, then uncond rows)."""
        max_seq_len = self.cfg.max_seq_len if max_seq_len is None else max_seq_len
        _require_positive("batch_size", batch_size)
        _require_positive("max_seq_len", max_seq_len)
        if not 1 <= max_seq_len <= self.cfg.max_seq_len:
            raise ValueError(f"max_seq_len must be in 1..{self.cfg.max_seq_len}, got {max_seq_len}")
        dtype = dtype or self.dtype
        device = self.device
        pool = self.__dict__.setdefault("_cache_pool", {}) if self.decoding_compiled else {}
        key = (batch_size, max_seq_len, dtype, device)
        if key in pool:  # a compiled step's graph holds on to its cache tensors: reuse them, zeroed
            for block, cache in zip(self.layers, pool[key]):
                cache.truncate(0)
                block.attn.cache = cache
            return
        caches = [KVCache(batch_size, self.cfg.n_kv_heads, max_seq_len, self.cfg.head_dim, dtype=dtype, device=device)
                  for _ in self.layers]
        for block, cache in zip(self.layers, caches):
            block.attn.cache = cache
        if self.decoding_compiled:
            pool[key] = caches

    def clear_cache(self) -> None:
        for block in self.layers:
            block.attn.cache = None

    def rollback_cache(self, length: int) -> None:
        """Keep the first ``length`` cached positions and forget the rest (rejected speculative tokens)."""
        if self.cache_shape is None:
            raise ValueError("rollback_cache needs a KV cache; call setup_cache first")
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= self.cache_shape[1]:
            raise ValueError(f"length must be an int in 0..{self.cache_shape[1]} (the cache's positions), got {length!r}")
        for block in self.layers:
            block.attn.cache.truncate(length)

    def forget_cache(self, start: int, stop: int) -> None:
        """Zero cached positions ``start .. stop`` (the rejected part of a speculative tree; the rest was never written)."""
        for block in self.layers:
            block.attn.cache.forget(start, stop)

    def gather_cache(self, start: int, index_Bm: torch.Tensor) -> None:
        """Per row, move cached positions ``start + index_Bm[b, j]`` to ``start + j`` (a verified speculative path)."""
        if self.cache_shape is None:
            raise ValueError("gather_cache needs a KV cache; call setup_cache first")
        B, length = self.cache_shape
        if index_Bm.dim() != 2 or index_Bm.shape[0] != B or bool((index_Bm < 0).any()) or bool((start + index_Bm >= length).any()):
            raise ValueError(f"index_Bm must be [{B}, m] offsets with start + offset below the cache's {length} positions")
        index_Bm = index_Bm.to(self.layers[0].attn.cache.k.device)  # not self.device: diffusers walks the modules for it
        for block in self.layers:
            block.attn.cache.gather(start, index_Bm)

    @property
    def cache_shape(self) -> tuple[int, int] | None:
        """``(batch_size, max_seq_len)`` of the allocated KV cache, or None."""
        cache = self.layers[0].attn.cache
        return None if cache is None else (cache.k.shape[0], cache.k.shape[2])

    # ---- forward -----------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        layout: TokenLayout | None = None,
        start_pos: int | None = None,
        condition: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states ``[B, T, dim]`` for ids or embeddings at positions ``[start_pos, start_pos + T)``."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if isinstance(layout, TokenLayout) and isinstance(layout.content, ContinuousContent):
                raise ValueError("layout holds continuous tokens; pass inputs_embeds, not input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        return self.hidden_states(inputs_embeds, layout=layout, start_pos=start_pos, condition=condition,
                                  attention_mask=attention_mask)

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        *,
        layout: TokenLayout | None = None,
        start_pos: int | None = None,
        condition: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The trunk: embeddings ``[B, T, dim]`` → normalised hidden states ``[B, T, dim]``.

        ``layout`` describes the whole sequence (coordinates, groups, padding); this call takes its
        positions ``start_pos .. start_pos + T``. Without a layout the sequence is plain 1D causal.
        With ``start_pos`` set, keys and values go to the KV cache (see :meth:`setup_cache`).
        ``attention_mask`` (bool ``[B, T, start_pos + T]``, True = may attend) replaces the layout's
        group mask for these queries, e.g. to verify a tree of speculative tokens in one forward.
        """
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.cfg.dim:
            raise ValueError(f"inputs_embeds must have shape [B, T, {self.cfg.dim}], got {tuple(inputs_embeds.shape)}")
        B, T, _ = inputs_embeds.shape
        start = self._check_positions(B, T, layout, start_pos)
        self._check_condition(B, condition)
        if layout is None:
            coords = torch.arange(start, start + T, device=inputs_embeds.device, dtype=torch.float32)
            coords = coords.view(1, T, 1).expand(B, T, self.cfg.coord_rank)
        else:
            coords = layout.coords[:, start : start + T].to(inputs_embeds.device)
        if attention_mask is not None:  # the override replaces the layout's mask (which is then not built)
            mask = _check_mask_override(attention_mask, B, T, start).to(inputs_embeds.device)[:, None]
        elif layout is None:
            mask = _causal_mask(start, T, inputs_embeds.device)
        else:
            mask = layout.attention_mask(start, start + T)[:, None, :, : start + T].to(inputs_embeds.device)
        positions = torch.arange(start, start + T, device=inputs_embeds.device) if self.position_embeddings is not None else None
        x, cos, sin = self._placed(inputs_embeds, coords, positions)
        for block in self.layers:
            x = block(x, cos, sin, mask, start_pos, condition)
        x = self.norm(x)
        if self.final_adaln is not None:
            shift, scale = self.final_adaln(condition).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x

    def compile_decoding(self, enabled: bool = True, *, freeze: bool = False) -> None:
        """Run one-position cached steps through ``torch.compile`` (static shapes: the whole cache, masked).

        Each distinct shape (rows, cache length, mask rows) compiles once, on its first step (seconds).
        ``freeze=True`` lets inductor fold the weights into the graph (oneDNN-prepacked matmuls on CPU,
        several times faster in bfloat16): the weights must not change afterwards; call this again if
        they do. Results equal the eager step's up to float rounding.
        """
        self.__dict__["_compiled_step"] = CompiledStep(self._static_step, freeze=freeze) if enabled else None
        self.__dict__["_cache_pool"] = {}

    @property
    def decoding_compiled(self) -> bool:
        return self.__dict__.get("_compiled_step") is not None

    def decode_step(self, x_R1D: torch.Tensor, *, layout: TokenLayout, position: int,
                    condition: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``[R, 1, dim]`` of the one position ``position`` of ``layout``, written to the KV cache.

        The static-shape twin of ``hidden_states(x, layout=layout, start_pos=position)``: attention runs
        over every cached position with the layout's mask (not-yet-written positions are invalid there),
        so the graph does not change from step to step; compiled when :meth:`compile_decoding` asked for it.
        """
        B, T, _ = x_R1D.shape
        self._check_positions(B, T, layout, position)
        self._check_condition(B, condition)
        if T != 1 or layout.seq_len != self.cache_shape[1]:
            raise ValueError(f"decode_step takes one position and a layout as long as the cache ({self.cache_shape[1]}), "
                             f"got {T} positions and a layout of {layout.seq_len}")
        coords = layout.coords[:, position:position + 1].to(x_R1D.device)
        mask = layout.attention_mask(position, position + 1)[:, None].to(x_R1D.device)
        index = torch.tensor([position], device=x_R1D.device)
        step = self.__dict__.get("_compiled_step") or self._static_step
        return step(x_R1D, coords, mask, index, condition)

    def _placed(self, x_BTD: torch.Tensor, coords_BTC: torch.Tensor,
                positions_T: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Inputs with the learned position and level embeddings added, and the rotary ``(cos, sin)`` (None without RoPE).

        ``positions_T``: the sequence positions, needed (and given) only with ``absolute_positions``.
        """
        if self.position_embeddings is not None:
            x_BTD = x_BTD + self.position_embeddings(positions_T).to(x_BTD.dtype)
        if self.level_embeddings is not None:
            level_BT = coords_BTC[..., 0]
            placed_BT1 = (level_BT >= 0).unsqueeze(-1)  # False for the prefix's negative and NaN coordinates
            levels = self.level_embeddings(level_BT.nan_to_num(0).clamp(0, self.cfg.num_levels - 1).long())
            x_BTD = x_BTD + torch.where(placed_BT1, levels, 0).to(x_BTD.dtype)
        if self.rotary is None:
            return x_BTD, None, None
        cos, sin = self.rotary(coords_BTC)
        return x_BTD, cos, sin

    def _static_step(self, x: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor, index: torch.Tensor,
                     condition: torch.Tensor | None) -> torch.Tensor:
        x, cos, sin = self._placed(x, coords, index)
        for block in self.layers:
            x = block(x, cos, sin, mask, None, condition,
                      attend=lambda h, attn=block.attn: attn.step(h, cos, sin, mask, index))
        x = self.norm(x)
        if self.final_adaln is not None:
            shift, scale = self.final_adaln(condition).unsqueeze(1).chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x

    def _check_positions(self, B: int, T: int, layout: TokenLayout | None, start_pos: int | None) -> int:
        start = 0 if start_pos is None else start_pos
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start_pos must be >= 0 (an int; None for a whole sequence), got {start_pos!r}")
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence reaches position {start + T}, beyond max_seq_len={self.cfg.max_seq_len}")
        if start and self.cache_shape is None:
            raise ValueError(f"start_pos={start} needs the KV cache of the earlier positions; call setup_cache first")
        if start_pos is not None and self.cache_shape is not None:
            cache_batch, cache_len = self.cache_shape
            if B != cache_batch:
                raise ValueError(f"batch of {B} rows does not match the KV cache's batch_size={cache_batch}")
            if start + T > cache_len:
                raise ValueError(f"positions up to {start + T} do not fit the KV cache of {cache_len} positions")
        if layout is not None:
            if not isinstance(layout, TokenLayout):
                raise TypeError(f"layout must be a mmgen.TokenLayout or None, got {type(layout).__name__}")
            if layout.coord_rank != self.cfg.coord_rank:
                raise ValueError(f"layout has coordinate rank {layout.coord_rank}, the model expects coord_rank={self.cfg.coord_rank}")
            if isinstance(layout.content, DiscreteContent) and layout.content.codebook_sizes != self.cfg.codebook_sizes:
                raise ValueError(
                    f"layout holds codebooks {layout.content.codebook_sizes}, the model's input tables are {self.cfg.codebook_sizes}"
                )
            if layout.batch_size not in (1, B):
                raise ValueError(f"layout has batch size {layout.batch_size}, inputs have {B}")
            if layout.seq_len < start + T:
                raise ValueError(f"layout covers {layout.seq_len} positions, inputs reach {start + T}")
            if start_pos is None and layout.seq_len != T:
                raise ValueError(f"layout covers {layout.seq_len} positions but the inputs hold {T}; pass start_pos "
                                 "when the inputs are a chunk of the layout's sequence")
        return start

    def _check_condition(self, B: int, condition: torch.Tensor | None) -> None:
        if self.cfg.adaln_dim == 0:
            if condition is not None:
                raise ValueError("condition given, but the model was built with adaln_dim=0 (no AdaLN)")
            return
        if condition is None or tuple(condition.shape) != (B, self.cfg.adaln_dim):
            got = None if condition is None else tuple(condition.shape)
            raise ValueError(f"condition must have shape [{B}, {self.cfg.adaln_dim}] (AdaLN), got {got}")


def _check_mask_override(mask: torch.Tensor, B: int, T: int, start: int) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("attention_mask must be a bool tensor [B, T, start_pos + T]")
    if mask.dim() != 3 or mask.shape[0] not in (1, B) or tuple(mask.shape[1:]) != (T, start + T):
        raise ValueError(f"attention_mask must have shape [{B}, {T}, {start + T}], got {tuple(mask.shape)}")
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("attention_mask leaves a query with no key to attend to; every row needs one True")
    return mask


def _causal_mask(start: int, T: int, device: torch.device) -> torch.Tensor | str | None:
    """Mask for T new positions after ``start`` cached ones: "causal" when SDPA's flag is exact."""
    if T == 1:
        return None
    if start == 0:
        return "causal"
    rows = torch.arange(start, start + T, device=device).unsqueeze(1)
    return rows >= torch.arange(start + T, device=device).unsqueeze(0)
