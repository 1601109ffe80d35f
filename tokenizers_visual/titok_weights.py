"""TiTok's published tokenizers (``TiTok`` of ``modeling/titok.py``, bytedance/1d-tokenizer) as a :class:`TiTokTokenizer`.

The conversion is a renaming plus three reshapes: TiTok's 1×1 convs (``encoder.conv_out``, ``decoder.ffn.0``
/ ``.2``) act on one position at a time and become linears (``[out, in, 1, 1]`` → ``[out, in]``). Its
``nn.MultiheadAttention`` keeps ``in_proj_weight`` with rows q, k, v (heads contiguous inside each), which is
our fused ``qkv`` as it is.

``config`` takes TiTok's own config: the whole ``config.json`` of a hub checkpoint (``model.vq_model`` and
``dataset.preprocessing.crop_size`` are read, the other sections concern training or the generator) or the
flat ``vq_model`` fields plus ``crop_size``. Fields it leaves out are read off the weights where their
shapes fix them (codebook, ``token_size``, latent tokens, patch size, crop size, widths and depths, the
MaskGIT pixel decoder that ``TiTok`` hard-codes) and take TiTok-L32's values otherwise. Head counts are
not in the weights: they come from ``vit_enc_model_size`` / ``vit_dec_model_size`` ("small" / "base" /
"large", TiTok's table) or, for other sizes, from ``vit_enc_num_heads`` / ``vit_dec_num_heads`` (our fields).

Refused by name: ``quantize_mode="vae"``, ``finetune_decoder=False`` and ``is_legacy=False`` (a decoder
predicting pixels directly, the VQ-8k / VAE variants), ``use_l2_norm=False`` (a Euclidean codebook) and
different encoder / decoder patch sizes. ``commitment_cost`` becomes ``commitment_beta``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from math import isqrt
from typing import Any

import torch

from mmgen.weight_maps import Rule, assign_weights, count_levels

from .published import fresh_usage_state, published_args, weight_shape
from .titok import TiTokConfig, TiTokTokenizer

__all__ = ["TITOK_DEFAULTS", "TITOK_SIZES", "titok_config", "titok_rules", "tokenizer_from_titok"]

SOURCE = "TiTok"
TITOK_SIZES = {"small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}  # width, layers, heads
TITOK_DEFAULTS: dict[str, Any] = {
    # model.vq_model of configs/infer/TiTok/titok_l32.yaml, with TiTok's get(...) defaults
    "codebook_size": 4096, "token_size": 12, "use_l2_norm": True, "commitment_cost": 0.25,
    "vit_enc_model_size": "large", "vit_dec_model_size": "large", "vit_enc_patch_size": 16, "vit_dec_patch_size": 16,
    "num_latent_tokens": 32, "finetune_decoder": True, "quantize_mode": "vq", "is_legacy": True,
    "crop_size": 256,  # dataset.preprocessing.crop_size
    "vit_enc_num_heads": None, "vit_dec_num_heads": None,  # ours: heads of sizes TiTok's table lacks
}
_INFERRED = ("codebook_size", "token_size", "num_latent_tokens", "vit_enc_patch_size", "vit_dec_patch_size", "crop_size")
_shape = partial(weight_shape, source=SOURCE)  # (weights, key, *, field) -> shape


def _flatten(kernel: torch.Tensor) -> torch.Tensor:
    """A 1×1 conv kernel ``[out, in, 1, 1]`` as the linear weight it equals."""
    return kernel.flatten(1)


def titok_rules() -> list[Rule]:
    """TiTok's names → ours."""
    rules = [Rule("latent_tokens", "latent_tokens"), Rule("quantize.embedding.weight", "quantizer.embedding.weight"),
             Rule("pixel_quantize.embedding.weight", "pixel_codebook.weight"),
             Rule("encoder.patch_embed.{rest}", "patch_embed.{rest}"),
             Rule("encoder.conv_out.weight", "to_token.weight", _flatten), Rule("encoder.conv_out.bias", "to_token.bias"),
             Rule("decoder.decoder_embed.{rest}", "from_token.{rest}"), Rule("decoder.mask_token", "mask_token", torch.ravel)]
    for k in ("0", "2"):
        rules += [Rule(f"decoder.ffn.{k}.weight", f"to_logits.{k}.weight", _flatten),
                  Rule(f"decoder.ffn.{k}.bias", f"to_logits.{k}.bias")]
    for part in ("encoder", "decoder"):
        rules += [Rule(f"{part}.{theirs}", f"{part}.{ours}") for theirs, ours in (
            ("class_embedding", "class_token"), ("positional_embedding", "patch_pos"),
            ("latent_token_positional_embedding", "latent_pos"))]
        rules += [Rule(f"{part}.{name}.{{rest}}", f"{part}.{name}.{{rest}}") for name in ("ln_pre", "ln_post")]
        block, ours = f"{part}.transformer.{{i}}", f"{part}.blocks.{{i}}"
        rules += [Rule(f"{block}.{theirs}", f"{ours}.{mine}") for theirs, mine in (
            ("attn.in_proj_weight", "qkv.weight"), ("attn.in_proj_bias", "qkv.bias"))]
        rules += [Rule(f"{block}.{theirs}.{{rest}}", f"{ours}.{mine}.{{rest}}") for theirs, mine in (
            ("ln_1", "norm1"), ("attn.out_proj", "proj"), ("ln_2", "norm2"), ("mlp.c_fc", "mlp.0"), ("mlp.c_proj", "mlp.2"))]
    pixel = "pixel_decoder"
    rules += [Rule(f"{pixel}.{name}.{{rest}}", f"{pixel}.{name}.{{rest}}") for name in ("conv_in", "norm_out", "conv_out")]
    rules += [Rule(f"{pixel}.mid.{{j}}.nin_shortcut.{{rest}}", f"{pixel}.mid.{{j}}.skip.{{rest}}"),
              Rule(f"{pixel}.mid.{{j}}.{{rest}}", f"{pixel}.mid.{{j}}.{{rest}}"),
              Rule(f"{pixel}.up.{{i}}.block.{{j}}.nin_shortcut.{{rest}}", f"{pixel}.levels.{{i}}.res.{{j}}.skip.{{rest}}"),
              Rule(f"{pixel}.up.{{i}}.block.{{j}}.{{rest}}", f"{pixel}.levels.{{i}}.res.{{j}}.{{rest}}"),
              Rule(f"{pixel}.up.{{i}}.upsample_conv.{{rest}}", f"{pixel}.levels.{{i}}.upsample.{{rest}}")]
    return rules


