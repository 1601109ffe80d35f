"""VAR's VQVAE (``models/vqvae.py`` of FoundationVision/VAR) as a :class:`MultiScaleVQTokenizer`.

VAR's tokenizer is the taming / latent-diffusion conv stack (our ``backbone="ldm"``; attention at the lowest
resolution and in the middle) with 3×3 convs around VAR's multi-scale residual quantiser, which
:class:`~tokenizers_visual.multiscale_vq.MultiScaleResidualQuantizer` already computes exactly. The
conversion is a renaming with one exception: VAR's attention blocks hold one fused ``qkv`` 1×1 conv
(``[3C, C, 1, 1]``, rows q, k, v) where ours has ``q``, ``k`` and ``v``. The weights are checked against a
view of our model that shows each attention block fused the same way (:class:`_FusedQKVState`), so a
missing or misshapen ``qkv`` is reported under VAR's own name and shape; loading splits it. VAR stores
both halves' levels by resolution (``encoder.down.{i}``, ``decoder.up.{i}``), as we do.

The published checkpoint (``vae_ch160v4096z32.pth``) is a bare state dict: ``VQVAE`` hard-codes its
encoder / decoder (``ch_mult`` (1, 1, 2, 2, 4), 2 res blocks, attention on) and ``build_vae_var`` passes
``V=4096, Cvae=32, ch=160, share_quant_resi=4``. So each field the config leaves out is read off the
weights where their shapes fix it (codebook size and width, ``ch``, ``in_channels``, ``ch_mult``,
``num_res_blocks``, attention, the quant conv kernel, how the φ are shared) and takes the published value
otherwise (``v_patch_nums`` (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), ``quant_resi=0.5``). ``image_size`` (not a
``VQVAE`` argument) defaults to the size whose latent is the last patch grid: 256 for the published model.

Refused by name: attention in the levels but not the middle or the reverse (``using_sa != using_mid_sa``;
our ``attention`` switches both) and ``share_quant_resi=0`` with ``default_qresi_counts`` other than the
number of scales (VAR then ticks over that many φ). ``dropout`` and ``test_mode`` only concern training and
are not carried over; a negative ``quant_resi`` acts as its absolute value, as in VAR's ``Phi``. The
training buffer ``quantize.ema_vocab_hit_SV`` is dropped: the converted tokenizer starts its code-usage
statistics afresh.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from itertools import product
from typing import Any

import torch
from torch import nn

from mmgen.weight_maps import Rule, assign_weights, count_levels

from .ldm_conv import AttnBlock
from .multiscale_vq import MultiScaleVQConfig, MultiScaleVQTokenizer
from .published import fresh_usage_state, published_args, weight_shape

__all__ = ["VAR_VQVAE_DEFAULTS", "multiscale_vq_from_var", "var_vqvae_config", "var_vqvae_rules"]

SOURCE = "VAR VQVAE"
VAR_VQVAE_DEFAULTS: dict[str, Any] = {
    # VQVAE(...) as build_vae_var calls it for the published vae_ch160v4096z32.pth
    "vocab_size": 4096, "z_channels": 32, "ch": 160, "dropout": 0.0, "beta": 0.25, "using_znorm": False,
    "quant_conv_ks": 3, "quant_resi": 0.5, "share_quant_resi": 4, "default_qresi_counts": 0,
    "v_patch_nums": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], "test_mode": True,
    # the encoder / decoder ddconfig VQVAE hard-codes
    "in_channels": 3, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "using_sa": True, "using_mid_sa": True,
    # not a VQVAE argument: None means patch_nums[-1] * 2 ** (len(ch_mult) - 1)
    "image_size": None,
}
_INFERRED = ("vocab_size", "z_channels", "ch", "in_channels", "num_res_blocks", "ch_mult", "using_sa", "using_mid_sa",
             "quant_conv_ks", "share_quant_resi")
_PHI_RULES = {  # share_quant_resi → VAR's container of φ convs (PhiNonShared, PhiShared, PhiPartiallyShared)
    0: Rule("quantize.quant_resi.{k}.{rest}", "quantizer.phis.{k}.{rest}"),
    1: Rule("quantize.quant_resi.qresi.{rest}", "quantizer.phis.0.{rest}"),
}
_PARTIALLY_SHARED_PHI = Rule("quantize.quant_resi.qresi_ls.{k}.{rest}", "quantizer.phis.{k}.{rest}")


def var_vqvae_rules(share_quant_resi: int) -> list[Rule]:
    """VAR's names → ours; only the φ container differs with ``share_quant_resi``, the attention keeps its fused ``qkv``."""
    rules = [Rule("quantize.embedding.weight", "quantizer.embedding.weight"),
             _PHI_RULES.get(share_quant_resi, _PARTIALLY_SHARED_PHI)]
    rules += [Rule(f"{name}.{{rest}}", f"{name}.{{rest}}") for name in ("quant_conv", "post_quant_conv")]
    for part, container, resample in (("encoder", "down", "downsample"), ("decoder", "up", "upsample")):
        rules += [Rule(f"{part}.{name}.{{rest}}", f"{part}.{name}.{{rest}}") for name in ("conv_in", "norm_out", "conv_out")]
        rules += [Rule(f"{part}.mid.{theirs}.{{rest}}", f"{part}.mid.{ours}.{{rest}}")
                  for theirs, ours in (("block_1", 0), ("attn_1", 1), ("block_2", 2))]
        source, target = f"{part}.{container}.{{i}}", f"{part}.levels.{{i}}"
        rules += [Rule(f"{source}.block.{{j}}.nin_shortcut.{{rest}}", f"{target}.res.{{j}}.skip.{{rest}}"),
                  Rule(f"{source}.block.{{j}}.{{rest}}", f"{target}.res.{{j}}.{{rest}}"),
                  Rule(f"{source}.attn.{{j}}.{{rest}}", f"{target}.attn.{{j}}.{{rest}}"),
                  Rule(f"{source}.{resample}.{{rest}}", f"{target}.resample.{{rest}}")]
    return rules


