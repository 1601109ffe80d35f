"""Fused Triton sampler: CFG, temperature, top-k, top-p, min-p and the draw in one launch.

One program per row. Every pass streams the row in ``BLOCK``-wide tiles, reading the cond (and
uncond) logits once and recomputing the guided, tempered logits on the fly; the only writes are
the ids and the validity flag. There is no host synchronisation and no data-dependent host
control flow, so the launch can be captured in a CUDA graph (pass ``seed`` as a device tensor,
or register the generator's state with the graph).

1. Statistics pass: maximum and its first index (greedy rows), smallest finite logit, number
   of finite logits, tempered mass (online), NaN / ``+inf`` detection.
2. top-k threshold: the largest logit value ``v`` with ``count(x >= v) >= k``.
3. top-p threshold: the largest ``v`` with ``mass(x >= v) >= p * S_k``, searched from the top-k
   threshold upwards (``S_k``, the top-k mass, falls out of step 2).
4. Draw: Gumbel-max over tokens with ``x >= threshold`` and ``exp((x - max) / T) >= min_p``,
   with Philox uniforms ``tl.rand(row_seed, sample * 2**32 + column)``.

Threshold search (steps 2, 3). The candidate interval ``[lo, hi]`` always has data values at
both ends: ``lo`` meets the criterion, nothing above ``hi`` does. Each pass tests 8 pivots in
``(lo, hi]`` — 4 spaced evenly in value (the last one is ``hi``), 4 spaced evenly in the
order-preserving integer image of float32 — and records for each the count and mass of
logits ``>= pivot``, the smallest logit ``>= pivot`` and the largest logit ``< pivot``. Then
``lo`` moves up to the smallest logit at the highest passing pivot and ``hi`` down to the
largest logit below the lowest failing pivot. The search stops when ``lo == hi``: the exact
threshold, so ties are decided exactly. The integer-spaced pivots shrink the range of
candidate bit patterns at least 5-fold per pass, bounding a search by 16 passes; the
value-spaced pivots usually end it in a few.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .params import SamplingParams

_knobs = getattr(triton, "knobs", None)
INTERPRETED: bool = bool(_knobs.runtime.interpret) if _knobs is not None else os.environ.get("TRITON_INTERPRET") == "1"
"""True when the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""

_MAX_PASSES = tl.constexpr(64)  # safety bound for a threshold search; the proven bound is 16
_MAX_BLOCK = 1024  # tile width cap (columns per tile)
# Elements per draw tile [S_BLOCK, BLOCK]: register budget on a GPU; the interpreter pays per
# operation, not per element, so it takes far larger tiles.
_DRAW_TILE = 1 << 16 if INTERPRETED else 4096


@triton.jit
def _guided_tile(cond_ptr, uncond_ptr, c_row, u_row, cols, V, w, HAS_UNCOND: tl.constexpr):
    """float32 logits of one tile after guidance ``c + w * (c - u)``; ``-inf`` outside the row."""
    in_row = cols < V
    c = tl.load(cond_ptr + c_row + cols, mask=in_row, other=float("-inf")).to(tl.float32)
    if HAS_UNCOND:
        u = tl.load(uncond_ptr + u_row + cols, mask=in_row, other=float("-inf")).to(tl.float32)
        masked = (c == float("-inf")) | (u == float("-inf"))
        c = tl.where(masked, 0.0, c)
        x = tl.where(masked, float("-inf"), c + w * (c - tl.where(masked, 0.0, u)))
    else:
        x = c
    return x


