"""What the DAC and SNAC conversions share: their factorised codebooks' names, and the training state ours keep beside them.

Both publish, per level k, ``quantizer.quantizers.{k}.in_proj`` / ``out_proj`` (kernel-1 convs, weight
norm folded by then) and ``codebook.weight``; vector-quantize-pytorch's codebooks also keep an EMA
state (``initted``, ``cluster_size``, ``embed_avg``) that a gradient-trained codebook has none of.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mmgen.weight_maps import Rule, kernel1_as_linear

__all__ = ["factorised_code_rules", "vq_training_state"]

SOURCE = "quantizer.quantizers.{k}"


def factorised_code_rules(*, inward: str, outward: str, codebook: str) -> list[Rule]:
    """Rules onto our per-level ``inward`` / ``outward`` Linear layers and ``codebook`` embed (templates with ``{k}``)."""
    return [
        Rule(f"{SOURCE}.in_proj.weight", f"{inward}.weight", kernel1_as_linear),
        Rule(f"{SOURCE}.in_proj.bias", f"{inward}.bias"),
        Rule(f"{SOURCE}.out_proj.weight", f"{outward}.weight", kernel1_as_linear),
        Rule(f"{SOURCE}.out_proj.bias", f"{outward}.bias"),
        Rule(f"{SOURCE}.codebook.weight", codebook, lambda t: t.unsqueeze(0)),
    ]


def vq_training_state(weights: Mapping[str, torch.Tensor], *, levels: int, codebook_size: int,
                      target: str) -> dict[str, torch.Tensor]:
    """The EMA state of each level's codebook (``target`` with ``{k}``): initialised, one hit per code, the code itself."""
    state = {}
    for k in range(levels):
        embed = weights.get(SOURCE.format(k=k) + ".codebook.weight")
        if embed is None:  # assign_weights reports the missing codebook
            continue
        prefix = target.format(k=k)
        state.update({f"{prefix}.initted": torch.tensor(True), f"{prefix}.cluster_size": torch.ones(1, codebook_size),
                      f"{prefix}.embed_avg": embed.unsqueeze(0)})
    return state
