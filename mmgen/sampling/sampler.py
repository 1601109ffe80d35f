"""``sample``: the one entry point every pipeline uses to turn logits into token ids."""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from .fast import sample_fast
from .params import check_inputs, describe_bad_rows
from .reference import sample_reference
from .rng import base_seed, check_seed, row_seeds

Backend = Literal["auto", "reference", "fast", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "fast", "triton")


def sample(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    min_p: float | torch.Tensor = 0.0,
    uncond_logits: torch.Tensor | None = None,
    guidance_scale: float | torch.Tensor = 1.0,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    num_samples: int | None = None,
    return_valid: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw token ids from ``logits [N, V]``: CFG -> temperature -> top-k -> top-p -> min-p -> draw.

    Semantics (ties included) are defined in :mod:`mmgen.sampling.reference`. Every parameter
    is a number or a per-row tensor ``[N]``; ``top_k=0``, ``top_p=1``, ``min_p=0`` are off,
    ``temperature=0`` is greedy. With ``uncond_logits`` the logits are first combined as
    ``uncond + guidance_scale * (logits - uncond)``.

    Randomness: ``generator`` (one int64 is drawn from it per call) or ``seed`` (int, or int64
    tensor ``[N]`` of per-row seeds) — see :mod:`mmgen.sampling.rng`. ``num_samples=S`` draws
    S ids per row (``[N, S]``) from one filtered distribution; the default returns ``[N]``.

    Rows that cannot be sampled (NaN or ``+inf`` logits, every logit ``-inf``, an out-of-range
    per-row parameter) raise ``ValueError`` naming them, which reads one flag back from the
    device. With ``return_valid=True`` the result is ``(ids, valid)`` and invalid rows get id
    0; the Triton backend then reads nothing back (CUDA-graph capturable with a ``seed``
    tensor), while the fast backend still reads back the few sizes it plans with.

    ``backend``: ``"reference"`` (sort + ``torch.multinomial``), ``"fast"`` (torch, CPU first),
    ``"triton"`` (one fused kernel; CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1``),
    ``"auto"`` (triton for CUDA tensors when triton is installed, else fast).
    """
    params = check_inputs(logits, uncond_logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          guidance_scale=guidance_scale)
    N = params.num_rows
    check_seed(seed, generator, N, logits.device)
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        raise ValueError(f"num_samples must be None or an int >= 1, got {num_samples!r}")
    if not isinstance(return_valid, bool):
        raise TypeError(f"return_valid must be a bool, got {type(return_valid).__name__}")
    path = _resolve_backend(backend, logits)
    S = 1 if num_samples is None else num_samples

    if N == 0:
        ids_NS = torch.zeros((0, S), dtype=torch.int64, device=logits.device)
        valid_N = torch.ones(0, dtype=torch.bool, device=logits.device)
    elif path == "reference":
        ids_NS, valid_N = sample_reference(logits, uncond_logits, params, generator=generator, seed=seed, num_samples=S)
    elif path == "fast":
        seeds_N = row_seeds(generator=generator, seed=seed, num_rows=N, device=logits.device)
        ids_NS, valid_N = sample_fast(logits, uncond_logits, params, seeds_N, S)
    else:
        from .triton_kernel import sample_triton

        if isinstance(seed, torch.Tensor):
            seeds, per_row = seed, True
        elif seed is not None:
            seeds, per_row = torch.tensor([seed], dtype=torch.int64, device=logits.device), False
        else:
            seeds, per_row = base_seed(generator, logits.device), False
        ids_NS, valid_N = sample_triton(logits, uncond_logits, params, seeds, per_row, S)

    if not return_valid and N and not bool(valid_N.all()):
        raise ValueError(describe_bad_rows(params, logits, uncond_logits, valid_N))
    ids = ids_NS[:, 0] if num_samples is None else ids_NS
    return (ids, valid_N) if return_valid else ids


def triton_available() -> bool:
    """Whether the triton package can be imported."""
    return importlib.util.find_spec("triton") is not None


def _resolve_backend(backend: object, logits: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if logits.is_cuda and triton_available() else "fast"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if not logits.is_cuda:
            from .triton_kernel import INTERPRETED

            if not INTERPRETED:
                raise ValueError(
                    f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported "
                    f"to run the kernel on the CPU), got logits on {logits.device}"
                )
    return backend
