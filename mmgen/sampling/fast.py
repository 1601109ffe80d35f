"""Fast torch path (CPU first): no full-vocabulary sort when a window suffices, Gumbel-max draw.

Same definitions as :mod:`mmgen.sampling.reference`, computed on a *window*: the ``W`` largest
logits of each row from ``torch.topk`` (sorted). ``W`` starts at the largest ``top_k`` (or
``_WINDOW`` when a row filters by top-p or min-p only). A row is *covered* when the window
provably holds every token it may draw — its top-k threshold lies above the largest logit
outside the window, or its top-p mass (rows without top-k) or its min-p bound already excludes
that logit, or (greedy rows) no maximum lies outside. Until every row is covered the window
grows ``_GROWTH``-fold, up to the full row (a sort). Inside a covered window the kept tokens
form a prefix; the draw is an exponential race ``argmax(e / E)``, ``e = exp((x - max x) / T)``,
``E ~ Exp(1)`` (Gumbel-max in disguise) over that prefix, with noise keyed by (row seed,
sample, column) (:func:`mmgen.sampling.rng.log_uniforms`): the same noise the
whole row would get, so the window size — which depends on the other rows — never changes a
row's id. Rows without any filter skip the window and draw over the whole row; a batch of
greedy rows is one ``argmax``.

Parameters shared by all rows stay Python numbers, which keeps the number of small tensor
operations (the cost at small N) low.

Host reads: choosing ``W``, checking coverage and the prefix length read a few scalars back.
That is free for CPU tensors; on an accelerator each read synchronises, and the Triton backend
is the synchronisation-free path there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .guidance import combine_guidance
from .params import SamplingParams, sanitized
from .rng import log_uniforms

_WINDOW = 256
_GROWTH = 8
_NOISE_CHUNK = 1 << 22

Flag = bool | torch.Tensor  # a Python bool shared by all rows, or a bool tensor [N]


@dataclass(frozen=True)
class _Rows:
    """Parameters as Python numbers (shared by all rows) or tensors ``[N]``."""

    t: float | torch.Tensor  # temperature, 1 for greedy rows
    greedy: Flag
    k: int | torch.Tensor
    p: float | torch.Tensor
    q: float | torch.Tensor  # min_p

    @property
    def has_k(self) -> Flag:
        return self.k > 0

    @property
    def has_p(self) -> Flag:
        return self.p < 1

    @property
    def has_q(self) -> Flag:
        return self.q > 0


def sample_fast(
    logits_NV: torch.Tensor,
    uncond_NV: torch.Tensor | None,
    params: SamplingParams,
    seeds_N: torch.Tensor,
    num_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` ids per row; returns ``(ids_NS int64, valid_N bool)``."""
    values, ok_N = sanitized(params)
    T = values["temperature"]
    rows = _Rows(
        t=torch.where(T == 0, 1.0, T) if isinstance(T, torch.Tensor) else (T or 1.0),
        greedy=T == 0,
        k=values["top_k"],
        p=values["top_p"],
        q=values["min_p"],
    )
    x_NV = logits_NV if uncond_NV is None else combine_guidance(logits_NV, uncond_NV, values["guidance_scale"])
    if rows.greedy is True:
        ids_NS, valid_N = _greedy_rows(x_NV, num_samples)
    elif _any(_or(rows.greedy, _or(rows.has_k, _or(rows.has_p, rows.has_q)))):
        ids_NS, valid_N = _windowed(x_NV, rows, seeds_N, num_samples)
    else:
        ids_NS, valid_N = _whole_rows(x_NV, rows.t, seeds_N, num_samples)
    if ok_N is not None:
        valid_N = valid_N & ok_N
    return ids_NS.masked_fill(~valid_N[:, None], 0), valid_N


