"""One sampler for every pipeline: CFG -> temperature -> top-k -> top-p -> min-p -> draw.

- :func:`sample` draws ids from logits ``[N, V]`` with per-row or shared parameters, on the
  ``reference``, ``fast`` or ``triton`` backend; the exact semantics, ties included, are in
  :mod:`mmgen.sampling.reference`.
- :class:`SamplingConfig` carries the settings (and the guidance schedule) in pipelines.
- :class:`GuidanceSchedule` and :func:`apply_guidance` are classifier-free guidance; how the
  LlamaGen, VAR and RAR conventions map to ours is written in :mod:`mmgen.sampling.guidance`.
- :func:`filtered_probs` gives the renormalised distribution that :func:`sample` draws from.
"""

from __future__ import annotations

import torch

from ..tokens import _check_real
from .config import SamplingConfig
from .guidance import GuidanceSchedule, combine_guidance
from .params import _check_row_tensor, check_inputs, check_logits, describe_bad_rows
from .reference import probs_and_validity
from .sampler import BACKENDS, sample, triton_available


def filtered_probs(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    uncond_logits: torch.Tensor | None = None,
    guidance_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The float32 distribution ``[N, V]`` that :func:`sample` draws from (one-hot when greedy).

    Useful for likelihoods and speculative verification; raises like :func:`sample` on rows
    that cannot be sampled.
    """
    params = check_inputs(logits, uncond_logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          guidance_scale=guidance_scale)
    N = params.num_rows
    probs_NV, valid_N = probs_and_validity(logits, uncond_logits, params)
    if N and not bool(valid_N.all()):
        raise ValueError(describe_bad_rows(params, logits, uncond_logits, valid_N))
    return probs_NV


def apply_guidance(cond_NV: torch.Tensor, uncond_NV: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: float32 ``uncond + s * (cond - uncond)`` (exactly ``cond`` at ``s = 1``).

    ``cond_NV`` and ``uncond_NV`` are float logits of one shape ``[N, V]``; ``scale`` is a number or a
    per-row tensor ``[N]``. ``-inf`` in either input gives ``-inf`` (see :mod:`mmgen.sampling.guidance`).
    """
    num_rows, _ = check_logits(cond_NV, uncond_NV, names=("cond_NV", "uncond_NV"))
    if isinstance(scale, torch.Tensor):
        _check_row_tensor("scale", scale, num_rows, cond_NV.device)
    else:
        _check_real("scale", scale)
    return combine_guidance(cond_NV, uncond_NV, scale)


__all__ = [
    "BACKENDS",
    "GuidanceSchedule",
    "SamplingConfig",
    "apply_guidance",
    "filtered_probs",
    "sample",
    "triton_available",
]
