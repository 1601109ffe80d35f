"""What the converters of published tokenizer checkpoints share: their configs come partial or not at all.

A published checkpoint is often a bare state dict, and its model's constructor defaults are what it was
built with. So a converter takes the original's constructor arguments that are known, reads the fields
the weights' shapes fix off the weights, and falls back to the original's defaults for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from torch import nn

from mmgen.weight_maps import WeightsMismatchError

__all__ = ["fresh_usage_state", "published_args", "weight_shape"]


def published_args(config: Mapping[str, Any], defaults: Mapping[str, Any], *, owner: str, inferred: Sequence[str],
                   infer: Callable[[str, dict[str, Any]], Any]) -> dict[str, Any]:
    """``defaults`` updated by ``config``; each ``inferred`` field that ``config`` leaves out becomes ``infer(field, args)``.

    The fields are inferred in the order given, so ``infer`` may read earlier ones from ``args``. A field that
    ``defaults`` lacks is refused: ``owner`` (e.g. "LlamaGen's VQ ModelArgs") names whose fields they are.
    """
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"config fields that {owner} does not have: {unknown} (known: {sorted(defaults)})")
    args = {**defaults, **config}
    for field in inferred:
        if field not in config:
            args[field] = infer(field, args)
    return args


def weight_shape(weights: Mapping[str, torch.Tensor], key: str, *, field: str, source: str) -> tuple[int, ...]:
    """The shape of ``weights[key]``, which fixes the config's ``field``; a clear error naming both if the key is absent."""
    if key not in weights:
        raise WeightsMismatchError(f"the {source} weights hold no key {key!r}, which fixes {field}: give {field} in the config")
    return tuple(weights[key].shape)


def fresh_usage_state(quantizer: nn.Module, *, prefix: str = "quantizer") -> dict[str, torch.Tensor]:
    """Zeroed code-usage buffers of a converted tokenizer's ``quantizer`` (named under ``prefix``), for ``assign_weights``.

    The codebook arrives trained: every code counts as live, so training does not restart them all at once.
    """
    return {f"{prefix}.{name}": torch.zeros_like(buffer) for name, buffer in quantizer.named_buffers()}
