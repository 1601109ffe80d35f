"""Condensed clip tokens (TokensGen style): a clip's latent frames resampled into k 1D tokens, any prefix decodes.

A long video is planned clip by clip: a generator draws a few coarse-to-fine tokens per clip instead of the
clip's whole latent grid. The tokens condense the latents of a **frozen, trained**
:class:`~tokenizers_visual.video.CausalVideoTokenizer` with a continuous (``bottleneck: kl``) latent — the
*base*, held as the submodule ``base`` and saved with the condensed tokenizer, so a saved folder loads alone.

- Encoder: the base's posterior means ``[B, C, t, h, w]`` (no gradient) become ``t·h·w`` patch tokens (a
  linear ``C → dim`` plus a fixed sin-cos table over ``(latent frame, h·w position)``, :func:`.flex._sincos_2d`)
  followed by ``num_tokens`` (N) learned registers. Attention follows FlexTok's causal register mask
  (:mod:`.flex`): patches see patches, register ``r`` sees every patch and the registers ``<= r``, so the
  first k register outputs never depend on later registers. Each register output is projected to
  ``len(fsq_levels)`` channels and quantised with FSQ: one id in ``prod(fsq_levels)`` per token.
- Decoder: ``t·h·w`` learned queries (plus the same fixed table) and the N register slots (kept tokens' FSQ
  codes projected to ``dim``; dropped slots a learned "empty" token), full attention, a linear ``dim → C``
  per query: the base's latents, which the base decodes to the clip.
- Training (``loss``): nested dropout as in :mod:`.flex` — per clip a kept length k is drawn and slots
  ``>= k`` are emptied — and the MSE between decoded and base latents, in units of the base latents' std.

The condensed tokenizer describes clips of exactly the base's ``num_frames`` (its t·h·w queries are fixed).

Shapes: ``x_BTCHW`` clips in [-1, 1]; ``z_BCthw`` base latents; ``ids_BK`` token ids (K <= N); ``h_BLD``
transformer states (L = t·h·w patches then the registers).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ

from mmgen.hub import PretrainedModel, config_from_dict
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent, TokenLayout

from .checks import check_ids_in_range
from .flex import NESTED_DROPOUT_MODES, FlexImageTokenizer, NestedDropoutMixin, _Block, _sincos_2d, register_mask
from .video import CausalVideoConfig, CausalVideoTokenizer, check_videos

__all__ = ["CondensedVideoConfig", "CondensedVideoTokenizer"]


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class CondensedVideoConfig:
    """Size and training options of a :class:`CondensedVideoTokenizer`.

    The base is given as ``base``, the fields of its :class:`~tokenizers_visual.video.CausalVideoConfig`
    (so the architecture is rebuilt on load; its weights come with the condensed tokenizer's), or as
    ``base_path``, the ``save_pretrained`` folder of a trained base (what a training preset names): the
    tokenizer then loads the base from there and records the base's config in ``base`` and ``None`` in
    ``base_path``, so its own saved folder never needs the base folder again. Exactly one of the two is given.
    The base must be continuous (``bottleneck: kl``).

    ``nested_dropout`` as in :class:`~tokenizers_visual.flex.FlexImageTokenizerConfig`: ``"pow2"`` draws the
    kept length from {1, 2, 4, ..., N} (N a power of two), ``"uniform"`` from 1..N, ``"none"`` keeps all N.
    """

    base: dict[str, Any] = field(default_factory=dict)
    base_path: str | None = None
    num_tokens: int = 16
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    dim: int = 128
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    nested_dropout: str = "pow2"

    def __post_init__(self) -> None:
        for name in ("num_tokens", "dim", "enc_layers", "dec_layers", "heads"):
            _positive_int(name, getattr(self, name))
        levels = self.fsq_levels
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 3 for v in levels)):
            raise ValueError(f"fsq_levels must be a non-empty list of ints >= 3, got {self.fsq_levels!r}")
        self.fsq_levels = list(levels)
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a number > 0, got {self.mlp_ratio!r}")
        if self.nested_dropout not in NESTED_DROPOUT_MODES:
            raise ValueError(f"nested_dropout must be one of {NESTED_DROPOUT_MODES}, got {self.nested_dropout!r}")
        if self.nested_dropout == "pow2" and self.num_tokens & (self.num_tokens - 1):
            raise ValueError(f"nested_dropout='pow2' needs num_tokens to be a power of two, got {self.num_tokens}")
        if self.base_path is not None and (not isinstance(self.base_path, str) or not self.base_path):
            raise ValueError(f"base_path must be the folder of a saved CausalVideoTokenizer (a string), got {self.base_path!r}")
        if not isinstance(self.base, dict):
            raise ValueError(f"base must be a mapping of CausalVideoConfig fields, got {type(self.base).__name__}")
        if self.base and self.base_path is not None:
            raise ValueError("base and base_path are both given: give the base's config (base) or its saved folder "
                             "(base_path), not both")
        if not self.base and self.base_path is None:
            raise ValueError("base: a CondensedVideoTokenizer condenses the latents of a trained CausalVideoTokenizer; give "
                             "its saved folder as base_path, or its config fields as base")
        if self.base:
            self.base = dataclasses.asdict(self.base_config())  # checked, with every field written out

    def base_config(self) -> CausalVideoConfig:
        """The base's :class:`CausalVideoConfig` (from ``base``), checked to be continuous."""
        try:
            config = config_from_dict(CausalVideoConfig, self.base, source="base")
        except (TypeError, ValueError) as err:
            raise ValueError(f"base: {err}") from err
        _require_continuous(config.bottleneck)
        return config


def _require_continuous(bottleneck: str) -> None:
    if bottleneck != "kl":
        raise ValueError(f"base: the condensed tokenizer resamples continuous latents, so the base must have "
                         f"bottleneck: kl, got bottleneck {bottleneck!r} (a discrete base)")


def _load_base(path: str) -> CausalVideoTokenizer:
    try:
        return CausalVideoTokenizer.from_pretrained(path)
    except ValueError as err:
        raise ValueError(f"base_path: {err}") from err


def _sincos_thw(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed position table ``[t·h·w, dim]`` in ``(t, h, w)`` order: flex's 2D sin-cos over (latent frame, h·w index)."""
    side = max(t, h * w)
    return _sincos_2d(side, dim).view(side, side, dim)[:t, : h * w].reshape(t * h * w, dim)


class CondensedVideoTokenizer(NestedDropoutMixin, PretrainedModel):
    """Clips ``[B, T, 3, H, W]`` (T the base's ``num_frames``) ↔ 1D ids ``[B, k]``, any ``1 <= k <= max_tokens``.

    Build one around a trained base with :meth:`from_base`, or from a config naming the base's folder
    (``base_path``). The base stays frozen and in eval mode (see the module docstring).
    """

    config_class = CondensedVideoConfig
    modality = "video"

    def __init__(self, config: CondensedVideoConfig | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = config_from_dict(CondensedVideoConfig, config, source=type(self).__name__)
        base = None
        if isinstance(config, CondensedVideoConfig) and config.base_path is not None:
            # Load the base now and record its config instead of the path: save_pretrained then writes a folder
            # that rebuilds the base's architecture and takes its weights from this model's own safetensors.
            base = _load_base(config.base_path)
            _require_continuous(base.cfg.bottleneck)
            config = dataclasses.replace(config, base=dataclasses.asdict(base.cfg), base_path=None)
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.base = CausalVideoTokenizer(cfg.base_config()) if base is None else base
        self.base.eval().requires_grad_(False)
        t, h, w = self.base.grid_shape()
        self.latent_grid = (t, h, w)
        channels, code_dim, num_patches = self.base.cfg.latent_dim, len(cfg.fsq_levels), t * h * w
        # encoder
        self.patch_embed = nn.Linear(channels, cfg.dim)
        self.registers = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.encoder = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(cfg.dim)
        self.to_code = nn.Linear(cfg.dim, code_dim)
        # FSQ only has buffers, built with .item(): build it on the CPU when models are built on the meta device
        on_meta = torch.empty(0).device.type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            self.fsq = FSQ(levels=cfg.fsq_levels)
        # decoder
        self.from_code = nn.Linear(code_dim, cfg.dim)
        self.dec_register_pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.dim))
        self.empty_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.queries = nn.Parameter(torch.zeros(1, num_patches, cfg.dim))  # added to the fixed table
        self.decoder = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(cfg.dim)
        self.to_latent = nn.Linear(cfg.dim, channels)
        for name, module in self.named_children():
            if name != "base":  # the base keeps its (trained) weights
                module.apply(FlexImageTokenizer._init_weights)
        # as flex: register-like tables at unit scale, FSQ's input small where its straight-through gradient lives
        for param in (self.registers, self.dec_register_pos, self.empty_token):
            nn.init.trunc_normal_(param, std=0.7)
        nn.init.trunc_normal_(self.to_code.weight, std=0.02)

    @classmethod
    def from_base(cls, base_tokenizer: CausalVideoTokenizer, **fields: Any) -> CondensedVideoTokenizer:
        """A new condensed tokenizer around ``base_tokenizer`` (a trained, continuous CausalVideoTokenizer).

        Its config and weights are copied (the given module is left as it is); ``fields`` are the other
        :class:`CondensedVideoConfig` fields (num_tokens, fsq_levels, dim, ...).
        """
        if not isinstance(base_tokenizer, CausalVideoTokenizer):
            raise TypeError(f"base_tokenizer must be a CausalVideoTokenizer, got {type(base_tokenizer).__name__}")
        given = sorted({"base", "base_path"} & set(fields))
        if given:
            raise TypeError(f"from_base takes the base as base_tokenizer; leave out {given}")
        model = cls(CondensedVideoConfig(base=dataclasses.asdict(base_tokenizer.cfg), **fields))
        model.base.load_state_dict(base_tokenizer.state_dict())
        return model.to(base_tokenizer.device)

    @property
    def base(self) -> CausalVideoTokenizer:
        """The frozen base tokenizer (the submodule; the config's ``base`` is its config dict, ``self.cfg.base``).

        diffusers exposes config keys as attributes ahead of submodules (``ModelMixin.__getattr__``), so
        without this property ``self.base`` would be the config dict; submodule registration is unchanged.
        """
        return self._modules["base"]

    def train(self, mode: bool = True) -> CondensedVideoTokenizer:
        """Train / eval mode for the condensed layers; the frozen base always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    # ---- public description ------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return int(self.fsq.codebook_size)

    @property
    def max_tokens(self) -> int:
        return self.cfg.num_tokens

    @property
    def num_frames(self) -> int:
        """Frames of the clips this tokenizer encodes and decodes (the base's configured clip length)."""
        return self.base.cfg.num_frames

    def layout(self, *, num_tokens: int | None = None) -> TokenLayout:
        """The tokens of one clip: a causal 1D sequence of ``num_tokens`` (default N) single-codebook ids."""
        k = self._check_num_tokens(num_tokens)
        return TokenLayout.sequence(k, content=DiscreteContent((self.codebook_size,)))

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    def token_spec(self) -> TokenSpec:
        """A 1D sequence of N ids per clip, coarse to fine: any prefix decodes."""
        return TokenSpec(content=DiscreteContent((self.codebook_size,)), shape=(self.max_tokens,), prefix_decodable=True)

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, k]`` are already position-major."""
        return ids

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    # ---- encode / decode ---------------------------------------------------------------------
    def encode(self, videos: object, *, num_tokens: int | None = None) -> torch.Tensor:
        """Clips ``[B, T, 3, H, W]`` → ids ``[B, k]`` (long): exactly the first k ids of the full encoding."""
        k = self._check_num_tokens(num_tokens)
        _, ids_BN = self._quantize(self._encode_latents(self.base_latents(videos)))
        return ids_BN[:, :k]

    def decode_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, k]`` with ``1 <= k <= N`` → the base's latents ``[B, C, t, h, w]``."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids must have shape [B, k] with 1 <= k <= {self.max_tokens}, got {got}")
        self._check_num_tokens(ids.shape[1], name="ids length k")
        check_ids_in_range(ids, self.codebook_size)
        codes_BKC = self.fsq.indices_to_codes(ids.long()).to(self.dtype)
        return self._decode_codes(codes_BKC)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, k]`` with ``1 <= k <= N`` → clips ``[B, T, 3, H, W]`` in [-1, 1] (through the base's decoder)."""
        return self.base.decode(self.decode_latents(ids))

    def base_latents(self, videos: object) -> torch.Tensor:
        """The base's posterior means ``[B, C, t, h, w]`` of clips of ``num_frames`` frames (no gradient)."""
        x_BTCHW = check_videos(videos, image_size=self.base.cfg.image_size, temporal=self.base.cfg.temporal_downsample)
        if x_BTCHW.shape[1] != self.num_frames:
            raise ValueError(f"videos: this tokenizer condenses clips of exactly {self.num_frames} frames (its base's "
                             f"num_frames), got {x_BTCHW.shape[1]}")
        return self.base.encode(x_BTCHW.to(self.dtype))

    # ---- training ----------------------------------------------------------------------------
    def loss(self, videos: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE (in units of the base latents' std over the batch) of the latents decoded from a nested-dropout prefix."""
        z_BCthw = self.base_latents(videos)
        codes_BNC, ids_BN = self._quantize(self._encode_latents(z_BCthw))
        keep_B = self.sample_keep_lengths(z_BCthw.shape[0], device=z_BCthw.device)
        rec_BCthw = self._decode_codes(codes_BNC, keep_B=keep_B)
        scale = z_BCthw.std().clamp_min(1e-6) if z_BCthw.numel() > 1 else z_BCthw.new_ones(())
        rec = ((rec_BCthw - z_BCthw) / scale).pow(2).mean()
        logs = {"rec": rec.item(), "usage": torch.unique(ids_BN).numel() / self.codebook_size,
                "keep_mean": keep_B.float().mean().item()}
        return rec, logs

    # ---- internals ---------------------------------------------------------------------------
    def _positions(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed ``(t, h, w)`` table ``[1, t·h·w, dim]``, in ``like``'s dtype and device (not saved: it is fixed)."""
        return _sincos_thw(*self.latent_grid, self.cfg.dim).to(device=like.device, dtype=like.dtype).unsqueeze(0)

    def _encode_latents(self, z_BCthw: torch.Tensor) -> torch.Tensor:
        """All N registers' pre-FSQ outputs ``[B, N, len(fsq_levels)]`` (register r sees only registers <= r)."""
        patches_BLD = self.patch_embed(rearrange(z_BCthw.to(self.dtype), "b c t h w -> b (t h w) c"))
        h_BLD = torch.cat([patches_BLD + self._positions(patches_BLD),
                           self.registers.expand(z_BCthw.shape[0], -1, -1)], dim=1)
        allowed_LL = register_mask(patches_BLD.shape[1], self.max_tokens, device=h_BLD.device)
        for block in self.encoder:
            h_BLD = block(h_BLD, allowed_LL)
        return self.to_code(self.enc_norm(h_BLD[:, patches_BLD.shape[1]:]))

    def _decode_codes(self, codes_BKC: torch.Tensor, *, keep_B: torch.Tensor | None = None) -> torch.Tensor:
        """FSQ codes of a prefix (``K <= N``) → base latents; slots ``>= K`` (or ``>= keep_B[b]``) get the empty token."""
        batch = codes_BKC.shape[0]
        t, h, w = self.latent_grid
        registers_BND = self._register_slots(self.from_code(codes_BKC.to(self.dtype)), keep_B=keep_B)
        queries_BLD = (self.queries + self._positions(self.queries)).expand(batch, -1, -1)
        h_BLD = torch.cat([queries_BLD, registers_BND], dim=1)
        for block in self.decoder:
            h_BLD = block(h_BLD)
        latents_BLC = self.to_latent(self.dec_norm(h_BLD[:, : t * h * w]))
        return rearrange(latents_BLC, "b (t h w) c -> b c t h w", t=t, h=h, w=w)
