"""SNAC's published weights as a :class:`~tokenizers_audio.multiscale.MultiScaleAudioCodec` (``mmgen convert --from snac``).

Reads the ``snac`` package's layout, which is what the hub holds (``hubertsiuzdak/snac_24khz``,
``_32khz``, ``_44khz``: ``config.json`` with the ``SNAC`` constructor's arguments + ``pytorch_model.bin``,
a pickle of tensors). SNAC is DAC's codec made multi-rate: its residual VQ level k average-pools the
residual by ``vq_strides[k]``, picks a factorised l2-normalised code and repeats it back, which is
what our multi-scale codec does. Its other parts are SEANet switches: DAC's Snake units, depthwise
convolutions, windowed attention at the narrowest point, no activation before the latent conv and a
noise injection after each upsampling (random at every decode, as in SNAC: seed torch's generator for a
repeatable one). Weight norm is folded into plain weights.

Codes and waveforms equal SNAC's for audio SNAC does not pad: a multiple of ``hop_length ·
lcm(vq_strides[0], attn_window_size)`` samples (``SNAC.preprocess`` zero-pads to that; our ``encode``
pads to whole frames and the coarse levels' last window averages what it holds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from mmgen.weight_maps import Rule, WeightsMismatchError, assign_weights, count_levels, fold_weight_norm

from .multiscale import MultiScaleAudioCodec, MultiScaleAudioConfig
from .published import factorised_code_rules, vq_training_state

__all__ = ["multiscale_codec_from_snac", "snac_config", "snac_rules"]

RES_UNITS = 3  # per level, dilations 1, 3, 9
_KNOWN = {"sampling_rate", "encoder_dim", "encoder_rates", "latent_dim", "decoder_dim", "decoder_rates", "attn_window_size",
          "codebook_size", "codebook_dim", "vq_strides", "noise", "depthwise"}


def _unit_rules(source: str, target: str) -> list[Rule]:
    return [Rule(f"{source}.block.{j}.{{p}}", f"{target}.inner.{j}.{{p}}") for j in (0, 2)] + [
        Rule(f"{source}.block.{j}.{{p}}", f"{target}.inner.{j}.conv.{{p}}") for j in (1, 3)]


def snac_rules(num_levels: int, *, attention: bool, depthwise: bool, noise: bool) -> list[Rule]:
    """SNAC's names → ours: its nested ``block`` / ``model`` Sequentials against our numbered stacks."""
    attn = int(attention)
    rules = [Rule("encoder.block.0.{p}", "encoder.net.0.conv.{p}")]
    for b in range(num_levels):
        first = 1 + (RES_UNITS + 2) * b
        rules += [rule for u in range(RES_UNITS) for rule in _unit_rules(f"encoder.block.{b + 1}.block.{u}", f"encoder.net.{first + u}")]
        rules += [Rule(f"encoder.block.{b + 1}.block.{RES_UNITS}.alpha", f"encoder.net.{first + RES_UNITS}.alpha"),
                  Rule(f"encoder.block.{b + 1}.block.{RES_UNITS + 1}.{{p}}", f"encoder.net.{first + RES_UNITS + 1}.conv.{{p}}")]
    last = 1 + (RES_UNITS + 2) * num_levels
    if attention:
        rules += _attention_rules(f"encoder.block.{num_levels + 1}", f"encoder.net.{last}")
    rules.append(Rule(f"encoder.block.{num_levels + 1 + attn}.{{p}}", f"encoder.net.{last + attn}.conv.{{p}}"))

    entry = 2 if depthwise else 1
    rules += [Rule(f"decoder.model.{i}.{{p}}", f"decoder.net.{i}.conv.{{p}}") for i in range(entry)]
    if attention:
        rules += _attention_rules(f"decoder.model.{entry}", f"decoder.net.{entry}")
    per_level = 2 + int(noise) + RES_UNITS
    for b in range(num_levels):
        source, first = f"decoder.model.{entry + attn + b}.block", entry + attn + per_level * b
        rules += [Rule(f"{source}.0.alpha", f"decoder.net.{first}.alpha"), Rule(f"{source}.1.{{p}}", f"decoder.net.{first + 1}.conv.{{p}}")]
        if noise:
            rules.append(Rule(f"{source}.2.linear.{{p}}", f"decoder.net.{first + 2}.scale.conv.{{p}}"))
        units = first + 2 + int(noise)
        rules += [rule for u in range(RES_UNITS) for rule in _unit_rules(f"{source}.{2 + int(noise) + u}", f"decoder.net.{units + u}")]
    tail_source, tail = entry + attn + num_levels, entry + attn + per_level * num_levels
    rules += [Rule(f"decoder.model.{tail_source}.alpha", f"decoder.net.{tail}.alpha"),
              Rule(f"decoder.model.{tail_source + 1}.{{p}}", f"decoder.net.{tail + 1}.conv.{{p}}")]
    return rules + factorised_code_rules(inward="quantizer.levels.{k}.project_in", outward="quantizer.levels.{k}.project_out",
                                         codebook="quantizer.levels.{k}._codebook.embed")