def _greedy_rows(x_NV: torch.Tensor, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid_N = torch.isfinite(x_NV.amax(1))
    return x_NV.argmax(1, keepdim=True).expand(-1, num_samples), valid_N


def _whole_rows(
    x_NV: torch.Tensor, t: float | torch.Tensor, seeds_N: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x_NV = x_NV.float()
    m_N1 = x_NV.amax(1, keepdim=True)
    valid_N = torch.isfinite(m_N1[:, 0])
    e_NV = torch.exp((x_NV - torch.where(valid_N[:, None], m_N1, 0.0)) / _col(t))
    cols_1V = torch.arange(x_NV.shape[1], device=x_NV.device)[None, :]
    return _race(e_NV, cols_1V, seeds_N, num_samples), valid_N


def _windowed(
    x_NV: torch.Tensor, rows: _Rows, seeds_N: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    V = x_NV.shape[1]
    sampled = _not(rows.greedy)
    if _any(_and(sampled, _not(_or(rows.has_k, _or(rows.has_p, rows.has_q))))):
        width = V  # a row without any filter may draw any token
    else:
        width = int(rows.k.max()) if isinstance(rows.k, torch.Tensor) else rows.k
        if _any(_and(sampled, _not(rows.has_k))):
            width = max(width, _WINDOW)
    width = max(width, 1)
    total_N1 = None
    while True:
        width = min(width, V)
        vals_NW, idx_NW = torch.topk(x_NV, min(V, width + 1), dim=1)
        vals_NW = vals_NW.float()
        out_N1 = vals_NW[:, width:] if width < V else None  # largest logit outside the window
        vals_NW, idx_NW = vals_NW[:, :width], idx_NW[:, :width]
        m_N1 = vals_NW[:, :1]
        valid_N = torch.isfinite(m_N1[:, 0])
        if not bool(valid_N.all()):
            vals_NW = torch.where(valid_N[:, None], vals_NW, 0.0)
            m_N1 = vals_NW[:, :1]
            out_N1 = None if out_N1 is None else torch.where(valid_N[:, None], out_N1, -math.inf)
        if total_N1 is None and _any(_and(sampled, _and(rows.has_p, _not(rows.has_k)))):
            total_N1 = torch.exp((x_NV.float() - m_N1) / _col(rows.t)).sum(1, keepdim=True)
        keep_NW, covered_N1, e_NW = _window_filter(vals_NW, out_N1, m_N1, rows, total_N1)
        if covered_N1 is None or bool((covered_N1[:, 0] | ~valid_N).all()):
            break
        width *= _GROWTH

    length = max(1, int(torch.where(_and(sampled, valid_N), keep_NW.sum(1), 0).max()))
    e_NL = torch.where(keep_NW[:, :length], e_NW[:, :length], 0.0)
    ids_NS = _race(e_NL, idx_NW[:, :length], seeds_N, num_samples)
    if _any(rows.greedy):
        greedy_N1 = torch.where(vals_NW == m_N1, idx_NW, V).amin(1, keepdim=True)
        ids_NS = torch.where(_col(rows.greedy), greedy_N1, ids_NS)
    return ids_NS, valid_N


def _window_filter(
    vals_NW: torch.Tensor,
    out_N1: torch.Tensor | None,
    m_N1: torch.Tensor,
    rows: _Rows,
    total_N1: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Kept tokens of a sorted window ``[N, W]``, whether it covers each row (None: all), and
    the tempered weights ``e = exp((x - max) / T)``.

    Every filter keeps a prefix of the sorted window: top-k and min-p by value, top-p by the
    prefix mass. Ties are kept whole by turning a prefix length into the value at its end.
    """
    W = vals_NW.shape[1]
    t = _col(rows.t)
    e_NW = torch.exp((vals_NW - m_N1) / t)
    keep_NW = None
    if bool((vals_NW[:, -1] == -math.inf).any()):
        keep_NW = vals_NW > -math.inf
    kth_N1 = None
    if _any(rows.has_k):
        if isinstance(rows.k, torch.Tensor):
            kth_N1 = vals_NW.gather(1, (rows.k[:, None] - 1).clamp(0, W - 1))
            keep_NW = _both(keep_NW, (vals_NW >= kth_N1) | (rows.k == 0)[:, None])
        else:
            kth_N1 = vals_NW[:, rows.k - 1 : rows.k]
            if rows.k < W:
                keep_NW = _both(keep_NW, vals_NW >= kth_N1)
    if _any(rows.has_p):
        ek_NW = e_NW if keep_NW is None else torch.where(keep_NW, e_NW, 0.0)
        mass_N1 = ek_NW.sum(1, keepdim=True)
        if total_N1 is not None:
            has_k = rows.has_k
            mass_N1 = torch.where(has_k[:, None], mass_N1, total_N1) if isinstance(has_k, torch.Tensor) else total_N1
        # Token i is kept iff the mass before it (sorted order) is < p * mass: a prefix of
        # length n; its last value v keeps all tokens tied with it (mass strictly above them
        # is that before the first of the run, which is < p * mass).
        before_NW1 = torch.cumsum(ek_NW[:, :-1], 1)
        n_N1 = (before_NW1 < _col(rows.p) * mass_N1).sum(1, keepdim=True)
        keep_p_NW = vals_NW >= vals_NW.gather(1, n_N1)
        if isinstance(rows.p, torch.Tensor):
            keep_p_NW |= (rows.p >= 1)[:, None]
        keep_NW = _both(keep_NW, keep_p_NW)
    if _any(rows.has_q):
        keep_NW = _both(keep_NW, e_NW >= _col(rows.q))
    if keep_NW is None:
        keep_NW = torch.ones_like(vals_NW, dtype=torch.bool)
    if out_N1 is None:
        return keep_NW, None, e_NW

    e_out_N1 = torch.exp((out_N1 - m_N1) / t)
    cover_N1 = out_N1 == -math.inf
    if kth_N1 is not None:
        cover_N1 = cover_N1 | (_col(rows.has_k) & (kth_N1 > out_N1))
    if _any(rows.has_q):
        # With top-k and top-p together, ties of the k-th value outside the window would be
        # missing from the top-k mass, so there min-p alone cannot vouch for the window.
        both = _and(rows.has_k, rows.has_p)
        cover_N1 = cover_N1 | (_col(_and(rows.has_q, _not(both))) & (e_out_N1 < _col(rows.q)))
    if total_N1 is not None:
        mass_above_N1 = torch.where(vals_NW > out_N1, e_NW, 0.0).sum(1, keepdim=True)
        p_only = _and(rows.has_p, _not(rows.has_k))
        cover_N1 = cover_N1 | (_col(p_only) & (mass_above_N1 >= _col(rows.p) * total_N1))
    if _any(rows.greedy):
        cover_N1 = torch.where(_col(rows.greedy), out_N1 < m_N1, cover_N1)
    return keep_NW, cover_N1, e_NW


def _race(e_NL: torch.Tensor, cols_NL: torch.Tensor, seeds_N: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Exponential race: ``cols[argmax(e / E)]`` with ``E = -log(u) ~ Exp(1)`` per sample.

    Equivalent to Gumbel-max on ``log e``; a token with ``e = 0`` is never drawn. Returns ids
    ``[N, S]``.
    """
    N, L = e_NL.shape
    cols_NL = cols_NL.expand(N, L)
    chunk = max(1, _NOISE_CHUNK // max(1, N * L))
    ids = []
    for start in range(0, num_samples, chunk):
        count = min(chunk, num_samples - start)
        # e / log(u) <= 0 and smallest for the largest e / E
        score_NSL = torch.div(e_NL[:, None, :], log_uniforms(seeds_N, count, start, cols_NL))
        ids.append(cols_NL.gather(1, score_NSL.argmin(2)))
    return ids[0] if len(ids) == 1 else torch.cat(ids, 1)


def _col(value: float | torch.Tensor) -> float | torch.Tensor:
    """A per-row tensor ``[N]`` as a column ``[N, 1]``; numbers unchanged."""
    return value[:, None] if isinstance(value, torch.Tensor) else value


def _both(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """``a & b`` where ``a = None`` means all True."""
    return b if a is None else a & b


def _any(flag: Flag) -> bool:
    return bool(flag.any()) if isinstance(flag, torch.Tensor) else bool(flag)


def _not(flag: Flag) -> Flag:
    return ~flag if isinstance(flag, torch.Tensor) else not flag


def _and(a: Flag, b: Flag) -> Flag:
    return a & b if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a and b


def _or(a: Flag, b: Flag) -> Flag:
    return a | b if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a or b