class _FusedQKVState(nn.Module):
    """``model``'s state with each :class:`AttnBlock`'s ``q``, ``k``, ``v`` convs as one ``qkv`` conv (rows q, k, v), as VAR stores it.

    Checking a VAR file against this view names a bad ``qkv`` key with VAR's shape; loading splits it back.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.blocks = [name for name, module in model.named_modules() if isinstance(module, AttnBlock)]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        state = dict(self.model.state_dict(*args, **kwargs))
        for block, param in product(self.blocks, ("weight", "bias")):
            state[f"{block}.qkv.{param}"] = torch.cat([state.pop(f"{block}.{name}.{param}") for name in "qkv"])
        return state

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
        state = dict(state_dict)
        for block, param in product(self.blocks, ("weight", "bias")):
            for name, part in zip("qkv", state.pop(f"{block}.qkv.{param}").chunk(3)):
                state[f"{block}.{name}.{param}"] = part
        return self.model.load_state_dict(state, strict=strict, assign=assign)


_shape = partial(weight_shape, source=SOURCE)  # (weights, key, *, field) -> shape


def _has(weights: Mapping[str, torch.Tensor], pattern: str) -> bool:
    return any(re.fullmatch(pattern, key) for key in weights)


def _from_weights(field: str, weights: Mapping[str, torch.Tensor], *, ch: int, default: Any) -> Any:
    """The value of ``field`` (one of ``_INFERRED``) that the shapes of ``weights`` fix; ``ch_mult`` needs ``ch``."""
    if field in ("vocab_size", "z_channels"):
        return _shape(weights, "quantize.embedding.weight", field=field)[field == "z_channels"]
    if field in ("ch", "in_channels"):
        return _shape(weights, "encoder.conv_in.weight", field=field)[field == "in_channels"]
    if field == "num_res_blocks":
        return count_levels(weights, "encoder.down.0.block.{k}.conv1.weight", source=SOURCE)
    if field == "ch_mult":
        num_levels = count_levels(weights, "encoder.down.{k}.block.0.conv1.weight", source=SOURCE)
        return [_shape(weights, f"encoder.down.{k}.block.0.conv1.weight", field=field)[0] // ch for k in range(num_levels)]
    if field == "using_sa":
        return _has(weights, r"encoder\.down\.\d+\.attn\..+")
    if field == "using_mid_sa":
        return _has(weights, r"encoder\.mid\.attn_1\..+")
    if field == "quant_conv_ks":
        return _shape(weights, "quant_conv.weight", field=field)[-1]
    if _has(weights, r"quantize\.quant_resi\.qresi_ls\..+"):  # share_quant_resi
        return count_levels(weights, "quantize.quant_resi.qresi_ls.{k}.weight", source=SOURCE)
    if _has(weights, r"quantize\.quant_resi\.qresi\..+"):
        return 1
    return 0 if _has(weights, r"quantize\.quant_resi\.\d+\..+") else default  # no φ weights: φ is the identity


def var_vqvae_config(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> MultiScaleVQConfig:
    """Our tokenizer config for VAR ``VQVAE`` arguments plus the encoder's ddconfig (``ch_mult``, ``num_res_blocks``,
    ``using_sa``, ``using_mid_sa``, ``in_channels``) and ``image_size``; missing fields as the module docstring says."""
    # in _INFERRED's order: ch comes before the ch_mult that is read in units of it
    args = published_args(config, VAR_VQVAE_DEFAULTS, owner="VAR's VQVAE (with its ddconfig)", inferred=_INFERRED,
                          infer=lambda field, known: _from_weights(field, weights, ch=known["ch"], default=known[field]))
    patch_nums = [int(pn) for pn in args["v_patch_nums"]]
    unsupported = []
    if bool(args["using_sa"]) != bool(args["using_mid_sa"]):
        unsupported.append(f"using_sa={args['using_sa']} with using_mid_sa={args['using_mid_sa']} (supported: both "
                           "equal, attention in the lowest-resolution level and the middle or in neither)")
    if args["share_quant_resi"] == 0 and args["default_qresi_counts"] not in (0, len(patch_nums)):
        unsupported.append(f"default_qresi_counts={args['default_qresi_counts']} with share_quant_resi=0 (supported: 0 "
                           f"or {len(patch_nums)}, one φ per scale of v_patch_nums)")
    if unsupported:
        raise ValueError(f"this {SOURCE} config has settings mmgen's MultiScaleVQTokenizer does not convert: {', '.join(unsupported)}")
    channel_mult = [int(m) for m in args["ch_mult"]]
    image_size = args["image_size"] or patch_nums[-1] * 2 ** (len(channel_mult) - 1)
    return MultiScaleVQConfig(
        image_size=int(image_size), in_channels=int(args["in_channels"]), channels=int(args["ch"]),
        channel_mult=tuple(channel_mult), num_res_blocks=int(args["num_res_blocks"]),
        codebook_size=int(args["vocab_size"]), codebook_dim=int(args["z_channels"]), patch_nums=tuple(patch_nums),
        quant_resi=abs(float(args["quant_resi"])), share_quant_resi=int(args["share_quant_resi"]),
        using_znorm=bool(args["using_znorm"]), beta=float(args["beta"]), backbone="ldm",
        attention=bool(args["using_sa"]), quant_conv_kernel=int(args["quant_conv_ks"]),
    )


def multiscale_vq_from_var(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> MultiScaleVQTokenizer:
    """A :class:`MultiScaleVQTokenizer` giving the ids, latents and images of the VAR ``VQVAE`` of ``weights`` (eval mode).

    ``weights`` is ``VQVAE.state_dict()`` (the published ``.pth``), ``config`` the constructor arguments that are
    known; missing fields are inferred or defaulted as the module docstring says.
    """
    tokenizer = MultiScaleVQTokenizer(var_vqvae_config(config, weights))
    assign_weights(_FusedQKVState(tokenizer), weights, var_vqvae_rules(tokenizer.cfg.share_quant_resi), source=SOURCE,
                   ignored=["quantize.ema_vocab_hit_SV"], extra=fresh_usage_state(tokenizer.quantizer))
    return tokenizer.eval()
