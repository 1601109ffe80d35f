"""Which encoder and decoder a codec runs: the fields every codec config shares, and the builders.

Encoders (``encoder_type``): ``"seanet"`` (strided convolutions over the waveform, EnCodec/DAC; causal and streamable) or
``"stft"`` (:class:`~tokenizers_audio.spectral.SpectralEncoder`: ConvNeXt over log magnitudes and phase
advances). Decoders (``decoder_type``): ``"seanet"`` (transposed convolutions), ``"vocos"`` (inverse STFT of a predicted
magnitude and absolute phase, WavTokenizer) or ``"vocos-if"`` (inverse STFT of a predicted magnitude and
instantaneous frequency: coherent partials from tokens that carry no phase; trained with
``frame_weight`` > 0). With ``"stft"`` or a vocos decoder only the product of ``strides`` matters: it is
the hop, and the STFT has ``n_fft = 4 · hop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .checks import require_positive_int
from .seanet import SEANetDecoder, SEANetEncoder
from .spectral import InstantaneousFrequencyDecoder, SpectralEncoder, VocosDecoder

__all__ = ["ENCODERS", "DECODERS", "FrontendFields", "build_encoder", "build_decoder", "decode_for_loss"]

ENCODERS = ("seanet", "stft")
DECODERS = ("seanet", "vocos", "vocos-if")


@dataclass
class FrontendFields:
    """Encoder and decoder choice and sizes (see the module docstring); ``frame_weight`` weighs the
    ``vocos-if`` decoder's direct loss on log magnitudes and phase advances.

    ``pad_mode`` … ``noise`` are the SEANet switches of published codecs (EnCodec, DAC, SNAC; see
    :mod:`tokenizers_audio.seanet`), all off in our own presets.
    """

    encoder_type: str = "seanet"
    decoder_type: str = "seanet"
    encoder_dim: int = 128
    encoder_layers: int = 3
    decoder_dim: int = 256
    decoder_layers: int = 6
    decoder_intermediate_dim: int | None = None
    frame_weight: float = 0.0
    pad_mode: str = "zeros"
    conv_shortcut: bool = False
    lstm_layers: int = 0
    activation: str = "elu"
    dilation_base: int = 2
    compress: int = 2
    residual_kernel_size: int = 3
    depthwise: bool = False
    attention_window: int = 0
    latent_kernel_size: int | None = None
    latent_activation: bool = True
    decoder_channels: int | None = None
    final_activation: str = "none"
    noise: bool = False

    def seanet_switches(self, part: str) -> dict:
        """The switches a SEANet ``part`` ("encoder" or "decoder") takes."""
        shared = {name: getattr(self, name) for name in ("pad_mode", "conv_shortcut", "lstm_layers", "activation",
                                                          "dilation_base", "compress", "residual_kernel_size", "depthwise",
                                                          "attention_window")}
        own = ("latent_kernel_size", "latent_activation") if part == "encoder" else ("decoder_channels", "final_activation", "noise")
        return {**shared, **{name: getattr(self, name) for name in own}}

    def check_frontend(self, *, hop_length: int, causal: bool = False) -> None:
        if self.encoder_type not in ENCODERS:
            raise ValueError(f"encoder_type must be one of {ENCODERS}, got {self.encoder_type!r}")
        if self.decoder_type not in DECODERS:
            raise ValueError(f"decoder_type must be one of {DECODERS}, got {self.decoder_type!r}")
        for name in ("encoder_dim", "encoder_layers", "decoder_dim", "decoder_layers"):
            require_positive_int(name, getattr(self, name))
        for name in ("latent_kernel_size", "decoder_channels"):
            if getattr(self, name) is not None:
                require_positive_int(name, getattr(self, name))
        if self.decoder_intermediate_dim is not None:
            require_positive_int("decoder_intermediate_dim", self.decoder_intermediate_dim)
        if not float(self.frame_weight) >= 0:
            raise ValueError(f"frame_weight must be >= 0, got {self.frame_weight!r}")
        if self.frame_weight > 0 and self.decoder_type != "vocos-if":
            raise ValueError(f"frame_weight={self.frame_weight} trains the 'vocos-if' decoder's frames; decoder_type is {self.decoder_type!r}")
        spectral = self.encoder_type == "stft" or self.decoder_type != "seanet"
        if spectral and hop_length % 2:
            raise ValueError(f"hop_length={hop_length} (the product of strides) must be even for an STFT encoder or vocos "
                             f"decoder (n_fft = 4 · hop, 'same' padding)")
        if causal and spectral:
            raise ValueError(f"causal=True needs encoder_type='seanet' and decoder_type='seanet' (they stream); got "
                             f"encoder_type={self.encoder_type!r}, decoder_type={self.decoder_type!r}")


def build_encoder(cfg: FrontendFields, seanet_args: dict) -> nn.Module:
    """The configured encoder: waveform ``[B, 1, T]`` → latents ``[B, dim, T / hop]``."""
    if cfg.encoder_type == "stft":
        return SpectralEncoder(dim=seanet_args["dim"], hop_length=_hop(seanet_args), width=cfg.encoder_dim,
                               num_layers=cfg.encoder_layers)
    return SEANetEncoder(**seanet_args, **cfg.seanet_switches("encoder"))


def build_decoder(cfg: FrontendFields, seanet_args: dict) -> nn.Module:
    """The configured decoder: latents ``[B, dim, t]`` → waveform ``[B, 1, t · hop]`` (unclamped)."""
    if cfg.decoder_type == "seanet":
        return SEANetDecoder(**seanet_args, **cfg.seanet_switches("decoder"))
    kind = InstantaneousFrequencyDecoder if cfg.decoder_type == "vocos-if" else VocosDecoder
    return kind(dim=seanet_args["dim"], hop_length=_hop(seanet_args), width=cfg.decoder_dim, num_layers=cfg.decoder_layers,
                intermediate_dim=cfg.decoder_intermediate_dim)


def _hop(seanet_args: dict) -> int:
    return math.prod(seanet_args["strides"])


def decode_for_loss(decoder: nn.Module, latents_BDt: torch.Tensor, audio_B1T: torch.Tensor,
                    frame_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reconstruction for a training loss and, with ``frame_weight`` > 0, the decoder's frame loss (one decoder pass)."""
    if frame_weight > 0:
        frames = decoder.frames(latents_BDt)
        return decoder.render(frames), decoder.frame_loss(frames, audio_B1T)
    return decoder(latents_BDt), None
