"""SNAC-style multi-scale audio codec: residual VQ levels at different frame rates, a 1D pyramid of tokens.

A SEANet encoder maps a waveform to latents ``[B, dim, t]`` at the finest frame rate (hop 320: 50 Hz at
16 kHz). Level k of ``vq_strides`` (coarse to fine, e.g. ``(4, 2, 1)``: 12.5 / 25 / 50 Hz) average-pools
the residual by its stride, quantises each pooled frame with its own codebook, repeats the codes back to
the latent rate and subtracts them (SNAC's ``avg_pool1d`` / ``repeat_interleave``). A coarse level thus
spends few tokens on what changes slowly, which is what next-scale generation draws first.

Pooling rounds up: a level of stride s has ``ceil(t / s)`` frames and its last frame averages the
``t mod s`` frames left over (SNAC pads the waveform to ``hop · lcm(vq_strides)`` instead), so a 1.0 s
clip at hop 320 gives 13, 25 and 50 tokens and decodes to exactly 16000 samples.

Codebooks are vector-quantize-pytorch ``VectorQuantize`` modules (k-means init on the first training
batch, EMA updates, dead-code expiry, factorised ``codebook_dim`` lookups as SNAC). Only training-mode
forwards go through the library (it initialises and updates codebooks even in eval mode);
:meth:`MultiScaleAudioCodec.encode` and every eval forward look codes up here, changing no state.

What it shares with ``single.py`` (config fields, waveform handling, quantiser helpers) lives in ``codec.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.hub import PretrainedModel
from mmgen.metrics import codebook_usage
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent

from .checks import check_ids_in_range, check_index, require_positive_int
from .codec import CodecConfig, WaveformCodecMixin, build_codebook, quantize_frames
from .frontends import build_decoder, build_encoder

__all__ = ["MultiScaleAudioConfig", "MultiScaleAudioCodec", "MultiScaleResidualVQ"]

LevelIds = Sequence[torch.Tensor] | torch.Tensor


@dataclass
class MultiScaleAudioConfig(CodecConfig):
    """A :class:`CodecConfig` plus ``vq_strides``: the pooling factor of each level, coarse to fine, ending at 1.

    SNAC's defaults: 4096 codes of dimension 8 per level, strides ``(4, 2, 1)``.
    """

    codebook_dim: int | None = 8
    vq_strides: tuple[int, ...] = (4, 2, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.vq_strides = tuple(self.vq_strides)
        if len(self.vq_strides) < 2:
            raise ValueError(f"vq_strides must name at least two levels (coarse to fine), got {self.vq_strides}")
        for i, stride in enumerate(self.vq_strides):
            require_positive_int(f"vq_strides[{i}]", stride)
        if any(b >= a for a, b in zip(self.vq_strides, self.vq_strides[1:])) or self.vq_strides[-1] != 1:
            raise ValueError(f"vq_strides must be strictly decreasing and end at 1 (the finest level is the latent rate), "
                             f"got {self.vq_strides}")

    def level_frames(self, frames: int) -> tuple[int, ...]:
        """Tokens per level for ``frames`` latent frames: ``ceil(frames / stride)``."""
        return tuple(-(-frames // s) for s in self.vq_strides)


class MultiScaleResidualVQ(nn.Module):
    """Residual VQ whose level k quantises the residual average-pooled by ``vq_strides[k]`` (SNAC)."""

    def __init__(self, cfg: MultiScaleAudioConfig) -> None:
        super().__init__()
        self.strides, self.dead_code_fraction = cfg.vq_strides, cfg.dead_code_fraction
        self.levels = nn.ModuleList(build_codebook(cfg) for _ in self.strides)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def pool(self, x_BDt: torch.Tensor, level: int) -> torch.Tensor:
        """Latents ``[B, D, t]`` → level frames ``[B, ceil(t / s), D]`` (a partial last window averages what it holds)."""
        s = self.strides[level]
        pooled_BDn = x_BDt if s == 1 else F.avg_pool1d(x_BDt, s, s, ceil_mode=True)
        return pooled_BDn.transpose(1, 2)

    def upsample(self, q_BnD: torch.Tensor, level: int, frames: int) -> torch.Tensor:
        """Level frames ``[B, n, D]`` → latents ``[B, D, frames]`` by repetition."""
        return q_BnD.transpose(1, 2).repeat_interleave(self.strides[level], dim=2)[..., :frames]

    def codes(self, ids_Bn: torch.Tensor, level: int) -> torch.Tensor:
        """Ids ``[B, n]`` of one level → its quantised frames ``[B, n, D]``."""
        return self.levels[level].get_output_from_indices(ids_Bn)

    def forward(self, z_BDt: torch.Tensor, *, update: bool) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Latents → reconstruction ``[B, D, t]`` (straight-through when ``update``), ids per level, summed commitment."""
        frames = z_BDt.shape[-1]
        residual_BDt, z_hat_BDt = z_BDt, torch.zeros_like(z_BDt)
        ids, commit = [], z_BDt.new_zeros(())
        for level, vq in enumerate(self.levels):
            q_BnD, ids_Bn, level_commit = quantize_frames(vq, self.pool(residual_BDt, level), update=update,
                                                         dead_code_fraction=self.dead_code_fraction)
            up_BDt = self.upsample(q_BnD, level, frames)
            z_hat_BDt = z_hat_BDt + up_BDt
            residual_BDt = residual_BDt - up_BDt.detach()
            ids.append(ids_Bn)
            commit = commit + level_commit
        return z_hat_BDt, ids, commit

    def ids_to_latents(self, ids: Sequence[torch.Tensor], frames: int) -> torch.Tensor:
        """Validated ids per level → the summed latents ``[B, D, frames]``."""
        return sum(self.upsample(self.codes(ids_Bn, level), level, frames) for level, ids_Bn in enumerate(ids))


