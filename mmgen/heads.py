"""Heads: what turns the GPT's hidden states into tokens, and drawn tokens back into GPT inputs.

Every head implements one interface (:class:`Head`), so the engine and the trainer never ask which
kind of token a model emits:

- ``loss(hidden_BLD, targets, mask=...)``: the training loss at the positions (or, for ids, the
  codebook entries) that the mask keeps, plus float logs; ``log_likelihood(hidden_BLD, targets, mask=...)``:
  each row's summed log-probability of its kept targets (id heads only: scoring which condition explains
  known tokens);
- ``sample(hidden_RnD, sampling=..., guidance_scale=..., seeds_Bn=...)``: one group's tokens from its
  hidden states. With classifier-free guidance the rows are doubled (R = 2B, conditional rows first);
  the unconditional rows are used only where ``guidance_scale != 1``. ``seeds_Bn`` (int64 ``[B, n]``)
  makes every draw a function of its own seed, so a sample does not depend on its batch;
- ``embed(gpt, tokens)``: how drawn tokens enter the GPT as inputs; ``corrupt(tokens)``: the noised
  context of noisy-context training (xAR); ``normalize_tokens`` / ``denormalize_tokens``: tokenizer
  space ↔ the space the head models, channel-last ``[..., C]`` (identity for ids).

Heads: :class:`CategoricalHead` (one linear projection per codebook, codebooks drawn independently),
:class:`DepthHead` (a small causal transformer over the D codebooks of a position, RQ-Transformer /
Moshi style) and :class:`~mmgen.flow_head.FlowHead` (flow matching for continuous latents, at home in
:mod:`mmgen.flow_head` and re-exported here).

Seeds: codebook d of position (b, j) is drawn with seed ``seeds_Bn[b, j] + d * CODEBOOK_SEED_STRIDE``
through :func:`mmgen.sampling.sample`, so one codebook uses the seed unchanged.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import CompiledStep
from .hub import PretrainedModel
from .sampling import SamplingConfig, sample
from .tokens import DiscreteContent, TokenContent

if TYPE_CHECKING:
    from .gpt import GPT

__all__ = [
    "CODEBOOK_SEED_STRIDE",
    "CategoricalHead",
    "CategoricalHeadConfig",
    "DepthHead",
    "DepthHeadConfig",
    "FlowHead",
    "FlowHeadConfig",
    "Head",
]

CODEBOOK_SEED_STRIDE = 1_000_003  # seed offset between the codebooks of one position
DEPTH_INIT_STD = 0.02


def __getattr__(name: str) -> Any:
    # FlowHead lives in mmgen.flow_head (saved pipelines name that module) and subclasses Head, so
    # importing it here eagerly would be circular whichever module is imported first.
    if name in ("FlowHead", "FlowHeadConfig"):
        from . import flow_head

        return getattr(flow_head, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Head(PretrainedModel, metaclass=abc.ABCMeta):
    """The interface every head implements (see the module docstring); it has no config of its own."""

    @property
    @abc.abstractmethod
    def content(self) -> TokenContent:
        """What one position holds: ids over D codebooks, or a continuous vector."""

    @property
    @abc.abstractmethod
    def hidden_dim(self) -> int:
        """Width of the hidden states the head reads (the GPT's ``dim``)."""

    @abc.abstractmethod
    def loss(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of ``targets`` (ids ``[B, L]`` / ``[B, L, D]`` or normalised latents ``[B, L, C]``).

        ``mask``: bool ``[B, L]`` (positions) or, for ids, ``[B, L, D]`` (entries); False = left out.
        """

    def log_likelihood(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the summed log-probability in nats ``[B]`` of the kept targets (teacher-forced scoring)."""
        raise ValueError(f"{type(self).__name__} has no exact likelihood to score tokens with; "
                         f"log_likelihood needs a head that draws ids (CategoricalHead, DepthHead)")

    @abc.abstractmethod
    def sample(self, hidden_RnD: torch.Tensor, *, sampling: SamplingConfig, guidance_scale: float,
               seeds_Bn: torch.Tensor) -> torch.Tensor:
        """One group's tokens: ids ``[B, n]`` / ``[B, n, D]`` or normalised latents ``[B, n, C]``."""

    @abc.abstractmethod
    def embed(self, gpt: GPT, tokens: torch.Tensor, *, noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """GPT inputs ``[B, n, gpt.cfg.dim]`` of drawn (or, with ``noise_level [B]``, corrupted) tokens."""

    @abc.abstractmethod
    def corrupt(self, tokens: torch.Tensor, *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Noisy-context training: ``(possibly noised tokens, noise level per row [B] or None)``."""

    @abc.abstractmethod
    def normalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokenizer space → the space the head models (channel-last ``[..., C]`` for latents)."""

    @abc.abstractmethod
    def denormalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_tokens`: what the tokenizer decodes."""

    # ---- checks shared by the heads -------------------------------------------------------------
    @staticmethod
    def _check_hidden(hidden: torch.Tensor, *, name: str, dim: int) -> None:
        if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
            got = hidden.dtype if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise TypeError(f"{name} must be a float tensor [rows, positions, {dim}], got {got}")
        if hidden.dim() != 3 or hidden.shape[-1] != dim:
            raise ValueError(f"{name} must have shape [rows, positions, {dim}] (the head's dim), got {tuple(hidden.shape)}")

    def _guided_rows(self, hidden_RnD: torch.Tensor, *, dim: int, sampling: SamplingConfig, guidance_scale: float,
                     seeds_Bn: torch.Tensor) -> tuple[int, bool]:
        """Check :meth:`sample`'s arguments; returns ``(B, whether the uncond rows are used)``."""
        self._check_hidden(hidden_RnD, name="hidden_RnD", dim=dim)
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling must be a mmgen.sampling.SamplingConfig, got {type(sampling).__name__}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if not isinstance(seeds_Bn, torch.Tensor) or seeds_Bn.dtype != torch.int64:
            got = seeds_Bn.dtype if isinstance(seeds_Bn, torch.Tensor) else type(seeds_Bn).__name__
            raise TypeError(f"seeds_Bn must be an int64 tensor [B, n] (one seed per position), got {got}")
        R, n, _ = hidden_RnD.shape
        if n < 1:
            raise ValueError(f"hidden_RnD must hold at least one position, got shape {tuple(hidden_RnD.shape)}")
        if seeds_Bn.dim() != 2 or seeds_Bn.shape[1] != n or R not in (seeds_Bn.shape[0], 2 * seeds_Bn.shape[0]):
            raise ValueError(
                f"seeds_Bn must have shape [B, {n}] with B = {R} (no guidance) or {R // 2} (R = 2B guided rows "
                f"of hidden_RnD), got {tuple(seeds_Bn.shape)}"
            )
        B = seeds_Bn.shape[0]
        return B, R == 2 * B and guidance_scale != 1.0

    @staticmethod
    def _position_mask(mask: torch.Tensor | None, shape: tuple[int, ...], *,
                       entries: int | None = None) -> torch.Tensor | None:
        """``mask`` as bool ``[B, L]`` (or, with ``entries=D``, ``[B, L, D]``, positions broadcast)."""
        if mask is None:
            return None
        B, L = shape
        allowed = "[B, L] (positions)" if entries is None else f"[B, L] (positions) or [B, L, {entries}] (entries)"
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor {allowed}, got {got}")
        if tuple(mask.shape) == (B, L):
            keep = mask if entries is None else mask.unsqueeze(-1).expand(B, L, entries)
        elif entries is not None and tuple(mask.shape) == (B, L, entries):
            keep = mask
        else:
            raise ValueError(f"mask must have shape {allowed} with B={B}, L={L}, got {tuple(mask.shape)}")
        if not bool(keep.any()):
            raise ValueError("mask leaves out every target: there is nothing to train on")
        return keep


class _DiscreteHead(Head):
    """What the id-emitting heads share: content, checks, cross-entropy, ids entering the GPT as they are."""

    cfg: Any

    @property
    def content(self) -> DiscreteContent:
        return DiscreteContent(tuple(self.cfg.codebook_sizes))

    @property
    def hidden_dim(self) -> int:
        return self.cfg.dim

    @property
    def num_codebooks(self) -> int:
        return len(self.cfg.codebook_sizes)

    def embed(self, gpt: GPT, tokens: torch.Tensor, *, noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """The GPT's own token tables (summed over codebooks); ids always enter clean."""
        if noise_level is not None:
            raise ValueError("noise_level must be None for ids: discrete tokens enter the GPT clean")
        return gpt.embed_tokens(tokens)

    def corrupt(self, tokens: torch.Tensor, *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ids are not noised: plain teacher forcing."""
        self.content.check_ids(tokens, name="tokens")
        return tokens, None

    def normalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Identity: ids are modelled as they are (checked where they are used: embedding and loss)."""
        return tokens

    def denormalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Identity: ids are modelled as they are."""
        return tokens

    def loss(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy over the kept entries of all codebooks; logs ``ce`` and ``accuracy``."""
        ids_BLD, keep_BLD = self._teacher_targets(hidden_BLD, targets, mask)
        total, correct = hidden_BLD.new_zeros((), dtype=torch.float32), 0
        for d, logits_BLV in enumerate(self._teacher_logits(hidden_BLD, ids_BLD)):
            if keep_BLD is None:
                logits_NV, ids_N = logits_BLV.flatten(0, 1), ids_BLD[..., d].flatten()
            else:
                logits_NV, ids_N = logits_BLV[keep_BLD[..., d]], ids_BLD[..., d][keep_BLD[..., d]]
            total = total + F.cross_entropy(logits_NV.float(), ids_N, reduction="sum")
            correct = correct + (logits_NV.argmax(-1) == ids_N).sum()
        count = ids_BLD.numel() if keep_BLD is None else keep_BLD.sum()
        loss = total / count
        accuracy = correct / count
        return loss, {"ce": loss.item(), "accuracy": float(accuracy)}

    def log_likelihood(self, hidden_BLD: torch.Tensor, targets: torch.Tensor, *,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the summed log-probability in nats ``[B]`` of the kept entries of all codebooks."""
        ids_BLD, keep_BLD = self._teacher_targets(hidden_BLD, targets, mask)
        total_B = hidden_BLD.new_zeros(hidden_BLD.shape[0], dtype=torch.float32)
        for d, logits_BLV in enumerate(self._teacher_logits(hidden_BLD, ids_BLD)):
            logp_BL = logits_BLV.float().log_softmax(-1).gather(-1, ids_BLD[..., d : d + 1]).squeeze(-1)
            total_B = total_B + (logp_BL if keep_BLD is None else logp_BL * keep_BLD[..., d]).sum(1)
        return total_B

    def _teacher_targets(self, hidden_BLD: torch.Tensor, targets: torch.Tensor,
                         mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checked ids ``[B, L, D]`` and the kept entries ``[B, L, D]`` (None: all) of a teacher-forced forward."""
        self._check_hidden(hidden_BLD, name="hidden_BLD", dim=self.cfg.dim)
        self.content.check_ids(targets, name="targets")
        B, L, _ = hidden_BLD.shape
        if tuple(targets.shape[:2]) != (B, L):
            raise ValueError(f"targets must cover the positions of hidden_BLD [{B}, {L}], got shape {tuple(targets.shape)}")
        return targets.long().reshape(B, L, self.num_codebooks), self._position_mask(mask, (B, L), entries=self.num_codebooks)

    @abc.abstractmethod
    def _teacher_logits(self, hidden_BLD: torch.Tensor, ids_BLD: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``[B, L, V_d]`` of every codebook given the true codes ``[B, L, D]`` (teacher forcing)."""

    def _draw_codebook(self, logits_RnV: torch.Tensor, *, d: int, B: int, guided: bool, sampling: SamplingConfig,
                       guidance_scale: float, seeds_Bn: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, n]`` of codebook ``d`` from its logits (rows ``B..`` are the uncond rows when ``guided``)."""
        cond = logits_RnV[:B]
        uncond = logits_RnV[B:] if guided else None
        _, n, V = cond.shape
        seeds_N = (seeds_Bn + d * CODEBOOK_SEED_STRIDE).reshape(-1).to(cond.device)
        ids = sample(cond.reshape(B * n, V).float(),
                     uncond_logits=None if uncond is None else uncond.reshape(B * n, V).float(),
                     guidance_scale=guidance_scale, temperature=sampling.temperature, top_k=sampling.top_k,
                     top_p=sampling.top_p, min_p=sampling.min_p, backend=sampling.backend, seed=seeds_N)
        return ids.view(B, n)

    def _ids(self, codes: list[torch.Tensor]) -> torch.Tensor:
        """Per-codebook ids ``[B, n]`` → ``[B, n]`` (one codebook) or ``[B, n, D]``."""
        return codes[0] if len(codes) == 1 else torch.stack(codes, dim=-1)


# ---- categorical -------------------------------------------------------------------------------------
def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _codebook_list(value: object) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"codebook_sizes must be a non-empty list of positive ints (one per codebook), got {value!r}")
    for size in value:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"codebook_sizes must be a non-empty list of positive ints (one per codebook), got {value!r}")
    return list(value)


@dataclass
class CategoricalHeadConfig:
    """A :class:`CategoricalHead` over hidden states of size ``dim``, one vocabulary per codebook.

    ``bias``: the projections carry a bias (VAR's head does; LlamaGen's and ours do not).
    """

    dim: int
    codebook_sizes: list[int]
    bias: bool = False

    def __post_init__(self) -> None:
        _check_positive("dim", self.dim)
        self.codebook_sizes = _codebook_list(self.codebook_sizes)
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be a bool, got {self.bias!r}")


class CategoricalHead(_DiscreteHead):
    """One linear projection per codebook (bias-free by default); the D codebooks of a position are drawn independently.

    ``CategoricalHead(CategoricalHeadConfig(dim=256, codebook_sizes=[1024]))`` is LlamaGen's head;
    several codebooks are MusicGen's parallel / delay heads.
    """

    config_class = CategoricalHeadConfig

    def __init__(self, config: CategoricalHeadConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.projections = nn.ModuleList(nn.Linear(cfg.dim, v, bias=cfg.bias) for v in cfg.codebook_sizes)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``[..., V]`` of hidden states ``[..., dim]`` (one codebook), a list of ``[..., V_d]`` for several."""
        logits = [projection(hidden) for projection in self.projections]
        return logits[0] if len(logits) == 1 else logits

    def _teacher_logits(self, hidden_BLD: torch.Tensor, ids_BLD: torch.Tensor) -> list[torch.Tensor]:
        return [projection(hidden_BLD) for projection in self.projections]

    def sample(self, hidden_RnD: torch.Tensor, *, sampling: SamplingConfig, guidance_scale: float,
               seeds_Bn: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, n]`` (``[B, n, D]``) through :func:`mmgen.sampling.sample`; temperature 0 is argmax."""
        B, guided = self._guided_rows(hidden_RnD, dim=self.cfg.dim, sampling=sampling, guidance_scale=guidance_scale,
                                      seeds_Bn=seeds_Bn)
        compiled = self.__dict__.get("_compiled_logits")
        logits = compiled(hidden_RnD) if compiled is not None and hidden_RnD.shape[1] == 1 else self._all_logits(hidden_RnD)
        codes = [
            self._draw_codebook(logits_RnV, d=d, B=B, guided=guided, sampling=sampling,
                                guidance_scale=guidance_scale, seeds_Bn=seeds_Bn)
            for d, logits_RnV in enumerate(logits)
        ]
        return self._ids(codes)

    def _all_logits(self, hidden_RnD: torch.Tensor) -> list[torch.Tensor]:
        return [projection(hidden_RnD) for projection in self.projections]

    def compile_decoding(self, enabled: bool = True, *, freeze: bool = False) -> None:
        """Compute the logits of one-position steps through ``torch.compile`` (as :meth:`mmgen.GPT.compile_decoding`).

        ``freeze=True`` folds the projections into the graph: call this again after changing them.
        """
        self.__dict__["_compiled_logits"] = CompiledStep(self._all_logits, freeze=freeze) if enabled else None


# ---- depth transformer -------------------------------------------------------------------------------
@dataclass
class DepthHeadConfig:
    """A :class:`DepthHead`: hidden states of size ``dim`` in, a ``depth``-layer transformer of ``width`` over the codebooks.

    ``tied``: one code table and one output projection serve every step, told apart by the step embeddings —
    for entries that share one vocabulary (the ids of a video frame's positions), where separate tables
    would each see a D-th of the data; RVQ levels are different codebooks and keep their own (the default).
    """

    dim: int
    codebook_sizes: list[int]
    width: int = 128
    depth: int = 2
    n_heads: int = 4
    tied: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "width", "depth", "n_heads"):
            _check_positive(name, getattr(self, name))
        self.codebook_sizes = _codebook_list(self.codebook_sizes)
        if self.width % self.n_heads:
            raise ValueError(f"width={self.width} must be divisible by n_heads={self.n_heads}")
        if not isinstance(self.tied, bool):
            raise TypeError(f"tied must be a bool, got {self.tied!r}")
        if self.tied and len(set(self.codebook_sizes)) != 1:
            raise ValueError(f"tied=True needs codebooks of one size (one shared table), got codebook_sizes={self.codebook_sizes}")


class DepthHead(_DiscreteHead):
    """A small causal transformer over the D codebooks of one position (RQ-Transformer / Moshi depth transformer).

    Step 0's input is a projection of the GPT's hidden state; step d > 0 adds the embedding of code
    d − 1 (the head's own tables). The output of step d predicts codebook d, so codebook d is drawn
    knowing the codes before it. With a ``[B, L, D]`` loss mask the left-out entries still feed the
    later steps as inputs; they are only not predicted.
    """

    config_class = DepthHeadConfig

    def __init__(self, config: DepthHeadConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        W = cfg.width
        self.input_proj = nn.Linear(cfg.dim, W)
        self.step_embedding = nn.Parameter(torch.empty(len(cfg.codebook_sizes), W))
        sizes = cfg.codebook_sizes
        # untied: step d reads codebook d − 1's table and writes through its own projection; tied: one of each
        self.code_embeddings = nn.ModuleList(nn.Embedding(v, W) for v in (sizes[:1] if cfg.tied else sizes[:-1]))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(W, cfg.n_heads, dim_feedforward=4 * W, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(W)
        self.projections = nn.ModuleList(nn.Linear(W, v, bias=False) for v in (sizes[:1] if cfg.tied else sizes))
        nn.init.normal_(self.step_embedding, std=DEPTH_INIT_STD)
        for table in self.code_embeddings:
            nn.init.normal_(table.weight, std=DEPTH_INIT_STD)

    def logits(self, hidden_BLD: torch.Tensor, ids: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Teacher-forced logits given the codes ``ids`` (``[B, L]`` / ``[B, L, D]``): ``[B, L, V]`` or a list per codebook."""
        self._check_hidden(hidden_BLD, name="hidden_BLD", dim=self.cfg.dim)
        self.content.check_ids(ids, name="ids")
        B, L, _ = hidden_BLD.shape
        if tuple(ids.shape[:2]) != (B, L):
            raise ValueError(f"ids must cover the positions of hidden_BLD [{B}, {L}], got shape {tuple(ids.shape)}")
        logits = self._teacher_logits(hidden_BLD, ids.long().reshape(B, L, self.num_codebooks))
        return logits[0] if len(logits) == 1 else logits

    def _teacher_logits(self, hidden_BLD: torch.Tensor, ids_BLD: torch.Tensor) -> list[torch.Tensor]:
        B, L, D = ids_BLD.shape
        start_NW = self._start(hidden_BLD.reshape(B * L, -1))
        ids_ND = ids_BLD.reshape(B * L, D)
        steps = [self._step_input(start_NW, d, ids_ND[:, d - 1] if d else None) for d in range(D)]
        out_NDW = self._transformer(torch.stack(steps, dim=1))
        return [self._projection(d)(out_NDW[:, d]).view(B, L, -1) for d in range(D)]

    def sample(self, hidden_RnD: torch.Tensor, *, sampling: SamplingConfig, guidance_scale: float,
               seeds_Bn: torch.Tensor) -> torch.Tensor:
        """D steps, one codebook each; with guidance the cond and uncond rows run on their own hidden states."""
        B, guided = self._guided_rows(hidden_RnD, dim=self.cfg.dim, sampling=sampling, guidance_scale=guidance_scale,
                                      seeds_Bn=seeds_Bn)
        rows = hidden_RnD if guided else hidden_RnD[:B]
        R, n, _ = rows.shape
        start_NW = self._start(rows.reshape(R * n, -1))
        steps, codes = [], []
        for d in range(self.num_codebooks):
            previous_N = codes[-1].reshape(-1).repeat(R // B) if d else None  # uncond rows follow the cond codes
            steps.append(self._step_input(start_NW, d, previous_N))
            out_NW = self._transformer(torch.stack(steps, dim=1))[:, -1]
            codes.append(self._draw_codebook(self._projection(d)(out_NW).view(R, n, -1), d=d, B=B, guided=guided,
                                             sampling=sampling, guidance_scale=guidance_scale, seeds_Bn=seeds_Bn))
        return self._ids(codes)

    def _start(self, hidden_ND: torch.Tensor) -> torch.Tensor:
        return self.input_proj(hidden_ND.to(self.input_proj.weight.dtype))

    def _step_input(self, start_NW: torch.Tensor, d: int, previous_N: torch.Tensor | None) -> torch.Tensor:
        """Input of step ``d``: the projected hidden state, the step's embedding and (d > 0) code d − 1's embedding."""
        x_NW = start_NW + self.step_embedding[d]
        if previous_N is None:
            return x_NW
        return x_NW + self.code_embeddings[0 if self.cfg.tied else d - 1](previous_N)

    def _projection(self, d: int) -> nn.Linear:
        """The output projection of step ``d`` (the one shared projection when tied)."""
        return self.projections[0 if self.cfg.tied else d]

    def _transformer(self, x_NTW: torch.Tensor) -> torch.Tensor:
        T = x_NTW.shape[1]
        mask_TT = nn.Transformer.generate_square_subsequent_mask(T, device=x_NTW.device, dtype=x_NTW.dtype)
        for layer in self.layers:
            x_NTW = layer(x_NTW, src_mask=mask_TT, is_causal=True)
        return self.norm(x_NTW)