def _attention_rules(source: str, target: str) -> list[Rule]:
    return [Rule(f"{source}.norm.{{p}}", f"{target}.norm.{{p}}"), Rule(f"{source}.to_qkv.weight", f"{target}.qkv.weight"),
            Rule(f"{source}.to_out.weight", f"{target}.out.weight")]


def snac_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> MultiScaleAudioConfig:
    """Our codec config for a SNAC ``config.json`` (the ``SNAC`` constructor's arguments)."""
    unknown = sorted(set(config) - _KNOWN)
    if unknown:
        raise ValueError(f"config.json holds settings the SNAC conversion does not know: {unknown}")
    rates = tuple(config.get("encoder_rates", (3, 3, 7, 7)))
    if tuple(config.get("decoder_rates", tuple(reversed(rates)))) != tuple(reversed(rates)):
        raise ValueError(f"decoder_rates={config['decoder_rates']} is not the reverse of encoder_rates={list(rates)}: "
                         "mmgen's decoder mirrors the encoder's strides")
    base = config.get("encoder_dim", 64)
    width = base * 2 ** len(rates)
    latent = config.get("latent_dim") or width
    depthwise = bool(config.get("depthwise", True))
    if depthwise and latent != width:
        raise ValueError(f"latent_dim={latent} differs from the encoder's width {width}; SNAC's depthwise latent conv keeps it")
    window = config.get("attn_window_size", 32) or 0
    vq_strides = tuple(config.get("vq_strides", (8, 4, 2, 1)))
    sample_rate = int(config.get("sampling_rate", 44100))
    hop = math.prod(rates)
    return MultiScaleAudioConfig(
        sample_rate=sample_rate, clip_samples=hop * math.lcm(vq_strides[0], window or 1) * 8, strides=rates,
        base_channels=base, dim=latent, num_res_blocks=RES_UNITS, kernel_size=7, weight_norm=False,
        codebook_size=config.get("codebook_size", 4096), codebook_dim=config.get("codebook_dim", 8), cosine_codebooks=True,
        vq_strides=vq_strides, activation="snake", dilation_base=3, compress=1, residual_kernel_size=7, depthwise=depthwise,
        attention_window=window, latent_activation=False, decoder_channels=config.get("decoder_dim", 1536),
        final_activation="tanh", noise=bool(config.get("noise", True)),
    )


def multiscale_codec_from_snac(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> MultiScaleAudioCodec:
    """A :class:`MultiScaleAudioCodec` computing what the SNAC of ``config`` and ``weights`` computes (float32, eval mode)."""
    weights = fold_weight_norm(weights)
    cfg = snac_config(config, weights)
    levels = count_levels(weights, "quantizer.quantizers.{k}.codebook.weight", source="SNAC")
    if levels != len(cfg.vq_strides):
        raise WeightsMismatchError(f"the SNAC weights hold {levels} codebooks, but vq_strides={list(cfg.vq_strides)} "
                                   f"names {len(cfg.vq_strides)} levels")
    codec = MultiScaleAudioCodec(cfg)
    codebooks = vq_training_state(weights, levels=levels, codebook_size=cfg.codebook_size, target="quantizer.levels.{k}._codebook")
    rules = snac_rules(len(cfg.strides), attention=cfg.attention_window > 0, depthwise=cfg.depthwise, noise=cfg.noise)
    assign_weights(codec, weights, rules, source="SNAC", ignored=["{part}.{i}.rel_pos.inv_freq", "{a}.{b}.{i}.rel_pos.inv_freq"],
                   extra=codebooks)
    return codec.eval()
