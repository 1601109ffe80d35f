"""Argument checks and per-row parameter handling for :func:`mmgen.sampling.sample`.

Python numbers are checked on the host before anything runs. Per-row tensors are checked for
shape, dtype and device only, so checking never synchronises with an accelerator; their
*values* are checked per row by every backend (a row with an out-of-range value is reported
invalid, see :func:`row_params`), and :func:`describe_bad_rows` turns invalid rows into an
error message naming the argument, the rows and the expected range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

Scalar = float | int
PerRow = Scalar | torch.Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# name -> (expected range in words, predicate on a number, predicate on a float32 tensor, neutral value)
_RANGES = {
    "temperature": ("a finite value >= 0", lambda v: 0 <= v < math.inf, lambda t: (t >= 0) & torch.isfinite(t), 1.0),
    "top_k": ("an integer in [0, V]", None, None, 0),
    "top_p": ("a value in (0, 1]", lambda v: 0 < v <= 1, lambda t: (t > 0) & (t <= 1), 1.0),
    "min_p": ("a value in [0, 1]", lambda v: 0 <= v <= 1, lambda t: (t >= 0) & (t <= 1), 0.0),
    "guidance_scale": ("a finite value", math.isfinite, torch.isfinite, 1.0),
}


@dataclass(frozen=True)
class SamplingParams:
    """Checked sampling parameters: each a Python number or a per-row tensor ``[N]``."""

    temperature: PerRow
    top_k: PerRow
    top_p: PerRow
    min_p: PerRow
    guidance_scale: PerRow
    num_rows: int
    vocab_size: int | None

    def items(self) -> list[tuple[str, PerRow]]:
        return [(name, getattr(self, name)) for name in _RANGES]


@dataclass(frozen=True)
class RowParams:
    """Per-row parameters as tensors ``[N]`` (float32; ``top_k`` int64), values in range."""

    temperature_N: torch.Tensor
    top_k_N: torch.Tensor
    top_p_N: torch.Tensor
    min_p_N: torch.Tensor
    guidance_N: torch.Tensor


def check_logits(logits: object, uncond_logits: object, *,
                 names: tuple[str, str] = ("logits", "uncond_logits")) -> tuple[int, int]:
    """Check ``logits [N, V]`` (and ``uncond_logits``, same shape and device); return ``(N, V)``.

    ``names`` are the two arguments' names in the caller's signature, for the messages.
    """
    name, uncond_name = names
    _check_float_tensor(name, logits)
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must have shape [N, V] (flatten batch and positions first), got {tuple(logits.shape)}"
        )
    if logits.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column (V >= 1), got V = 0")
    if uncond_logits is not None:
        _check_float_tensor(uncond_name, uncond_logits)
        if uncond_logits.shape != logits.shape:
            raise ValueError(
                f"{uncond_name} must have the shape of {name} {tuple(logits.shape)}, got {tuple(uncond_logits.shape)}"
            )
        if uncond_logits.device != logits.device:
            raise ValueError(f"{uncond_name} must be on {logits.device} like {name}, got {uncond_logits.device}")
    return logits.shape[0], logits.shape[1]


def check_params(
    *,
    num_rows: int,
    vocab_size: int | None,
    device: torch.device,
    has_uncond: bool,
    temperature: object,
    top_k: object,
    top_p: object,
    min_p: object,
    guidance_scale: object,
) -> SamplingParams:
    """Check every sampling parameter: value ranges of numbers, shape/dtype/device of tensors.

    ``vocab_size=None`` (a config without logits yet) only checks ``top_k >= 0``.
    """
    values = {
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "guidance_scale": guidance_scale,
    }
    checked = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            checked[name] = _check_row_tensor(name, value, num_rows, device)
        else:
            checked[name] = _check_number(name, value, vocab_size)
    if not has_uncond and (isinstance(guidance_scale, torch.Tensor) or checked["guidance_scale"] != 1.0):
        raise ValueError(
            "guidance_scale other than 1.0 needs uncond_logits (classifier-free guidance combines cond and uncond logits)"
        )
    return SamplingParams(**checked, num_rows=num_rows, vocab_size=vocab_size)


def check_inputs(
    logits: object,
    uncond_logits: object,
    *,
    temperature: object,
    top_k: object,
    top_p: object,
    min_p: object,
    guidance_scale: object,
) -> SamplingParams:
    """:func:`check_logits` then :func:`check_params` for those logits: what every sampling entry point checks."""
    num_rows, vocab_size = check_logits(logits, uncond_logits)
    return check_params(
        num_rows=num_rows,
        vocab_size=vocab_size,
        device=logits.device,
        has_uncond=uncond_logits is not None,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        guidance_scale=guidance_scale,
    )


def sanitized(params: SamplingParams) -> tuple[dict[str, PerRow], torch.Tensor | None]:
    """Numbers unchanged; per-row tensors as float32 ``[N]`` (``top_k`` int64), in range.

    Out-of-range per-row values are replaced by neutral ones. Returns ``(values, ok_N)``; ``ok_N`` is False for rows with an out-of-range parameter, and
    None when every parameter is a number. Runs on the device without reading values back.
    """
    ok_N = None
    values = {}
    for name, value in params.items():
        if isinstance(value, torch.Tensor):
            dtype = torch.int64 if name == "top_k" else torch.float32
            t_N = value.to(dtype).expand(params.num_rows)
            good_N = _in_range(name, t_N, params.vocab_size)
            ok_N = good_N if ok_N is None else ok_N & good_N
            value = torch.where(good_N, t_N, torch.full_like(t_N, _RANGES[name][3]))
        values[name] = value
    return values, ok_N


def row_params(params: SamplingParams, device: torch.device) -> tuple[RowParams, torch.Tensor]:
    """Every parameter as a ``[N]`` tensor (see :func:`sanitized`); returns ``(rows, ok_N)``."""
    N = params.num_rows
    values, ok_N = sanitized(params)
    if ok_N is None:
        ok_N = torch.ones(N, dtype=torch.bool, device=device)
    tensors = {}
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            dtype = torch.int64 if name == "top_k" else torch.float32
            value = torch.full((N,), value, dtype=dtype, device=device)
        tensors[name] = value
    rows = RowParams(
        temperature_N=tensors["temperature"],
        top_k_N=tensors["top_k"],
        top_p_N=tensors["top_p"],
        min_p_N=tensors["min_p"],
        guidance_N=tensors["guidance_scale"],
    )
    return rows, ok_N


def describe_bad_rows(
    params: SamplingParams, logits: torch.Tensor, uncond_logits: torch.Tensor | None, valid_N: torch.Tensor
) -> str:
    """Explain why rows were invalid: out-of-range per-row parameters, or unusable logits."""
    bad_N = ~valid_N.cpu()
    lines = []
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            continue
        dtype = torch.int64 if name == "top_k" else torch.float32
        t_N = value.to(dtype).expand(params.num_rows).cpu()
        out_N = ~_in_range(name, t_N, params.vocab_size)
        if out_N.any():
            rows = out_N.nonzero().flatten().tolist()
            lines.append(
                f"{name} must be {_expected(name, params.vocab_size)}; rows {rows[:8]} have {t_N[rows[:8]].tolist()}"
            )
            bad_N &= ~out_N
    if bad_N.any():
        from .guidance import combine_guidance

        x_NV = logits.float()
        where = "logits"
        if uncond_logits is not None:
            x_NV = combine_guidance(logits, uncond_logits, params.guidance_scale)
            where = "logits after classifier-free guidance"
        x_NV = x_NV.cpu()
        for reason, hit_N in (
            ("contain NaN", torch.isnan(x_NV).any(1)),
            ("contain +inf", (x_NV == math.inf).any(1)),
            ("are entirely -inf (every token masked)", (x_NV == -math.inf).all(1)),
        ):
            rows = (hit_N & bad_N).nonzero().flatten().tolist()
            if rows:
                lines.append(f"{where}: rows {rows[:8]} {reason}")
    return "cannot sample: " + "; ".join(lines) + " (pass return_valid=True to get a per-row validity flag instead)"


def _check_float_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {value.dtype}")


def _expected(name: str, vocab_size: int | None) -> str:
    if name != "top_k":
        return _RANGES[name][0]
    return "an integer >= 0" if vocab_size is None else f"an integer in [0, V] = [0, {vocab_size}]"


def _check_number(name: str, value: object, vocab_size: int | None) -> Scalar:
    if name == "top_k":
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"top_k must be an int or an integer tensor [N], got {type(value).__name__}")
        if value < 0 or (vocab_size is not None and value > vocab_size):
            raise ValueError(f"top_k must be {_expected(name, vocab_size)} (0 = off), got {value}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a float tensor [N], got {type(value).__name__}")
    value = float(value)
    if not _RANGES[name][1](value):
        raise ValueError(f"{name} must be {_expected(name, vocab_size)}, got {value}")
    return value


def _check_row_tensor(name: str, value: torch.Tensor, num_rows: int, device: torch.device) -> torch.Tensor:
    if name == "top_k":
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise TypeError(f"top_k as a tensor must have an integer dtype, got {value.dtype}")
    elif not value.is_floating_point():
        raise TypeError(f"{name} as a tensor must have a floating dtype, got {value.dtype}")
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != num_rows):
        raise ValueError(
            f"{name} as a tensor must have shape [N] = [{num_rows}] (one value per row), got {tuple(value.shape)}"
        )
    if value.device != device:
        raise ValueError(f"{name} must be on {device} like logits, got {value.device}")
    return value


def _in_range(name: str, t_N: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if name == "top_k":
        return (t_N >= 0) & (t_N <= vocab_size)
    return _RANGES[name][2](t_N.float())
