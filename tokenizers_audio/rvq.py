"""EnCodec/DAC-style audio codec: SEANet encoder → residual VQ over K codebooks → SEANet decoder.

The encoder and decoder can also be the STFT-domain ones of :mod:`tokenizers_audio.frontends`
(``encoder_type="stft"``, ``decoder_type="vocos"`` as Vocos decodes EnCodec tokens, or ``"vocos-if"``); the
causal, streaming codec is SEANet's.

A mono waveform ``[B, 1, T]`` at ``sample_rate`` becomes ids ``[B, t, K]`` with ``t = T / hop_length``
frames (``hop_length = prod(strides)``: 320 at the default strides, 50 frames/s at 16 kHz). Codebook k
quantises what codebooks 0..k-1 left over, so the first k columns of the ids are themselves a coarser
encoding: ``encode(audio, num_quantizers=k)`` and ``decode(ids[..., :k])`` serve every bitrate from one
model, because training uses quantizer dropout (each item keeps a random number 1..N of codebooks).

The codebooks are vector-quantize-pytorch's ``ResidualVQ`` layers (EMA updates, k-means init, dead-code
replacement). Its own ``forward`` is not used: it draws one dropout count per *batch*, only in training
mode, and even in eval mode its k-means init writes the codebook on the first call. Training here
calls the layers one by one with a per-item keep mask (DAC's scheme; masked positions neither move the
EMA nor count in the commitment loss), and ``encode`` / ``decode`` are pure nearest-code lookups into
``ResidualVQ.codebooks`` that change no state in either mode.

With ``causal=True`` every conv looks only at the past: :meth:`RVQAudioCodec.streaming_encoder` and
:meth:`RVQAudioCodec.streaming_decoder` then encode and decode chunk by chunk with the offline result.

Training: ``loss, logs = codec.loss(audio)`` (waveform L1 + multi-resolution STFT + log-mel + commitment).
With ``use_discriminator=True`` that loss also holds the generator's adversarial and feature-matching
terms against an MS-STFT discriminator whose parameters it never changes; train the discriminator with
:meth:`RVQAudioCodec.discriminator_loss`, either with its own optimizer over ``codec.discriminator``
(EnCodec/DAC) or by simply adding it: ``(loss + codec.discriminator_loss(audio)[0]).backward()`` with one
optimizer over all parameters is sound, since ``loss`` sends no gradient into the discriminator and
``discriminator_loss`` none into the codec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from vector_quantize_pytorch import ResidualVQ

from mmgen.hub import PretrainedModel
from mmgen.metrics import si_sdr
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent

from .checks import check_audio, check_ids_in_range, check_lengths, require_positive_int
from .codec import waveform_terms
from .frontends import FrontendFields, build_decoder, build_encoder, decode_for_loss
from .seanet import SEANetStream

__all__ = ["MultiScaleSTFTDiscriminator", "RVQAudioCodec", "RVQAudioConfig", "RVQStreamingDecoder", "RVQStreamingEncoder"]


@dataclass
class RVQAudioConfig(FrontendFields):
    """Size, quantiser and loss options of an :class:`RVQAudioCodec` (encoder and decoder kinds: :class:`FrontendFields`).

    ``clip_samples`` is the training clip: the token spec has ``ceil(clip_samples / hop_length)`` frames (encode pads the last).
    ``generator_quantizers`` is how many codebooks a generator models (the token spec's K; None = all
    ``num_quantizers``). ``quantizer_dropout_fraction`` of the training items draw their codebook count
    uniformly from 1..N, the rest use all N (1.0 as SoundStream/EnCodec; DAC uses 0.5 for a better full
    rate). ``decay``, ``kmeans_init``, ``kmeans_iters`` and ``threshold_ema_dead_code`` go to
    ``ResidualVQ``; the threshold is an EMA count of assignments per training step, so keep it well below
    ``frames per batch / codebook_size`` or live codes get replaced.
    """

    sample_rate: int = 16000
    clip_samples: int = 16000
    strides: Sequence[int] = (2, 4, 5, 8)
    base_channels: int = 32
    dim: int = 64
    num_res_blocks: int = 1
    kernel_size: int = 7
    causal: bool = False
    weight_norm: bool = True
    codebook_size: int = 1024
    codebook_dim: int | None = None
    cosine_codebooks: bool = False
    num_quantizers: int = 8
    generator_quantizers: int | None = None
    quantizer_dropout: bool = True
    quantizer_dropout_fraction: float = 1.0
    kmeans_init: bool = True
    kmeans_iters: int = 10
    decay: float = 0.95
    threshold_ema_dead_code: float = 0.1
    commitment_weight: float = 1.0
    l1_weight: float = 1.0
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    use_discriminator: bool = False
    discriminator_channels: int = 16
    adversarial_weight: float = 1.0
    feature_weight: float = 2.0

    def __post_init__(self) -> None:
        self.strides = tuple(self.strides)
        for name in ("sample_rate", "clip_samples", "base_channels", "dim", "kernel_size", "codebook_size", "num_quantizers",
                     "kmeans_iters", "discriminator_channels"):
            require_positive_int(name, getattr(self, name))
        for stride in self.strides:
            require_positive_int("strides", stride)
        hop = math.prod(self.strides)
        if self.clip_samples < hop:
            raise ValueError(f"clip_samples={self.clip_samples} is shorter than one frame (hop_length {hop} = prod(strides))")
        if self.codebook_dim is not None:
            require_positive_int("codebook_dim", self.codebook_dim)
        if self.generator_quantizers is not None:
            require_positive_int("generator_quantizers", self.generator_quantizers)
            if self.generator_quantizers > self.num_quantizers:
                raise ValueError(f"generator_quantizers={self.generator_quantizers} exceeds num_quantizers={self.num_quantizers}")
        if not 0.0 <= float(self.quantizer_dropout_fraction) <= 1.0:
            raise ValueError(f"quantizer_dropout_fraction must be in [0, 1], got {self.quantizer_dropout_fraction!r}")
        if not 0.0 <= float(self.decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        for name in ("threshold_ema_dead_code", "commitment_weight", "l1_weight", "stft_weight", "mel_weight",
                     "adversarial_weight", "feature_weight"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        self.check_frontend(hop_length=hop, causal=self.causal)

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec's MS-STFT discriminator: per STFT resolution, a 2D conv net over (real, imag) × (frames, bins).

    ``forward`` gives per resolution the logits and the hidden feature maps (for feature matching).
    """

    def __init__(self, *, channels: int = 16, resolutions: Sequence[tuple[int, int]] = ((1024, 256), (512, 128), (256, 64))) -> None:
        super().__init__()
        self.resolutions = tuple(tuple(r) for r in resolutions)

        def net() -> nn.ModuleList:
            return nn.ModuleList([
                nn.Conv2d(2, channels, (3, 9), padding=(1, 4)),
                *(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1), padding=(d, 4)) for d in (1, 2, 4)),
                nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)),
                nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)),
            ])

        self.nets = nn.ModuleList(net() for _ in self.resolutions)

    def forward(self, audio_B1T: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        outputs = []
        for (n_fft, hop), layers in zip(self.resolutions, self.nets):
            window = torch.hann_window(n_fft, device=audio_B1T.device, dtype=audio_B1T.dtype)
            spec = torch.stft(audio_B1T[:, 0], n_fft, hop_length=hop, window=window, normalized=True, return_complex=True)
            x = torch.view_as_real(spec).permute(0, 3, 2, 1)  # [B, 2, frames, bins]
            features = []
            for layer in layers[:-1]:
                x = F.leaky_relu(layer(x), 0.2)
                features.append(x)
            outputs.append((layers[-1](x), features))
        return outputs


class _CodebookProjection(nn.Module):
    """One level's factorised lookup: ``inward`` to the codebook's width, ``outward`` back to the latent's."""

    def __init__(self, dim: int, codebook_dim: int) -> None:
        super().__init__()
        self.inward = nn.Linear(dim, codebook_dim)
        self.outward = nn.Linear(codebook_dim, dim)


class RVQAudioCodec(PretrainedModel):
    """Mono audio ``[B, 1, T]`` in [-1, 1] ↔ ids ``[B, T / hop_length, K]`` over K ≤ ``num_quantizers`` codebooks."""

    config_class = RVQAudioConfig
    modality = "audio"

    def __init__(self, config: RVQAudioConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        backbone = {"channels": 1, "dim": cfg.dim, "base_channels": cfg.base_channels, "strides": cfg.strides,
                    "num_res_blocks": cfg.num_res_blocks, "kernel_size": cfg.kernel_size, "causal": cfg.causal,
                    "weight_norm": cfg.weight_norm}
        self.encoder = build_encoder(cfg, backbone)
        self.decoder = build_decoder(cfg, backbone)
        lookup_dim = cfg.codebook_dim or cfg.dim
        self.projections = None if cfg.codebook_dim is None else nn.ModuleList(
            _CodebookProjection(cfg.dim, cfg.codebook_dim) for _ in range(cfg.num_quantizers))
        # commitment is computed here (masked per item), so the layers' own is off; quantize_dropout only
        # lets the library's get_output_from_indices accept fewer than N codebooks
        self.quantizer = ResidualVQ(
            dim=lookup_dim, num_quantizers=cfg.num_quantizers, codebook_size=cfg.codebook_size, quantize_dropout=True,
            kmeans_init=cfg.kmeans_init, kmeans_iters=cfg.kmeans_iters, decay=cfg.decay,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code, commitment_weight=0.0, use_cosine_sim=cfg.cosine_codebooks,
        )
        self.discriminator = MultiScaleSTFTDiscriminator(channels=cfg.discriminator_channels) if cfg.use_discriminator else None

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def num_codebooks(self) -> int:
        """Codebooks trained (``num_quantizers``); any first k of them decode."""
        return self.cfg.num_quantizers

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        """Frames (token positions) per second."""
        return self.cfg.sample_rate / self.cfg.hop_length

    def num_frames(self, lengths: torch.Tensor | int) -> torch.Tensor:
        """Frames that hold audio of an item ``lengths`` samples long: ``ceil(lengths / hop_length)``."""
        return torch.div(torch.as_tensor(lengths) + self.hop_length - 1, self.hop_length, rounding_mode="floor")

    # ---- tokenizer protocol (mmgen.protocol) -------------------------------------------------------
    @property
    def generator_quantizers(self) -> int:
        return self.cfg.generator_quantizers or self.cfg.num_quantizers

    def token_spec(self) -> TokenSpec:
        """One training clip's frames, each holding ids of the first ``generator_quantizers`` codebooks."""
        return TokenSpec(content=DiscreteContent((self.codebook_size,) * self.generator_quantizers),
                         shape=(-(-self.cfg.clip_samples // self.hop_length),))

    def to_positions(self, ids_BtK: torch.Tensor) -> torch.Tensor:
        """The generator's codebooks: ``[B, t, generator_quantizers]``, or ``[B, t]`` for one codebook."""
        self._check_ids(ids_BtK)
        k = self.generator_quantizers
        if ids_BtK.shape[-1] < k:
            raise ValueError(f"ids has {ids_BtK.shape[-1]} codebooks; the generator models {k} (encode with num_quantizers>={k})")
        return ids_BtK[..., 0] if k == 1 else ids_BtK[..., :k]

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions back to ids ``[B, t, K]`` that :meth:`decode` takes."""
        return positions.unsqueeze(-1) if positions.dim() == 2 else positions

    # ---- encode / decode ------------------------------------------------------------------------------
    def _num_quantizers(self, num_quantizers: int | None) -> int:
        if num_quantizers is None:
            return self.num_codebooks
        if isinstance(num_quantizers, bool) or not isinstance(num_quantizers, int) or not 1 <= num_quantizers <= self.num_codebooks:
            raise ValueError(f"num_quantizers must be an int in [1, {self.num_codebooks}] (the codebooks trained), "
                             f"got {num_quantizers!r}")
        return num_quantizers

    def _prepare(self, audio_B1T: torch.Tensor, lengths: torch.Tensor | None, sample_rate: int | None) -> torch.Tensor:
        """Checked audio, zeroed beyond each item's length and right-padded with zeros to a multiple of hop_length."""
        check_audio(audio_B1T, sample_rate=self.sample_rate, given_rate=sample_rate, min_samples=self.hop_length)
        lengths = check_lengths(lengths, batch=audio_B1T.shape[0], max_len=audio_B1T.shape[-1])
        if lengths is not None:
            if int(lengths.min()) < self.hop_length:
                raise ValueError(f"lengths must be at least one frame ({self.hop_length} samples), got {lengths.tolist()}")
            valid_BT = torch.arange(audio_B1T.shape[-1], device=audio_B1T.device) < lengths.to(audio_B1T.device)[:, None]
            audio_B1T = audio_B1T * valid_BT[:, None]
        return F.pad(audio_B1T, (0, -audio_B1T.shape[-1] % self.hop_length))

    def _codebooks(self) -> torch.Tensor:
        """``[N, codebook_size, codebook_dim or dim]`` code vectors, level by level."""
        return self.quantizer.codebooks

    def _lookup_space(self, level: int, residual_BtD: torch.Tensor) -> torch.Tensor:
        """What level ``level``'s codebook is searched with: the residual, or its projection (factorised codes)."""
        return residual_BtD if self.projections is None else self.projections[level].inward(residual_BtD)

    def _nearest_code(self, level: int, residual_BtD: torch.Tensor) -> torch.Tensor:
        query_BtE, codebook_CE = self._lookup_space(level, residual_BtD), self._codebooks()[level]
        if self.cfg.cosine_codebooks:
            return (F.normalize(query_BtE, dim=-1) @ F.normalize(codebook_CE, dim=-1).t()).argmax(-1)
        return (codebook_CE.pow(2).sum(-1) - 2 * query_BtE @ codebook_CE.t()).argmin(-1)  # |q - c|² up to |q|²

    def _code_vectors(self, level: int, codes_BtE: torch.Tensor) -> torch.Tensor:
        """Level ``level``'s code vectors back in the latent space (through its outward projection, if factorised)."""
        return codes_BtE if self.projections is None else self.projections[level].outward(codes_BtE)

    def _nearest(self, latents_BDt: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """Residual nearest-code ids ``[B, t, K]`` of latents; reads the codebooks, changes nothing."""
        residual_BtD = latents_BDt.transpose(1, 2)
        ids = []
        for level in range(num_quantizers):
            ids_Bt = self._nearest_code(level, residual_BtD)
            residual_BtD = residual_BtD - self._code_vectors(level, self._codebooks()[level][ids_Bt])
            ids.append(ids_Bt)
        return torch.stack(ids, dim=-1)

    def encode(self, audio_B1T: torch.Tensor, *, lengths: torch.Tensor | None = None, sample_rate: int | None = None,
               num_quantizers: int | None = None) -> torch.Tensor:
        """Audio ``[B, 1, T]`` → ids ``[B, ceil(T / hop_length), K]`` (long), K = ``num_quantizers`` (default all).

        ``T`` need not be a multiple of ``hop_length``: the audio is padded on the right with zeros to one.
        ``lengths`` (samples per item of a padded batch) zeroes each item beyond its length first;
        :meth:`num_frames` gives the frames that hold audio. Changes no state in either mode.
        """
        k = self._num_quantizers(num_quantizers)
        audio_B1T = self._prepare(audio_B1T, lengths, sample_rate)
        with torch.no_grad():
            return self._nearest(self.encoder(audio_B1T), k)

    def _check_ids(self, ids_BtK: torch.Tensor) -> None:
        check_ids_in_range(ids_BtK, self.codebook_size, name="ids")
        if ids_BtK.dim() != 3 or ids_BtK.shape[1] < 1:
            raise ValueError(f"ids must have shape [B, t, K] (frames × codebooks), got {tuple(ids_BtK.shape)}")
        if not 1 <= ids_BtK.shape[-1] <= self.num_codebooks:
            raise ValueError(f"ids holds {ids_BtK.shape[-1]} codebooks, but this codec was trained with {self.num_codebooks}")

    def ids_to_latents(self, ids_BtK: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t, K]`` → quantised latents ``[B, dim, t]``: the sum of the first K codebooks' vectors."""
        self._check_ids(ids_BtK)
        codebooks = self._codebooks()
        latents_BtD = sum(self._code_vectors(k, codebooks[k][ids_BtK[..., k].long()]) for k in range(ids_BtK.shape[-1]))
        return latents_BtD.transpose(1, 2)

    def decode(self, ids_BtK: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t, K]`` (any K ≤ ``num_codebooks``) → audio ``[B, 1, t · hop_length]`` clamped to [-1, 1]."""
        return self.decoder(self.ids_to_latents(ids_BtK)).clamp(-1, 1)

    def _check_streamable(self) -> None:
        if not self.cfg.causal:
            raise ValueError("streaming needs a codec built with causal=True (SEANet encoder and decoder that look only at the past)")

    def streaming_encoder(self, *, num_quantizers: int | None = None) -> RVQStreamingEncoder:
        """Encode chunk by chunk (each a multiple of ``hop_length`` samples) with the offline ids; needs ``causal=True``."""
        self._check_streamable()
        return RVQStreamingEncoder(self, self._num_quantizers(num_quantizers))

    def streaming_decoder(self) -> RVQStreamingDecoder:
        """Decode chunk by chunk (any number of frames) with the offline audio; needs ``causal=True``."""
        self._check_streamable()
        return RVQStreamingDecoder(self)

    # ---- training ---------------------------------------------------------------------------------------
    def _quantizer_counts(self, batch: int, device: torch.device) -> torch.Tensor:
        """Codebooks each item uses: all N, or in training with dropout a uniform draw from 1..N for a fraction of items.

        The first batch (while k-means init is pending) uses all N, so no level is initialised from a few items.
        """
        full_B = torch.full((batch,), self.num_codebooks, device=device)
        initialised = all(bool(layer._codebook.initted) for layer in self.quantizer.layers)
        if not (self.training and self.cfg.quantizer_dropout and initialised):  # k-means init sees the whole first batch
            return full_B
        drawn_B = torch.randint(1, self.num_codebooks + 1, (batch,), device=device)
        dropped_B = torch.rand(batch, device=device) < self.cfg.quantizer_dropout_fraction
        return torch.where(dropped_B, drawn_B, full_B)

    def quantize(self, latents_BDt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised latents ``[B, dim, t]``, ids ``[B, t, N]`` (-1 where dropped) and the commitment loss.

        Training mode: quantizer dropout, EMA codebook updates, k-means init, dead-code replacement, and
        gradients to the encoder (the library's rotation trick). Eval mode: all N codebooks, no state change.
        """
        residual_BtD = latents_BDt.transpose(1, 2)
        if not self.training:
            ids_BtN = self._nearest(latents_BDt, self.num_codebooks)
            commits = []
            for level, codebook_CE in enumerate(self._codebooks()):
                codes_BtE = codebook_CE[ids_BtN[..., level]]
                commits.append((self._lookup_space(level, residual_BtD) - codes_BtE).pow(2).mean())  # as in training
                residual_BtD = residual_BtD - self._code_vectors(level, codes_BtE)
            return self.ids_to_latents(ids_BtN), ids_BtN, torch.stack(commits).mean()
        batch, frames, _ = residual_BtD.shape
        counts_B = self._quantizer_counts(batch, residual_BtD.device)
        quantized_BtD = torch.zeros_like(residual_BtD)
        ids, commits = [], []
        for level, layer in enumerate(self.quantizer.layers):
            keep_B = counts_B > level
            if not bool(keep_B.any()):
                ids.append(torch.full((batch, frames), -1, dtype=torch.long, device=residual_BtD.device))
                continue
            mask_Bt = None if bool(keep_B.all()) else keep_B[:, None].expand(batch, frames)
            query_BtE = self._lookup_space(level, residual_BtD)
            codes_BtE, ids_Bt, _ = layer(query_BtE, mask=mask_Bt)
            commits.append(F.mse_loss(query_BtE[keep_B], codes_BtE[keep_B].detach()))
            codes_BtD = self._code_vectors(level, codes_BtE)
            quantized_BtD = quantized_BtD + codes_BtD
            residual_BtD = residual_BtD - codes_BtD.detach()
            ids.append(ids_Bt)
        return quantized_BtD.transpose(1, 2), torch.stack(ids, dim=-1), torch.stack(commits).mean()

    def forward(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unclamped reconstruction ``[B, 1, T]``, ids ``[B, t, N]`` and commitment loss (see :meth:`quantize`)."""
        length = audio_B1T.shape[-1]
        quantized_BDt, ids_BtN, commit = self.quantize(self.encoder(self._prepare(audio_B1T, None, None)))
        return self.decoder(quantized_BDt)[..., :length], ids_BtN, commit

    def loss(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted L1 + multi-resolution STFT + log-mel + commitment (+ frame, adversarial and feature terms), and logs."""
        cfg = self.cfg
        length = audio_B1T.shape[-1]
        prepared_B1T = self._prepare(audio_B1T, None, None)
        quantized_BDt, ids_BtN, commit = self.quantize(self.encoder(prepared_B1T))
        recon_B1T, frames = decode_for_loss(self.decoder, quantized_BDt, prepared_B1T, cfg.frame_weight)
        recon_B1T = recon_B1T[..., :length]
        weights = {"l1": cfg.l1_weight, "stft": cfg.stft_weight, "mel": cfg.mel_weight, "commit": cfg.commitment_weight}
        parts = {**waveform_terms(recon_B1T, audio_B1T, weights=weights, sample_rate=cfg.sample_rate), "commit": commit}
        if frames is not None:
            parts["frames"], weights["frames"] = frames, cfg.frame_weight
        if self.discriminator is not None:
            parts["adversarial"], parts["feature"] = self._generator_adversarial(recon_B1T, audio_B1T)
            weights.update(adversarial=cfg.adversarial_weight, feature=cfg.feature_weight)
        total = sum(weights[name] * value for name, value in parts.items())
        used_BtN = ids_BtN >= 0
        logs = {name: float(value.detach()) for name, value in parts.items()}
        logs["si_sdr"] = si_sdr(recon_B1T.detach().clamp(-1, 1), audio_B1T)
        logs["quantizers"] = float(used_BtN[:, 0].sum(-1).float().mean())
        logs["usage"] = sum(ids_BtN[..., k][used_BtN[..., k]].unique().numel() for k in range(self.num_codebooks)) / (
            self.num_codebooks * self.codebook_size)
        return total, logs

    def _generator_adversarial(self, recon_B1T: torch.Tensor, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hinge adversarial and relative feature-matching terms; the discriminator's weights get no gradient."""
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        fake = functional_call(self.discriminator, frozen, (recon_B1T,))
        with torch.no_grad():
            real = self.discriminator(audio_B1T)
        adversarial = torch.stack([F.relu(1 - logits).mean() for logits, _ in fake]).mean()
        feature = torch.stack([
            F.l1_loss(f_fake, f_real) / f_real.abs().mean().clamp_min(1e-8)
            for (_, fakes), (_, reals) in zip(fake, real) for f_fake, f_real in zip(fakes, reals)
        ]).mean()
        return adversarial, feature

    def discriminator_loss(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the MS-STFT discriminator on real audio vs the codec's reconstruction (all N codebooks).

        The reconstruction is made without gradients and without touching the codebooks, so only the
        discriminator learns from this loss (see the module docstring for how a trainer combines it).
        """
        if self.discriminator is None:
            raise ValueError("discriminator_loss needs a codec built with use_discriminator=True")
        length = audio_B1T.shape[-1]
        with torch.no_grad():
            ids_BtN = self._nearest(self.encoder(self._prepare(audio_B1T, None, None)), self.num_codebooks)
            recon_B1T = self.decoder(self.ids_to_latents(ids_BtN))[..., :length]
        real = torch.stack([F.relu(1 - logits).mean() for logits, _ in self.discriminator(audio_B1T)]).mean()
        fake = torch.stack([F.relu(1 + logits).mean() for logits, _ in self.discriminator(recon_B1T)]).mean()
        return real + fake, {"disc_real": float(real.detach()), "disc_fake": float(fake.detach())}

    def codebook_usage(self) -> list[dict[str, float]]:
        """Per level, from the training EMA of assignments: ``usage`` (share of codes not below the dead-code
        threshold, i.e. that the library would keep) and ``perplexity`` of the assignment distribution."""
        levels = []
        for layer in self.quantizer.layers:
            counts_C = layer._codebook.cluster_size.flatten()
            p_C = counts_C / counts_C.sum().clamp_min(1e-12)
            perplexity = float(torch.exp(-(p_C * p_C.clamp_min(1e-12).log()).sum()))
            live_C = counts_C >= self.cfg.threshold_ema_dead_code if self.cfg.threshold_ema_dead_code > 0 else counts_C > 0
            levels.append({"usage": float(live_C.float().mean()), "perplexity": perplexity})
        return levels


class RVQStreamingEncoder:
    """Audio chunks ``[B, 1, n]`` (n a multiple of ``hop_length``) → ids ``[B, n / hop_length, K]``, as offline."""

    def __init__(self, codec: RVQAudioCodec, num_quantizers: int) -> None:
        self.codec, self.num_quantizers = codec, num_quantizers
        self.stream: SEANetStream = codec.encoder.streaming()

    def step(self, audio_B1n: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.codec._nearest(self.stream.step(audio_B1n), self.num_quantizers)


class RVQStreamingDecoder:
    """Id chunks ``[B, n, K]`` → audio ``[B, 1, n · hop_length]`` in [-1, 1], as offline."""

    def __init__(self, codec: RVQAudioCodec) -> None:
        self.codec = codec
        self.stream: SEANetStream = codec.decoder.streaming()

    def step(self, ids_BnK: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.stream.step(self.codec.ids_to_latents(ids_BnK)).clamp(-1, 1)