def _from_weights(field: str, weights: Mapping[str, torch.Tensor], known: dict[str, Any]) -> Any:
    """The value of ``field`` (one of ``_INFERRED``) that the shapes of ``weights`` fix."""
    if field in ("codebook_size", "token_size"):
        return _shape(weights, "quantize.embedding.weight", field=field)[field == "token_size"]
    if field == "num_latent_tokens":
        return _shape(weights, "latent_tokens", field=field)[0]
    if field == "vit_enc_patch_size":
        return _shape(weights, "encoder.patch_embed.weight", field=field)[-1]
    if field == "vit_dec_patch_size":
        return known["vit_enc_patch_size"]  # the decoder's grid is the encoder's (its weights hold no patch size)
    rows = _shape(weights, "encoder.positional_embedding", field=field)[0]  # crop_size: grid² + 1 rows
    return isqrt(rows - 1) * int(known["vit_enc_patch_size"])


def _flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``vq_model`` fields and ``crop_size`` of a whole TiTok config, or a flat one as it is."""
    if "model" not in config:
        return dict(config)
    flat = dict(config["model"]["vq_model"])
    crop = config.get("dataset", {}).get("preprocessing", {}).get("crop_size")
    return flat if crop is None else {**flat, "crop_size": crop}


def _vit_sizes(part: str, args: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(width, layers, heads)`` of the encoder or decoder: width and depth off the weights, heads from the size name."""
    width = _shape(weights, f"{part}.class_embedding", field=f"the {part} width")[-1]
    layers = count_levels(weights, f"{part}.transformer.{{k}}.ln_1.weight", source=SOURCE)
    short = part[:3]
    size, heads = args[f"vit_{short}_model_size"], args[f"vit_{short}_num_heads"]
    if heads is None:
        if size not in TITOK_SIZES:
            raise ValueError(f"vit_{short}_model_size={size!r} is not one of TiTok's {sorted(TITOK_SIZES)}: "
                             f"give vit_{short}_num_heads (head counts are not in the weights)")
        heads = TITOK_SIZES[size][2]
    if size in TITOK_SIZES and TITOK_SIZES[size][:2] != (width, layers):
        raise ValueError(f"vit_{short}_model_size={size!r} means width {TITOK_SIZES[size][0]} and "
                         f"{TITOK_SIZES[size][1]} layers, but the {part} weights have width {width} and {layers} layers")
    return int(width), int(layers), int(heads)


