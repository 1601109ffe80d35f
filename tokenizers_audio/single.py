"""WavTokenizer-style single-codebook audio codec: one id per latent frame, an inverse-STFT decoder.

A SEANet encoder maps a waveform to latents ``[B, dim, t]`` (hop 320: 50 frames/s at 16 kHz), one
``VectorQuantize`` codebook (k-means init, EMA, dead-code expiry; 4096 codes as WavTokenizer) gives one
id per frame, and a Vocos-style decoder (ConvNeXt blocks at the frame rate, then an inverse STFT with
``hop = hop_length`` and ``n_fft = 4 · hop_length``) turns the codes back into exactly ``t · hop_length``
samples. One codebook means one token per step for a next-token generator, with no codebook pattern.

With ``encoder_type="stft"`` and ``decoder_type="vocos-if"`` (:mod:`tokenizers_audio.frontends`) the tokens need not
carry phase: the decoder predicts each bin's instantaneous frequency and sums it into a coherent phase.
That is what the tones preset uses; one codebook cannot hold a pitch and its phase at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.hub import PretrainedModel
from mmgen.metrics import codebook_usage
from mmgen.protocol import TokenSpec
from mmgen.tokens import DiscreteContent

from .checks import check_ids_in_range
from .codec import CodecConfig, WaveformCodecMixin, build_codebook, quantize_frames
from .frontends import build_decoder, build_encoder

__all__ = ["SingleCodebookAudioConfig", "SingleCodebookAudioCodec"]

INVERSE_STFT_DECODERS = ("vocos", "vocos-if")


@dataclass
class SingleCodebookAudioConfig(CodecConfig):
    """A :class:`CodecConfig` whose decoder is an inverse STFT: ``"vocos"`` (absolute phase, WavTokenizer) or
    ``"vocos-if"`` (instantaneous frequency), ``decoder_layers`` ConvNeXt blocks of width ``decoder_dim``."""

    decoder_type: str = "vocos"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_type not in INVERSE_STFT_DECODERS:
            raise ValueError(f"decoder_type must be one of {INVERSE_STFT_DECODERS} (an inverse-STFT decoder), got {self.decoder_type!r}")

    @property
    def n_fft(self) -> int:
        """The decoder's inverse-STFT size (4 · hop)."""
        return 4 * self.hop_length


class SingleCodebookAudioCodec(WaveformCodecMixin, PretrainedModel):
    """``SEANetEncoder → VectorQuantize → ConvNeXt backbone → iSTFT head``; tokens are ids ``[B, t]``.

    Train with ``loss, logs = codec.loss(audio)``.
    """

    config_class = SingleCodebookAudioConfig

    def __init__(self, config: SingleCodebookAudioConfig | dict) -> None:
        super().__init__()
        cfg = self._register_typed_config(config)
        self.cfg = cfg
        self.encoder = build_encoder(cfg, self._encoder_args())
        self.quantizer = build_codebook(cfg)
        self.decoder = build_decoder(cfg, self._encoder_args())

    @property
    def num_tokens(self) -> int:
        """Ids of a training clip (what :meth:`token_spec` holds)."""
        return self.cfg.clip_frames

    # ---- tokens ------------------------------------------------------------------------------
    def _latents_to_frames(self, z_BDt: torch.Tensor, *, update: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q_BtD, ids_Bt, commit = quantize_frames(self.quantizer, z_BDt.transpose(1, 2), update=update,
                                                 dead_code_fraction=self.cfg.dead_code_fraction)
        return q_BtD.transpose(1, 2), ids_Bt, commit

    @torch.no_grad()
    def encode(self, audio_B1T: torch.Tensor, *, lengths: torch.Tensor | None = None,
               sample_rate: int | None = None) -> torch.Tensor:
        """Waveforms ``[B, 1, T]`` in [-1, 1] → ids ``[B, t]`` (long), ``t`` = T right-padded to whole frames / hop.

        Samples beyond an item's ``lengths`` are zeroed first. Changes no state in either mode.
        """
        audio_B1T = self.prepare_audio(audio_B1T, lengths=lengths, sample_rate=sample_rate)
        return self._latents_to_frames(self.encoder(audio_B1T), update=False)[1]

    def _check_ids(self, ids: torch.Tensor, *, name: str = "ids") -> torch.Tensor:
        check_ids_in_range(ids, self.cfg.codebook_size, name=name)
        if ids.dim() != 2 or ids.shape[1] < 1:
            raise ValueError(f"{name} must have shape [B, t] (one id per latent frame), got {tuple(ids.shape)}")
        return ids.long()

    def ids_to_latents(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t]`` → quantised latents ``[B, dim, t]``."""
        return self.quantizer.get_output_from_indices(self._check_ids(ids)).transpose(1, 2)

    def decode_latents(self, latents_BDt: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, dim, t]`` → waveforms ``[B, 1, t · hop_length]`` (unclamped)."""
        if not isinstance(latents_BDt, torch.Tensor) or latents_BDt.dim() != 3 or latents_BDt.shape[1] != self.cfg.dim:
            got = tuple(latents_BDt.shape) if isinstance(latents_BDt, torch.Tensor) else type(latents_BDt).__name__
            raise ValueError(f"latents must have shape [B, {self.cfg.dim}, t] (dim channels per frame), got {got}")
        return self.decoder(latents_BDt)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t]`` → waveforms ``[B, 1, t · hop_length]`` clamped to [-1, 1]."""
        return self.decode_latents(self.ids_to_latents(ids)).clamp(-1, 1)

    # ---- tokenizer protocol (mmgen.protocol) ---------------------------------------------------
    def token_spec(self) -> TokenSpec:
        """A 1D sequence of ``clip_frames`` ids from one codebook."""
        return TokenSpec(content=DiscreteContent((self.cfg.codebook_size,)), shape=(self.cfg.clip_frames,))

    def to_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, t]`` are already position-major."""
        return self._check_ids(ids)

    def from_positions(self, positions: torch.Tensor) -> torch.Tensor:
        return self._check_ids(positions, name="positions")

    # ---- training ------------------------------------------------------------------------------
    def forward(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prepared waveforms (whole frames) → unclamped reconstruction, ids ``[B, t]``, commitment loss.

        In training mode the codebook initialises (k-means, first call), updates by EMA and expires dead codes.
        """
        q_BDt, ids_Bt, commit = self._latents_to_frames(self.encoder(audio_B1T), update=self.training)
        return self.decode_latents(q_BDt), ids_Bt, commit

    def loss(self, audio_B1T: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted waveform L1 + multi-resolution STFT + log-mel L1 (+ frame loss) + commitment, and float logs."""
        audio_B1T = self.prepare_audio(audio_B1T)
        q_BDt, ids_Bt, commit = self._latents_to_frames(self.encoder(audio_B1T), update=self.training)
        _, terms = self.decode_with_terms(q_BDt, audio_B1T)
        logs = {name: float(value.detach()) for name, value in terms.items()}
        logs.update(commit=float(commit.detach()), usage=codebook_usage(ids_Bt, self.cfg.codebook_size)["usage"])
        return self.weighted_loss(terms, commit), logs
