"""The specification of the sampler in plain torch: sort-based, slow, readable.

Every backend implements exactly these definitions; the tests compare them against this file.
All arithmetic is float32. For one row, with ``x`` the logits after classifier-free guidance
(:func:`mmgen.sampling.apply_guidance`) and ``T`` the temperature:

1. **Greedy** (``T == 0``): the id is ``argmax(x)``, the lowest index among equal maxima;
   the filters cannot change it (each keeps the maximum).
2. ``e_i = exp((x_i - max(x)) / T)``: unnormalised tempered probabilities.
3. **top-k** (``k > 0``): keep ``x_i >= x_(k)``, the k-th largest value. Every token tied
   with ``x_(k)`` is kept, so more than k tokens survive when there are ties.
4. **top-p** (``p < 1``): with ``S`` the ``e``-mass kept by top-k, keep token ``i`` iff the kept
   mass of tokens with ``x_j > x_i`` is ``< p * S``. This is the smallest set of most probable
   tokens whose mass reaches ``p * S``, plus every token tied with the last one admitted.
5. **min-p** (``q > 0``): keep ``e_i >= q``, i.e. probability at least ``q`` times that of the
   most probable token (the ratio does not depend on the other filters).
6. ``-inf`` logits are never drawn. The id is drawn from ``e`` restricted to the kept tokens,
   renormalised.

A row is *invalid* when ``x`` holds NaN or ``+inf`` or no finite value, or when one of its
per-row parameters is out of range; invalid rows get id 0 and ``valid = False``.
Thresholds are decided by float32 sums, so two backends may disagree for a token whose mass
criterion lies within rounding error of ``p * S`` (or ``e_i`` within rounding of ``q``); ties
in ``x`` itself are decided identically everywhere.
"""

from __future__ import annotations

import math

import torch

from .guidance import combine_guidance
from .params import RowParams, SamplingParams, row_params


def combined_logits(
    logits_NV: torch.Tensor, uncond_NV: torch.Tensor | None, guidance: float | torch.Tensor
) -> torch.Tensor:
    """float32 logits after classifier-free guidance (or the logits themselves)."""
    return logits_NV.float() if uncond_NV is None else combine_guidance(logits_NV, uncond_NV, guidance)


def row_validity(x_NV: torch.Tensor) -> torch.Tensor:
    """True for rows without NaN or ``+inf`` that hold at least one finite value."""
    return ~torch.isnan(x_NV).any(1) & ~(x_NV == math.inf).any(1) & (x_NV > -math.inf).any(1)


def filtered_probs_from(x_NV: torch.Tensor, rows: RowParams) -> torch.Tensor:
    """Renormalised probabilities ``[N, V]`` over the kept tokens of valid rows ``x_NV``.

    Greedy rows are one-hot at their argmax.
    """
    greedy_N1 = (rows.temperature_N == 0)[:, None]
    t_N1 = torch.where(greedy_N1, 1.0, rows.temperature_N[:, None])
    m_N1 = x_NV.max(1, keepdim=True).values
    e_NV = torch.exp((x_NV - m_N1) / t_N1)

    x_desc_NV, order_NV = torch.sort(x_NV, dim=1, descending=True)
    k_N1 = rows.top_k_N[:, None]
    kth_N1 = x_desc_NV.gather(1, (k_N1 - 1).clamp(min=0))
    keep_NV = (k_N1 == 0) | (x_NV >= kth_N1)

    # top-p: the kept mass of strictly larger logits, via an exclusive cumsum in sorted order
    # read at the first position of each run of equal logits.
    e_desc_NV = torch.where(keep_NV, e_NV, 0.0).gather(1, order_NV)
    mass_N1 = e_desc_NV.sum(1, keepdim=True)
    csum_desc_NV = torch.cumsum(e_desc_NV, 1)
    before_desc_NV = torch.cat([torch.zeros_like(csum_desc_NV[:, :1]), csum_desc_NV[:, :-1]], 1)
    neg_desc_NV = -x_desc_NV
    larger_desc_NV = torch.searchsorted(neg_desc_NV, neg_desc_NV, side="left")
    above_desc_NV = before_desc_NV.gather(1, larger_desc_NV)
    above_NV = torch.empty_like(above_desc_NV).scatter_(1, order_NV, above_desc_NV)
    p_N1 = rows.top_p_N[:, None]
    keep_NV &= (p_N1 >= 1) | (above_NV < p_N1 * mass_N1)

    keep_NV &= e_NV >= rows.min_p_N[:, None]
    keep_NV &= x_NV > -math.inf

    probs_NV = torch.where(keep_NV, e_NV, 0.0)
    probs_NV = probs_NV / probs_NV.sum(1, keepdim=True)
    one_hot_NV = torch.zeros_like(probs_NV).scatter_(1, x_NV.argmax(1, keepdim=True), 1.0)
    return torch.where(greedy_N1, one_hot_NV, probs_NV)


def probs_and_validity(
    logits_NV: torch.Tensor, uncond_NV: torch.Tensor | None, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered probabilities ``[N, V]`` (zero rows where invalid) and validity ``[N]``."""
    rows, ok_N = row_params(params, logits_NV.device)
    x_NV = combined_logits(logits_NV, uncond_NV, rows.guidance_N)
    valid_N = ok_N & row_validity(x_NV)
    x_NV = torch.where(valid_N[:, None], x_NV, 0.0)
    probs_NV = filtered_probs_from(x_NV, rows)
    return torch.where(valid_N[:, None], probs_NV, 0.0), valid_N


def sample_reference(
    logits_NV: torch.Tensor,
    uncond_NV: torch.Tensor | None,
    params: SamplingParams,
    *,
    generator: torch.Generator | None,
    seed: int | torch.Tensor | None,
    num_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` ids per row with ``torch.multinomial``; returns ``(ids_NS, valid_N)``.

    With ``seed`` each row draws from its own ``torch.Generator`` seeded with its row seed.
    """
    probs_NV, valid_N = probs_and_validity(logits_NV, uncond_NV, params)
    probs_NV[:, 0] += (~valid_N).float()
    if seed is None:
        ids_NS = torch.multinomial(probs_NV, num_samples, replacement=True, generator=generator)
    else:
        N = probs_NV.shape[0]
        seeds = seed.tolist() if isinstance(seed, torch.Tensor) else [seed + i for i in range(N)]
        rows = []
        for probs_V, row_seed in zip(probs_NV, seeds):
            row_gen = torch.Generator(probs_NV.device).manual_seed(row_seed)
            rows.append(torch.multinomial(probs_V, num_samples, replacement=True, generator=row_gen))
        ids_NS = torch.stack(rows) if rows else probs_NV.new_zeros((0, num_samples), dtype=torch.int64)
    return ids_NS, valid_N
