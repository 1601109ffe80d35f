"""Classifier-free guidance (CFG): the combine rule and the guidance-scale schedules.

Convention (one for the whole package)::

    x = uncond + s * (cond - uncond)          # s = guidance scale; s = 1 is cond only

computed as ``cond + (s - 1) * (cond - uncond)`` in float32, so ``s = 1`` returns ``cond``
bit for bit. A token that is ``-inf`` in either input stays ``-inf`` (masks survive guidance).
CFG is applied to the logits *before* temperature and the filters.

How the anchors' parameters map onto ours (``step`` counts from 0; ``num_steps`` = K):

- **LlamaGen** (``generate.py``): ``logits = uncond + (cond - uncond) * cfg_scale`` — the same
  rule, ``s = cfg_scale`` (LlamaGen only guides when ``cfg_scale > 1``; ``from_llamagen`` maps
  ``cfg_scale <= 1`` to ``s = 1``). Its ``cfg_interval = c > -1`` turns guidance off for
  decode steps ``i > c``; decode step ``i`` samples token ``i + 1`` (token 0 comes from the
  prefill and is always guided), so token ``t`` is guided iff ``t <= c + 1``:
  ``GuidanceSchedule(scale=cfg_scale, interval=(0, (c + 2) / K))``.
- **VAR** (``autoregressive_infer_cfg``): ``t = cfg * si / (K - 1)``,
  ``logits = (1 + t) * cond - t * uncond = cond + t * (cond - uncond)``, so ``s = 1 + t``: a
  linear ramp from ``s = 1`` at the first scale to ``s = 1 + cfg`` at the last:
  ``GuidanceSchedule(scale=1 + cfg, kind="linear")``. VAR's ``top_k=0`` and ``top_p=0.0`` mean
  "off"; ours are ``top_k=0`` and ``top_p=1.0`` (its ``top_p=0.96`` is our ``top_p=0.96``).
- **RAR / MaskGIT-style power-cosine** (RAR ``generate``, after MDT): with ``r = step / K``,
  ``s = 1 + (guidance_scale - 1) * (1 - cos(pi * r ** pow)) / 2`` — a ramp from 1 that
  reaches ``guidance_scale`` at ``r = 1``:
  ``GuidanceSchedule(scale=guidance_scale, kind="power_cosine", power=pow)``.
- **Guidance interval** (Kynkäänniemi et al. 2024, applied to AR steps): guidance only for
  ``start <= step / K < end``, ``s = 1`` elsewhere, so pipelines may skip the uncond forward
  pass there. It gates any ``kind``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..tokens import _check_positive, _check_real

_KINDS = ("constant", "linear", "power_cosine")


def combine_guidance(cond_NV: torch.Tensor, uncond_NV: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Return float32 ``uncond + s * (cond - uncond)`` (exactly ``cond`` at ``s = 1``), arguments unchecked.

    ``scale`` is a number or a per-row tensor ``[N]``. ``-inf`` in either input gives ``-inf``.
    :func:`mmgen.sampling.apply_guidance` is the checked entry point; the samplers, which have checked
    their arguments already, call this.
    """
    c_NV = cond_NV.float()
    u_NV = uncond_NV.float()
    if isinstance(scale, torch.Tensor):
        w = scale.float().expand(c_NV.shape[0])[:, None] - 1.0
    else:
        w = torch.tensor(scale, dtype=torch.float32, device=c_NV.device) - 1.0
    x_NV = c_NV + w * (c_NV - u_NV)
    masked_NV = (c_NV == -math.inf) | (u_NV == -math.inf)
    return x_NV.masked_fill_(masked_NV, -math.inf)


@dataclass(frozen=True)
class GuidanceSchedule:
    """Guidance scale per generation step: ``constant``, ``linear`` (VAR) or ``power_cosine`` (RAR).

    ``scale`` is the constant scale, or the scale reached at the end of a ramp. ``interval``
    ``(start, end)`` limits guidance to steps with ``start <= step / num_steps < end``.
    """

    scale: float = 1.0
    kind: str = "constant"
    power: float = 1.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_schedule(scale=self.scale, kind=self.kind, power=self.power, interval=self.interval)

    def scale_at(self, step: int, num_steps: int) -> float:
        """The guidance scale ``s`` at ``step`` (0-based) of ``num_steps``."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be >= 1 and an int, got {num_steps!r}")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < num_steps:
            raise ValueError(f"step must be in [0, num_steps) = [0, {num_steps}), got {step!r} (steps are ints)")
        if self.interval is not None and not self.interval[0] <= step / num_steps < self.interval[1]:
            return 1.0
        if self.kind == "constant":
            return self.scale
        if self.kind == "linear":
            ramp = step / (num_steps - 1) if num_steps > 1 else 1.0
        else:
            ramp = (1.0 - math.cos(math.pi * (step / num_steps) ** self.power)) / 2.0
        return 1.0 + (self.scale - 1.0) * ramp

    @classmethod
    def from_llamagen(cls, *, cfg_scale: float, cfg_interval: int = -1, num_steps: int) -> GuidanceSchedule:
        """LlamaGen's ``cfg_scale`` / ``cfg_interval`` for a sequence of ``num_steps`` tokens."""
        _check_positive("num_steps", num_steps)
        if isinstance(cfg_interval, bool) or not isinstance(cfg_interval, int):
            raise TypeError(f"cfg_interval must be an int (a decode step; -1 = guide every step), got {cfg_interval!r}")
        scale = max(1.0, _check_real("cfg_scale", cfg_scale))
        interval = None if cfg_interval < 0 else (0.0, (cfg_interval + 2) / num_steps)
        return cls(scale=scale, interval=interval)

    @classmethod
    def from_var(cls, *, cfg: float) -> GuidanceSchedule:
        """VAR's ``cfg`` (``(1 + t) cond - t uncond`` with ``t = cfg * si / (K - 1)``)."""
        return cls(scale=1.0 + _check_real("cfg", cfg), kind="linear")

    @classmethod
    def from_rar(cls, *, guidance_scale: float, guidance_scale_pow: float) -> GuidanceSchedule:
        """RAR's power-cosine ramp (``guidance_scale``, ``guidance_scale_pow``)."""
        check_schedule(scale=guidance_scale, kind="power_cosine", power=guidance_scale_pow, interval=None,
                       names=("guidance_scale", "kind", "guidance_scale_pow", "interval"))
        return cls(scale=guidance_scale, kind="power_cosine", power=guidance_scale_pow)


def check_schedule(*, scale: object, kind: object, power: object, interval: object,
                   names: tuple[str, str, str, str] = ("scale", "kind", "power", "interval")) -> None:
    """Check a schedule's fields; ``names`` are what the caller calls scale, kind, power and interval."""
    scale_name, kind_name, power_name, interval_name = names
    if kind not in _KINDS:
        raise ValueError(f"{kind_name} must be one of {_KINDS}, got {kind!r}")
    _check_real(scale_name, scale)
    _check_real(power_name, power, above=0)
    if interval is None:
        return
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise TypeError(f"{interval_name} must be None or a pair (start, end) of step fractions, got {interval!r}")
    start, end = (_check_real(f"{interval_name}[{i}]", v) for i, v in enumerate(interval))
    if not 0.0 <= start < end:
        raise ValueError(f"{interval_name} must be (start, end) with 0 <= start < end, got {tuple(interval)}")