def _pixel_sizes(weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The MaskGIT pixel decoder TiTok hard-codes, off the weights: codebook, widths per level, res blocks."""
    codebook = _shape(weights, "pixel_quantize.embedding.weight", field="the pixel codebook")
    levels = count_levels(weights, "pixel_decoder.up.{k}.block.0.conv1.weight", source=SOURCE)
    widths = [_shape(weights, f"pixel_decoder.up.{i}.block.0.conv1.weight", field="the pixel decoder widths")[0]
              for i in range(levels)]
    blocks = count_levels(weights, "pixel_decoder.mid.{k}.conv1.weight", source=SOURCE)
    return {"pixel_codebook_size": int(codebook[0]), "pixel_code_dim": int(codebook[1]), "pixel_widths": widths,
            "pixel_res_blocks": blocks}


def titok_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> TiTokConfig:
    """Our tokenizer config for a TiTok config (whole or its ``vq_model`` fields) and its weights."""
    args = published_args(_flat_config(config), TITOK_DEFAULTS, owner="TiTok's model.vq_model config",
                          inferred=_INFERRED, infer=lambda field, known: _from_weights(field, weights, known))
    unsupported = [f"{name}={args[name]!r} (supported: {want!r})" for name, want in (
        ("quantize_mode", "vq"), ("finetune_decoder", True), ("is_legacy", True), ("use_l2_norm", True))
        if args[name] != want]
    if args["vit_dec_patch_size"] != args["vit_enc_patch_size"]:
        unsupported.append(f"vit_dec_patch_size={args['vit_dec_patch_size']} (supported: equal to "
                           f"vit_enc_patch_size={args['vit_enc_patch_size']})")
    if unsupported:
        raise ValueError(f"this {SOURCE} config has settings mmgen's TiTokTokenizer does not convert: {', '.join(unsupported)}")
    enc_width, enc_layers, enc_heads = _vit_sizes("encoder", args, weights)
    dec_width, dec_layers, dec_heads = _vit_sizes("decoder", args, weights)
    return TiTokConfig(
        image_size=int(args["crop_size"]), patch_size=int(args["vit_enc_patch_size"]),
        num_latent_tokens=int(args["num_latent_tokens"]), token_size=int(args["token_size"]),
        codebook_size=int(args["codebook_size"]), enc_width=enc_width, enc_layers=enc_layers, enc_heads=enc_heads,
        dec_width=dec_width, dec_layers=dec_layers, dec_heads=dec_heads, commitment_beta=float(args["commitment_cost"]),
        **_pixel_sizes(weights),
    )


def tokenizer_from_titok(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> TiTokTokenizer:
    """A :class:`TiTokTokenizer` giving the ids and images of the TiTok model of ``weights`` (float32, eval mode).

    ``weights`` is ``TiTok``'s state dict (a hub checkpoint's ``model.safetensors`` / ``pytorch_model.bin``, or
    ``tokenizer_titok_l32.bin``), ``config`` its config; missing fields are inferred or defaulted as the module
    docstring says.
    """
    tokenizer = TiTokTokenizer(titok_config(config, weights))
    assign_weights(tokenizer, weights, titok_rules(), source=SOURCE, extra=fresh_usage_state(tokenizer.quantizer))
    return tokenizer.eval()