@triton.jit
def _order_key(x):
    """Map float32 to int32 so that integer order equals float order (an involution)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _from_order_key(key):
    bits = tl.where(key < 0, key ^ 0x7FFFFFFF, key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _threshold_search(
    cond_ptr,
    uncond_ptr,
    c_row,
    u_row,
    V,
    w,
    m,
    t,
    lo,
    lo_mass,
    hi,
    target,
    active,
    BY_MASS: tl.constexpr,
    WITH_MASS: tl.constexpr,
    HAS_UNCOND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Largest logit ``v`` with count (or tempered mass) of logits ``>= v`` reaching ``target``.

    Returns ``(v, mass(x >= v))``; ``lo`` must meet the criterion, nothing above ``hi`` may.
    """
    j = tl.arange(0, 8)
    passes = 0
    while active & (lo < hi) & (passes < _MAX_PASSES):
        by_value = tl.where(j == 3, hi, lo + (hi - lo) * ((j + 1).to(tl.float32) * 0.25))
        key_lo = _order_key(lo).to(tl.int64)
        key_hi = _order_key(hi).to(tl.int64)
        by_key = _from_order_key((key_lo + (key_hi - key_lo) * (j - 3).to(tl.int64) // 5).to(tl.int32))
        pivot = tl.where(j < 4, by_value, by_key)
        count = tl.zeros([8], dtype=tl.int32)
        mass = tl.zeros([8], dtype=tl.float32)
        up = tl.full([8], float("inf"), dtype=tl.float32)
        down = tl.full([8], float("-inf"), dtype=tl.float32)
        for start in range(0, V, BLOCK):
            x = _guided_tile(cond_ptr, uncond_ptr, c_row, u_row, start + tl.arange(0, BLOCK), V, w, HAS_UNCOND)
            x2 = x[:, None]
            ge = x2 >= pivot[None, :]
            if WITH_MASS:
                e = tl.exp((x - m) / t)
                mass += tl.sum(tl.where(ge, e[:, None], 0.0), 0)
            if not BY_MASS:
                count += tl.sum(ge.to(tl.int32), 0)
            up = tl.minimum(up, tl.min(tl.where(ge, x2, float("inf")), 0))
            down = tl.maximum(down, tl.max(tl.where(ge, float("-inf"), x2), 0))
        if BY_MASS:
            reach = mass >= target
        else:
            reach = count >= target
        new_lo = tl.max(tl.where(reach, up, lo), 0)
        lo_mass = tl.min(tl.where(reach, mass, lo_mass), 0)
        hi = tl.min(tl.where(reach, hi, down), 0)
        lo = new_lo
        passes += 1
    return lo, lo_mass


@triton.jit
def _sample_kernel(
    cond_ptr,
    uncond_ptr,
    stride_c,
    stride_u,
    temp_ptr,
    temp,
    top_k_ptr,
    top_k,
    top_p_ptr,
    top_p,
    min_p_ptr,
    min_p,
    cfg_ptr,
    cfg,
    seed_ptr,
    ids_ptr,
    valid_ptr,
    V,
    S,
    HAS_UNCOND: tl.constexpr,
    TEMP_ROWS: tl.constexpr,
    TOP_K_ROWS: tl.constexpr,
    TOP_P_ROWS: tl.constexpr,
    MIN_P_ROWS: tl.constexpr,
    CFG_ROWS: tl.constexpr,
    SEED_ROWS: tl.constexpr,
    USE_TOP_K: tl.constexpr,
    USE_TOP_P: tl.constexpr,
    USE_MIN_P: tl.constexpr,
    BLOCK: tl.constexpr,
    S_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c_row = row * stride_c
    u_row = row * stride_u
    if TEMP_ROWS:
        temp = tl.load(temp_ptr + row).to(tl.float32)
    if TOP_K_ROWS:
        top_k = tl.load(top_k_ptr + row).to(tl.int64)
    if TOP_P_ROWS:
        top_p = tl.load(top_p_ptr + row).to(tl.float32)
    if MIN_P_ROWS:
        min_p = tl.load(min_p_ptr + row).to(tl.float32)
    if CFG_ROWS:
        cfg = tl.load(cfg_ptr + row).to(tl.float32)
    if SEED_ROWS:
        seed = tl.load(seed_ptr + row)
    else:
        seed = tl.load(seed_ptr) + row

    params_ok = (temp >= 0) & (temp < float("inf")) & (top_k >= 0) & (top_k <= V)
    params_ok = params_ok & (top_p > 0) & (top_p <= 1) & (min_p >= 0) & (min_p <= 1)
    params_ok = params_ok & (cfg > float("-inf")) & (cfg < float("inf"))
    greedy = temp == 0
    t = tl.where(params_ok & (temp > 0), temp, 1.0)
    w = tl.where(params_ok, cfg, 1.0) - 1.0

    # 1. statistics
    m = tl.full([], float("-inf"), dtype=tl.float32)
    lo_finite = tl.full([], float("inf"), dtype=tl.float32)
    total = tl.zeros([], dtype=tl.float32)
    argmax = tl.zeros([], dtype=tl.int32)
    n_finite = tl.zeros([], dtype=tl.int32)
    n_bad = tl.zeros([], dtype=tl.int32)
    for start in range(0, V, BLOCK):
        x = _guided_tile(cond_ptr, uncond_ptr, c_row, u_row, start + tl.arange(0, BLOCK), V, w, HAS_UNCOND)
        nan = x != x  # the NaN test that every Triton version lowers
        n_bad += tl.sum((nan | (x == float("inf"))).to(tl.int32), 0)
        x = tl.where(nan, float("-inf"), x)
        tile_max = tl.max(x, 0)
        argmax = tl.where(tile_max > m, tl.argmax(x, 0, tie_break_left=True) + start, argmax)
        new_m = tl.maximum(m, tile_max)
        if USE_TOP_P:
            rescale = tl.where(new_m > float("-inf"), tl.exp((m - new_m) / t), 0.0)
            total = total * rescale + tl.sum(tl.where(x > float("-inf"), tl.exp((x - new_m) / t), 0.0), 0)
        m = new_m
        lo_finite = tl.minimum(lo_finite, tl.min(tl.where(x > float("-inf"), x, float("inf")), 0))
        n_finite += tl.sum((x > float("-inf")).to(tl.int32), 0)
    valid = params_ok & (n_bad == 0) & (m > float("-inf"))
    sampled = valid & ~greedy

    # 2., 3. thresholds
    tau = lo_finite
    mass_k = total
    if USE_TOP_K:
        tau, mass_k = _threshold_search(
            cond_ptr,
            uncond_ptr,
            c_row,
            u_row,
            V,
            w,
            m,
            t,
            lo_finite,
            total,
            m,
            top_k,
            sampled & (top_k > 0) & (top_k < n_finite),
            BY_MASS=False,
            WITH_MASS=USE_TOP_P,
            HAS_UNCOND=HAS_UNCOND,
            BLOCK=BLOCK,
        )
    if USE_TOP_P:
        tau, mass_k = _threshold_search(
            cond_ptr,
            uncond_ptr,
            c_row,
            u_row,
            V,
            w,
            m,
            t,
            tau,
            mass_k,
            m,
            top_p * mass_k,
            sampled & (top_p < 1),
            BY_MASS=True,
            WITH_MASS=True,
            HAS_UNCOND=HAS_UNCOND,
            BLOCK=BLOCK,
        )

    # 4. draw
    draw_end = tl.where(sampled, V, 0)
    for s_start in range(0, S, S_BLOCK):
        s_idx = s_start + tl.arange(0, S_BLOCK)
        best = tl.full([S_BLOCK], float("-inf"), dtype=tl.float32)
        best_id = tl.zeros([S_BLOCK], dtype=tl.int32) + argmax
        for start in range(0, draw_end, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _guided_tile(cond_ptr, uncond_ptr, c_row, u_row, cols, V, w, HAS_UNCOND)
            z = (x - m) / t
            keep = (x >= tau) & (x > float("-inf"))
            if USE_MIN_P:
                keep = keep & (tl.exp(z) >= min_p)
            offsets = s_idx[:, None].to(tl.int64) * 4294967296 + cols[None, :]
            u = tl.rand(seed, offsets)
            score = tl.where(keep[None, :], z[None, :] - tl.log(-tl.log(u)), float("-inf"))
            tile_best = tl.max(score, 1)
            tile_id = tl.argmax(score, 1, tie_break_left=True) + start
            best_id = tl.where(tile_best > best, tile_id, best_id)
            best = tl.maximum(best, tile_best)
        ids = tl.where(greedy, argmax, best_id)
        ids = tl.where(valid, ids, 0)
        tl.store(ids_ptr + row * S + s_idx, ids.to(tl.int64), mask=s_idx < S)
    tl.store(valid_ptr + row, valid.to(tl.int8))


def sample_triton(
    logits_NV: torch.Tensor,
    uncond_NV: torch.Tensor | None,
    params: SamplingParams,
    seeds: torch.Tensor,
    per_row_seeds: bool,
    num_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel once; returns ``(ids_NS int64, valid_N bool)``.

    ``seeds`` is an int64 tensor: ``[N]`` row seeds, or ``[1]`` base seed (row ``i`` uses
    ``base + i``).
    """
    N, V = logits_NV.shape
    logits_NV = logits_NV if logits_NV.stride(1) == 1 else logits_NV.contiguous()
    has_uncond = uncond_NV is not None
    if has_uncond:
        uncond_NV = uncond_NV if uncond_NV.stride(1) == 1 else uncond_NV.contiguous()
    else:
        uncond_NV = logits_NV
    ids_NS = torch.empty((N, num_samples), dtype=torch.int64, device=logits_NV.device)
    valid_N = torch.empty(N, dtype=torch.int8, device=logits_NV.device)

    def per_row(value: float | torch.Tensor, neutral: float) -> tuple[torch.Tensor, float, bool]:
        if isinstance(value, torch.Tensor):
            return value.expand(N).contiguous(), neutral, True
        return logits_NV, value, False

    temp = per_row(params.temperature, 1.0)
    top_k = per_row(params.top_k, 0)
    top_p = per_row(params.top_p, 1.0)
    min_p = per_row(params.min_p, 0.0)
    cfg = per_row(params.guidance_scale, 1.0)
    block = min(_MAX_BLOCK, triton.next_power_of_2(V))
    s_block = min(triton.next_power_of_2(num_samples), max(1, _DRAW_TILE // block))
    _sample_kernel[(N,)](
        logits_NV,
        uncond_NV,
        logits_NV.stride(0),
        uncond_NV.stride(0),
        temp[0],
        temp[1],
        top_k[0],
        top_k[1],
        top_p[0],
        top_p[1],
        min_p[0],
        min_p[1],
        cfg[0],
        cfg[1],
        seeds,
        ids_NS,
        valid_N,
        V,
        num_samples,
        HAS_UNCOND=has_uncond,
        TEMP_ROWS=temp[2],
        TOP_K_ROWS=top_k[2],
        TOP_P_ROWS=top_p[2],
        MIN_P_ROWS=min_p[2],
        CFG_ROWS=cfg[2],
        SEED_ROWS=per_row_seeds,
        USE_TOP_K=top_k[2] or top_k[1] > 0,
        USE_TOP_P=top_p[2] or top_p[1] < 1,
        USE_MIN_P=min_p[2] or min_p[1] > 0,
        BLOCK=block,
        S_BLOCK=s_block,
        num_warps=4 if block <= 512 else 8,
    )
    return ids_NS, valid_N.view(torch.bool)
