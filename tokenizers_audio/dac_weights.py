"""DAC's published weights as an :class:`~tokenizers_audio.rvq.RVQAudioCodec` (``mmgen convert --from dac``).

Reads the transformers layout that the hub holds as safetensors (``descript/dac_16khz``, ``_24khz``,
``_44khz``: ``config.json`` + ``model.safetensors``). DAC is a SEANet-shaped codec with other parts:
Snake activations, three full-width kernel-7 residual units per level at dilations 1, 3, 9, a kernel-3
conv into the latent, a decoder that starts at its own width and ends in ``tanh``, and factorised
codes: each level projects the residual to ``codebook_dim`` (8), picks the code of highest cosine
similarity, and projects that code (as stored, not normalised) back. Each of these is a switch of
:class:`~tokenizers_audio.rvq.RVQAudioConfig`. Weight norm, where a file keeps it, is folded into plain
weights (``g · v / ‖v‖``), so the converted codec has none; ``mmgen`` fine-tuning then trains plain convs.

Codes and waveforms equal DAC's for audio of whole frames (a multiple of ``hop_length``), as in
transformers' ``DacModel``, which takes no other lengths either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmgen.weight_maps import Rule, assign_weights, check_model_type, count_levels, fold_weight_norm

from .published import factorised_code_rules, vq_training_state
from .rvq import RVQAudioCodec, RVQAudioConfig

__all__ = ["dac_config", "dac_rules", "rvq_codec_from_dac"]

RES_UNITS = 3  # DAC's residual units per level, dilations 1, 3, 9


def _unit_rules(source: str, target: str) -> list[Rule]:
    return [Rule(f"{source}.snake1.alpha", f"{target}.inner.0.alpha"), Rule(f"{source}.conv1.{{p}}", f"{target}.inner.1.conv.{{p}}"),
            Rule(f"{source}.snake2.alpha", f"{target}.inner.2.alpha"), Rule(f"{source}.conv2.{{p}}", f"{target}.inner.3.conv.{{p}}")]


def dac_rules(num_levels: int) -> list[Rule]:
    """DAC's names → ours for ``num_levels`` strides: our stacks number their layers, DAC nests them in blocks."""
    per_level = RES_UNITS + 2
    rules = [Rule("encoder.conv1.{p}", "encoder.net.0.conv.{p}"), Rule("decoder.conv1.{p}", "decoder.net.0.conv.{p}")]
    for b in range(num_levels):
        first = 1 + per_level * b
        for u in range(RES_UNITS):
            rules += _unit_rules(f"encoder.block.{b}.res_unit{u + 1}", f"encoder.net.{first + u}")
            rules += _unit_rules(f"decoder.block.{b}.res_unit{u + 1}", f"decoder.net.{first + 2 + u}")
        rules += [Rule(f"encoder.block.{b}.snake1.alpha", f"encoder.net.{first + RES_UNITS}.alpha"),
                  Rule(f"encoder.block.{b}.conv1.{{p}}", f"encoder.net.{first + RES_UNITS + 1}.conv.{{p}}"),
                  Rule(f"decoder.block.{b}.snake1.alpha", f"decoder.net.{first}.alpha"),
                  Rule(f"decoder.block.{b}.conv_t1.{{p}}", f"decoder.net.{first + 1}.conv.{{p}}")]
    last = 1 + per_level * num_levels
    for part in ("encoder", "decoder"):
        rules += [Rule(f"{part}.snake1.alpha", f"{part}.net.{last}.alpha"), Rule(f"{part}.conv2.{{p}}", f"{part}.net.{last + 1}.conv.{{p}}")]
    return rules + factorised_code_rules(inward="projections.{k}.inward", outward="projections.{k}.outward",
                                         codebook="quantizer.layers.{k}._codebook.embed")


def dac_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> RVQAudioConfig:
    """Our codec config for a DAC ``config.json`` (transformers' ``DacConfig`` fields)."""
    check_model_type(config, "dac", source="DAC")
    down = tuple(config.get("downsampling_ratios", (2, 4, 8, 8)))
    up = tuple(config.get("upsampling_ratios", tuple(reversed(down))))
    if up != tuple(reversed(down)):
        raise ValueError(f"this DAC config has upsampling_ratios={list(up)}, not the reverse of downsampling_ratios={list(down)}: "
                         "mmgen's decoder mirrors the encoder's strides")
    sample_rate = int(config.get("sampling_rate", 16000))
    return RVQAudioConfig(
        sample_rate=sample_rate, clip_samples=sample_rate, strides=down, base_channels=config.get("encoder_hidden_size", 64),
        dim=config.get("hidden_size", 1024), num_res_blocks=RES_UNITS, kernel_size=7, weight_norm=False,
        activation="snake", dilation_base=3, compress=1, residual_kernel_size=7, latent_kernel_size=3,
        decoder_channels=config.get("decoder_hidden_size", 1536), final_activation="tanh",
        codebook_size=config.get("codebook_size", 1024), codebook_dim=config.get("codebook_dim", 8), cosine_codebooks=True,
        num_quantizers=count_levels(weights, "quantizer.quantizers.{k}.codebook.weight", source="DAC"), quantizer_dropout_fraction=float(config.get("quantizer_dropout", 0.0)),
    )


def rvq_codec_from_dac(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> RVQAudioCodec:
    """An :class:`RVQAudioCodec` computing what the DAC of ``config`` and ``weights`` computes (float32, eval mode)."""
    weights = fold_weight_norm(weights)
    codec = RVQAudioCodec(dac_config(config, weights))
    codebooks = vq_training_state(weights, levels=codec.num_codebooks, codebook_size=codec.codebook_size,
                                  target="quantizer.layers.{k}._codebook")
    assign_weights(codec, weights, dac_rules(len(codec.cfg.strides)), source="DAC", extra=codebooks)
    return codec.eval()
