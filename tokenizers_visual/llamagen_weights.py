"""LlamaGen's VQ image tokenizer (``VQModel`` of ``tokenizer/tokenizer_image/vq_model.py``) as a :class:`VQImageTokenizer`.

LlamaGen's VQ-16 / VQ-8 are the taming conv stacks around an l2-normalised codebook, which is our
``backbone="ldm"`` with ``attention=True`` around :class:`~tokenizers_visual.vq.CosineVectorQuantizer`.
The conversion is a renaming: LlamaGen stores the decoder's levels in execution order
(``decoder.conv_blocks.0`` is the lowest resolution), we number them by resolution, so the rules depend
on the number of levels. The stored codebook need not be unit-norm; both sides normalise it when used.

The published checkpoints come without a config: ``VQModel`` hard-codes ``ch=128, num_res_blocks=2``
and ``ModelArgs`` defaults to VQ-16 (16384 × 8 codebook, ``z_channels=256``, ``ch_mult`` (1, 1, 2, 2, 4)).
So each field the config leaves out is read off the weights where their shapes fix it (``codebook_size``,
``codebook_embed_dim``, ``z_channels``, ``ch``, ``encoder_ch_mult`` / ``decoder_ch_mult``, ``num_res_blocks``)
and takes LlamaGen's default otherwise. ``image_size`` (not a ``ModelArgs`` field; LlamaGen's scripts take it
as ``--image-size``) only sets the grid that ``decode`` expects: 256 unless given.

Settings our tokenizer computes differently are refused by name: ``codebook_l2_norm=False`` (a Euclidean
codebook) and different encoder and decoder ``ch_mult``. ``dropout_p``, ``entropy_loss_ratio`` and
``codebook_show_usage`` only act in training and are not carried over; ``commit_loss_beta`` becomes
``commitment_beta``. The training buffer ``quantize.codebook_used`` is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from mmgen.weight_maps import Rule, assign_weights, count_levels

from .published import fresh_usage_state, published_args, weight_shape
from .vq import VQConfig, VQImageTokenizer

__all__ = ["LLAMAGEN_VQ_DEFAULTS", "llamagen_vq_config", "llamagen_vq_rules", "vq_tokenizer_from_llamagen"]

SOURCE = "LlamaGen VQ"
LLAMAGEN_VQ_DEFAULTS: dict[str, Any] = {
    "codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True, "codebook_show_usage": True,
    "commit_loss_beta": 0.25, "entropy_loss_ratio": 0.0, "encoder_ch_mult": [1, 1, 2, 2, 4],
    "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256, "dropout_p": 0.0, "ch": 128, "num_res_blocks": 2,
    "image_size": 256,
}


def llamagen_vq_rules(num_levels: int) -> list[Rule]:
    """LlamaGen's names → ours for a model of ``num_levels`` resolutions (the decoder's levels are renumbered)."""
    rules = [Rule("quantize.embedding.weight", "quantizer.embedding.weight")]
    rules += [Rule(f"{name}.{{rest}}", f"{name}.{{rest}}") for name in ("quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        rules += [Rule(f"{part}.{name}.{{rest}}", f"{part}.{name}.{{rest}}") for name in ("conv_in", "mid", "norm_out", "conv_out")]
    levels = [("encoder", "{i}", "{i}", "downsample")]
    levels += [("decoder", str(k), str(num_levels - 1 - k), "upsample") for k in range(num_levels)]
    for part, theirs, ours, resample in levels:
        source, target = f"{part}.conv_blocks.{theirs}", f"{part}.levels.{ours}"
        rules += [Rule(f"{source}.{resample}.{{rest}}", f"{target}.resample.{{rest}}"),
                  Rule(f"{source}.res.{{j}}.nin_shortcut.{{rest}}", f"{target}.res.{{j}}.skip.{{rest}}"),
                  Rule(f"{source}.{{rest}}", f"{target}.{{rest}}")]
    return rules


_INFERRED = ("codebook_size", "codebook_embed_dim", "z_channels", "ch", "num_res_blocks", "encoder_ch_mult", "decoder_ch_mult")


_shape = partial(weight_shape, source=SOURCE)  # (weights, key, *, field) -> shape


def _from_weights(field: str, weights: Mapping[str, torch.Tensor], *, ch: int) -> Any:
    """The value of ``field`` (one of ``_INFERRED``) that the shapes of ``weights`` fix; the ch_mults need ``ch``."""
    if field in ("codebook_size", "codebook_embed_dim"):
        return _shape(weights, "quantize.embedding.weight", field=field)[field == "codebook_embed_dim"]
    if field == "z_channels":
        return _shape(weights, "encoder.conv_out.weight", field=field)[0]
    if field == "ch":
        return _shape(weights, "encoder.conv_in.weight", field=field)[0]
    if field == "num_res_blocks":
        return count_levels(weights, "encoder.conv_blocks.0.res.{k}.conv1.weight", source=SOURCE)
    part = field.removesuffix("_ch_mult")
    num_levels = count_levels(weights, f"{part}.conv_blocks.{{k}}.res.0.conv1.weight", source=SOURCE)
    widths = [_shape(weights, f"{part}.conv_blocks.{k}.res.0.conv2.weight", field=field)[0] for k in range(num_levels)]
    mult = [width // ch for width in widths]
    return mult[::-1] if part == "decoder" else mult  # the decoder stores its levels lowest resolution first


def llamagen_vq_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> VQConfig:
    """Our tokenizer config for a LlamaGen VQ ``ModelArgs`` dict (plus ``ch``, ``num_res_blocks``, ``image_size``)."""
    # in _INFERRED's order: ch comes before the ch_mults that are read in units of it
    args = published_args(config, LLAMAGEN_VQ_DEFAULTS, owner="LlamaGen's VQ ModelArgs", inferred=_INFERRED,
                          infer=lambda field, known: _from_weights(field, weights, ch=known["ch"]))
    unsupported = []
    if not args["codebook_l2_norm"]:
        unsupported.append("codebook_l2_norm=False (supported: True, the cosine codebook)")
    if list(args["encoder_ch_mult"]) != list(args["decoder_ch_mult"]):
        unsupported.append(f"decoder_ch_mult={list(args['decoder_ch_mult'])} (supported: equal to "
                           f"encoder_ch_mult={list(args['encoder_ch_mult'])})")
    if unsupported:
        raise ValueError(f"this {SOURCE} config has settings mmgen's VQImageTokenizer does not convert: {', '.join(unsupported)}")
    channel_mult = [int(m) for m in args["encoder_ch_mult"]]
    return VQConfig(
        image_size=int(args["image_size"]), downsample=2 ** (len(channel_mult) - 1), channels=int(args["ch"]),
        channel_mult=channel_mult, num_res_blocks=int(args["num_res_blocks"]), z_channels=int(args["z_channels"]),
        codebook_size=int(args["codebook_size"]), codebook_dim=int(args["codebook_embed_dim"]),
        commitment_beta=float(args["commit_loss_beta"]), backbone="ldm", attention=True,
    )


def vq_tokenizer_from_llamagen(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> VQImageTokenizer:
    """A :class:`VQImageTokenizer` giving the ids and images of the LlamaGen ``VQModel`` of ``weights`` (float32, eval mode).

    ``weights`` is the model's state dict (``ckpt["model"]`` of a ``vq_train.py`` checkpoint), ``config`` its
    ``ModelArgs`` fields; missing fields are inferred or defaulted as the module docstring says.
    """
    tokenizer = VQImageTokenizer(llamagen_vq_config(config, weights))
    assign_weights(tokenizer, weights, llamagen_vq_rules(len(tokenizer.cfg.channel_mult)), source=SOURCE,
                   ignored=["quantize.codebook_used"], extra=fresh_usage_state(tokenizer.quantizer))
    return tokenizer.eval()