class MultiScaleAudioCodec(WaveformCodecMixin, PretrainedModel):
    """``SEANetEncoder → multi-rate residual VQ → SEANetDecoder``; tokens are ids ``[B, t_k]`` per level.

    ``encode(audio)`` gives the levels coarse to fine (a list); ``decode`` takes that list or the flat
    ``[B, L]`` form of :meth:`token_spec` (levels concatenated). With :class:`mmgen.protocol.ScaleContext`
    (``context_dim``, ``teacher_context``, ``context_step``) a next-scale generator draws level k given
    the running latent reconstruction of levels < k pooled to level k's rate, as VAR does for images.
    Train with ``loss, logs = codec.loss(audio)``.
    """

    config_class = MultiScaleAudioConfig

    def __init__(self, config: MultiScaleAudioConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.encoder = build_encoder(cfg, self._encoder_args())
        self.quantizer = MultiScaleResidualVQ(cfg)
        self.decoder = build_decoder(cfg, self._encoder_args())

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.cfg.vq_strides)

    @property
    def level_frame_rates(self) -> tuple[float, ...]:
        """Tokens per second of each level, coarse to fine (12.5 / 25 / 50 at hop 320, strides (4, 2, 1))."""
        return tuple(self.frame_rate / s for s in self.cfg.vq_strides)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Tokens per level of a training clip (what :meth:`token_spec` and the flat form hold)."""
        return self.cfg.level_frames(self.cfg.clip_frames)

    @property
    def num_tokens(self) -> int:
        return sum(self.level_sizes)

    def token_lengths(self, lengths: torch.Tensor, *, max_len: int) -> list[torch.Tensor]:
        """Valid tokens ``[B]`` per level for items of ``lengths`` samples in a batch padded to ``max_len``."""
        frames_B = self.frame_lengths(lengths, max_len=max_len)
        return [-(-frames_B // s) for s in self.cfg.vq_strides]

    # ---- tokens ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio_B1T: torch.Tensor, *, lengths: torch.Tensor | None = None,
               sample_rate: int | None = None) -> list[torch.Tensor]:
        """Waveforms ``[B, 1, T]`` in [-1, 1] → ids ``[B, ceil(t / s_k)]`` (long) per level, coarse to fine.

        T is right-padded with zeros to a multiple of ``hop_length`` (t = padded T / hop); samples beyond
        an item's ``lengths`` are zeroed first. Changes no state in either mode.
        """
        audio_B1T = self.prepare_audio(audio_B1T, lengths=lengths, sample_rate=sample_rate)
        return self.quantizer(self.encoder(audio_B1T), update=False)[1]

    def _level_ids(self, ids: LevelIds, *, name: str = "ids") -> list[torch.Tensor]:
        """Validate ids as a flat ``[B, L]`` tensor (the spec's sizes) or a list of levels; return the list."""
        V, strides = self.cfg.codebook_size, self.cfg.vq_strides
        if isinstance(ids, torch.Tensor):
            check_ids_in_range(ids, V, name=name)
            if ids.dim() != 2 or ids.shape[1] != self.num_tokens:
                raise ValueError(f"flat {name} must have shape [B, {self.num_tokens}] (levels of {self.level_sizes} "
                                 f"tokens concatenated), got {tuple(ids.shape)}")
            return list(ids.long().split(self.level_sizes, dim=1))
        if not isinstance(ids, (list, tuple)) or len(ids) != len(strides):
            got = f"{len(ids)} levels" if isinstance(ids, (list, tuple)) else type(ids).__name__
            raise ValueError(f"{name} must be a [B, L] tensor or a list of {len(strides)} per-level tensors "
                             f"(vq_strides {strides}), got {got}")
        for k, ids_k in enumerate(ids):
            check_ids_in_range(ids_k, V, name=f"{name}[{k}]")
        last = len(strides) - 1
        if ids[last].dim() != 2:
            raise ValueError(f"{name}[{last}] (the finest level) must have shape [B, t], got {tuple(ids[last].shape)}")
        batch, frames = ids[last].shape
        for k, (ids_k, size) in enumerate(zip(ids, self.cfg.level_frames(frames))):
            if tuple(ids_k.shape) != (batch, size):
                raise ValueError(f"{name}[{k}] must have shape [{batch}, {size}] (ceil({frames} / {strides[k]}) for the "
                                 f"finest level's {frames} frames), got {tuple(ids_k.shape)}")
        return [ids_k.long() for ids_k in ids]

    def ids_to_latents(self, ids: LevelIds) -> torch.Tensor:
        """Ids (list or flat) → quantised latents ``[B, dim, t]``."""
        levels = self._level_ids(ids)
        return self.quantizer.ids_to_latents(levels, levels[-1].shape[1])

    def decode(self, ids: LevelIds) -> torch.Tensor:
        """Ids (per-level list or flat ``[B, L]``) → waveforms ``[B, 1, t · hop_length]`` clamped to [-1, 1]."""
        return self.decoder(self.ids_to_latents(ids)).clamp(-1, 1)

    # ---- tokenizer protocol (mmgen.protocol), with ScaleContext for next-scale generation ------------
    def token_spec(self) -> TokenSpec:
        """A 1D pyramid: ``ceil(t / s_k)`` ids per level of a ``clip_samples`` clip, one codebook size for all."""
        return TokenSpec(content=DiscreteContent((self.cfg.codebook_size,)), scales=tuple((n,) for n in self.level_sizes))

    def to_positions(self, ids: LevelIds) -> list[torch.Tensor]:
        """Ids (list or flat) → the ``[B, t_k]`` row of every level."""
        return self._level_ids(ids)

    def from_positions(self, positions: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self._level_ids(list(positions), name="positions")

    @property
    def context_dim(self) -> int:
        """Channels of the next-scale inputs (the latent space)."""
        return self.cfg.dim

    def _next_input(self, z_hat_BDt: torch.Tensor, level: int) -> torch.Tensor | None:
        """Level ``level + 1``'s inputs ``[B, t_{k+1}, dim]``: the running reconstruction pooled to its rate."""
        return None if level == self.num_levels - 1 else self.quantizer.pool(z_hat_BDt, level + 1)

    def teacher_context(self, ids_BL: torch.Tensor) -> torch.Tensor:
        """Inputs ``[B, L − t_0, dim]`` of levels 1..K−1 from the true flat ids (teacher forcing)."""
        levels = self._level_ids(ids_BL, name="ids_BL")
        frames = levels[-1].shape[1]
        z_hat_BDt, inputs = None, []
        for level in range(self.num_levels - 1):
            up_BDt = self.quantizer.upsample(self.quantizer.codes(levels[level], level), level, frames)
            z_hat_BDt = up_BDt if z_hat_BDt is None else z_hat_BDt + up_BDt
            inputs.append(self._next_input(z_hat_BDt, level))
        return torch.cat(inputs, dim=1)

    def context_step(self, state: torch.Tensor | None, scale_index: int,
                     ids_Bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state`` is the running latent reconstruction (None before level 0); returns it and level k+1's inputs."""
        size = self.level_sizes[check_index("scale_index", scale_index, self.num_levels)]
        check_ids_in_range(ids_Bn, self.cfg.codebook_size, name="ids_Bn")
        if ids_Bn.dim() != 2 or ids_Bn.shape[1] != size:
            raise ValueError(f"ids_Bn of level {scale_index} must have shape [B, {size}], got {tuple(ids_Bn.shape)}")
        up_BDt = self.quantizer.upsample(self.quantizer.codes(ids_Bn.long(), scale_index), scale_index, self.level_sizes[-1])
        state = up_BDt if state is None else state + up_BDt
        return state, self._next_input(state, scale_index)

    # ---- training ------------------------------------------------------------------------------
    def forward(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Prepared waveforms (whole frames) → unclamped reconstruction, ids per level, commitment loss.

        In training mode the codebooks initialise (k-means, first call), update by EMA and expire dead codes.
        """
        z_hat_BDt, ids, commit = self.quantizer(self.encoder(audio_B1T), update=self.training)
        return self.decoder(z_hat_BDt), ids, commit

    def loss(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted waveform L1 + multi-resolution STFT + log-mel L1 (+ frame loss) + commitment, and float logs (usage per level)."""
        audio_B1T = self.prepare_audio(audio_B1T)
        z_hat_BDt, ids, commit = self.quantizer(self.encoder(audio_B1T), update=self.training)
        _, terms = self.decode_with_terms(z_hat_BDt, audio_B1T)
        usage = [codebook_usage(ids_Bn, self.cfg.codebook_size)["usage"] for ids_Bn in ids]
        logs = {name: float(value.detach()) for name, value in terms.items()}
        logs.update(commit=float(commit.detach()), usage=sum(usage) / len(usage),
                    **{f"usage_{k}": u for k, u in enumerate(usage)})
        return self.weighted_loss(terms, commit), logs
