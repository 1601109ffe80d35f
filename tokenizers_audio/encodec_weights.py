"""EnCodec's published weights as an :class:`~tokenizers_audio.rvq.RVQAudioCodec` (``mmgen convert --from encodec``).

Reads the transformers layout, which is what the hub holds as safetensors (``facebook/encodec_24khz``,
``facebook/encodec_32khz``: ``config.json`` + ``model.safetensors``). EnCodec is a SEANet codec with
residual VQ, so the conversion is a renaming plus three SEANet switches: reflect padding, 1×1 conv
shortcuts in the residual units, and the LSTM at the narrowest point. Its codebooks are plain
Euclidean ones, which ``ResidualVQ`` holds with a batch axis in front.

The converted codec gives EnCodec's codes and waveforms for audio of whole frames (a multiple of
``hop_length`` samples). For other lengths the last frame differs: EnCodec reflects the signal into
the padding of that frame, our ``encode`` pads it with zeros. Settings the codec has no switch for are
refused by name: stereo input and per-chunk loudness normalisation (the 48 kHz model), time group
norm, chunked encoding with overlap, and kernel or compression sizes other than SEANet's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmgen.weight_maps import Rule, assign_weights, check_model_type, count_levels, modern_weight_norm_names

from .rvq import RVQAudioCodec, RVQAudioConfig

__all__ = ["ENCODEC_RULES", "encodec_config", "rvq_codec_from_encodec"]

_FIXED = {"audio_channels": 1, "normalize": False, "norm_type": "weight_norm", "compress": 2, "residual_kernel_size": 3,
          "dilation_growth_rate": 2, "trim_right_ratio": 1.0, "chunk_length_s": None, "overlap": None}


def _codebook_tensor(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.unsqueeze(0)  # ResidualVQ's codebooks carry a leading (heads) axis


ENCODEC_RULES = [
    *(rule for part in ("encoder", "decoder") for rule in (
        Rule(f"{part}.layers.{{i}}.conv.{{rest}}", f"{part}.net.{{i}}.conv.{{rest}}"),
        Rule(f"{part}.layers.{{i}}.block.{{j}}.conv.{{rest}}", f"{part}.net.{{i}}.inner.{{j}}.conv.{{rest}}"),
        Rule(f"{part}.layers.{{i}}.shortcut.conv.{{rest}}", f"{part}.net.{{i}}.shortcut.conv.{{rest}}"),
        Rule(f"{part}.layers.{{i}}.lstm.{{rest}}", f"{part}.net.{{i}}.lstm.{{rest}}"),
    )),
    Rule("quantizer.layers.{k}.codebook.embed", "quantizer.layers.{k}._codebook.embed", _codebook_tensor),
    Rule("quantizer.layers.{k}.codebook.embed_avg", "quantizer.layers.{k}._codebook.embed_avg", _codebook_tensor),
    Rule("quantizer.layers.{k}.codebook.cluster_size", "quantizer.layers.{k}._codebook.cluster_size", _codebook_tensor),
    Rule("quantizer.layers.{k}.codebook.inited", "quantizer.layers.{k}._codebook.initted", lambda t: t.reshape(()).bool()),
]


def encodec_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> RVQAudioConfig:
    """Our codec config for an EnCodec ``config.json`` (transformers' ``EncodecConfig`` fields)."""
    check_model_type(config, "encodec", source="EnCodec")
    unsupported = [f"{name}={config[name]!r} (supported: {value!r})" for name, value in _FIXED.items()
                   if name in config and config[name] != value]
    if config.get("pad_mode", "reflect") not in ("reflect", "constant"):
        unsupported.append(f"pad_mode={config['pad_mode']!r} (supported: 'reflect', or 'constant' zeros)")
    kernel = config.get("kernel_size", 7)
    if config.get("last_kernel_size", kernel) != kernel:
        unsupported.append(f"last_kernel_size={config['last_kernel_size']!r} (supported: equal to kernel_size={kernel})")
    dim = config.get("hidden_size", 128)
    if config.get("codebook_dim") not in (None, dim):
        unsupported.append(f"codebook_dim={config['codebook_dim']!r} (supported: equal to hidden_size={dim})")
    if unsupported:
        raise ValueError(f"this EnCodec config has settings mmgen's RVQAudioCodec does not convert: {', '.join(unsupported)}")
    sample_rate = int(config.get("sampling_rate", 24000))
    return RVQAudioConfig(
        sample_rate=sample_rate, clip_samples=sample_rate, strides=tuple(reversed(config.get("upsampling_ratios", (8, 5, 4, 2)))),
        base_channels=config.get("num_filters", 32), dim=dim, num_res_blocks=config.get("num_residual_layers", 1),
        kernel_size=kernel, causal=bool(config.get("use_causal_conv", True)), weight_norm=True,
        pad_mode="reflect" if config.get("pad_mode", "reflect") == "reflect" else "zeros",
        conv_shortcut=bool(config.get("use_conv_shortcut", True)), lstm_layers=config.get("num_lstm_layers", 2),
        codebook_size=config.get("codebook_size", 1024), num_quantizers=count_levels(weights, "quantizer.layers.{k}.codebook.embed", source="EnCodec"),
    )


def rvq_codec_from_encodec(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> RVQAudioCodec:
    """An :class:`RVQAudioCodec` computing what the EnCodec of ``config`` and ``weights`` computes (float32, eval mode)."""
    weights = modern_weight_norm_names(weights)
    codec = RVQAudioCodec(encodec_config(config, weights))
    assign_weights(codec, weights, ENCODEC_RULES, source="EnCodec")
    return codec.eval()

