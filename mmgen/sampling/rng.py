"""Random numbers keyed by (row seed, sample, column), so a row's draw ignores its batch.

Seeds. Each call takes one base seed from the ``torch.Generator`` (one ``torch.randint`` in
``[0, 2**62)`` on the generator's device; this advances the generator, so the same generator
state reproduces the same ids) and row ``i`` uses ``base + i``. Passing ``seed`` instead sets
the row seeds directly: an int ``s`` means ``s + i``, an int64 tensor ``[N]`` gives one seed
per row. A row's draw depends only on its row seed, its logits and its parameters: rows can be
appended without changing the earlier rows' ids, and with explicit per-row seeds rows can be
reordered or regrouped freely.

Streams. The Triton kernel uses Philox (``tl.rand(row_seed, sample * 2**32 + column)``). The
torch fast path uses a counter-based hash, MurmurHash3's 32-bit finaliser ``fmix32`` applied
to ``fmix32(column) XOR key(row seed, sample)`` (the column part is a cached table), which
costs about 15 tensor ops per drawn candidate and can be evaluated on any subset of columns.
The two streams differ, so the backends give different (equally distributed) ids for the
same seed.
"""

from __future__ import annotations

import functools

import torch

_M32 = 0xFFFFFFFF
_SEED_BOUND = 1 << 62


def base_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw one int64 base seed ``[1]`` from ``generator`` (default generator of ``device``)."""
    gen_device = device if generator is None else generator.device
    seed_1 = torch.randint(0, _SEED_BOUND, (1,), generator=generator, device=gen_device)
    return seed_1.to(device)


def check_seed(seed: object, generator: object, num_rows: int, device: torch.device) -> None:
    """Check ``seed`` (int or int64 tensor ``[N]``) and ``generator`` (mutually exclusive)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if seed is None:
        return
    if generator is not None:
        raise ValueError("pass either generator or seed, not both")
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64:
            raise TypeError(f"seed as a tensor must be int64, got {seed.dtype}")
        if seed.shape != (num_rows,):
            raise ValueError(f"seed as a tensor must have shape [N] = [{num_rows}], got {tuple(seed.shape)}")
        if seed.device != device:
            raise ValueError(f"seed must be on {device} like logits, got {seed.device}")
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or an int64 tensor [N], got {type(seed).__name__}")
    elif not -(1 << 63) <= seed < (1 << 63) - num_rows:
        raise ValueError(f"seed must fit in int64 (with room for {num_rows} rows), got {seed}")


def row_seeds(
    *, generator: torch.Generator | None, seed: int | torch.Tensor | None, num_rows: int, device: torch.device
) -> torch.Tensor:
    """int64 row seeds ``[N]``: ``seed`` if it is a tensor, else ``base + arange(N)``."""
    if isinstance(seed, torch.Tensor):
        return seed
    rows_N = torch.arange(num_rows, dtype=torch.int64, device=device)
    if seed is not None:
        return rows_N + seed
    return rows_N + base_seed(generator, device)


def log_uniforms(seeds_N: torch.Tensor, num_samples: int, sample_start: int, cols: torch.Tensor) -> torch.Tensor:
    """``log(u)`` ``[N, S, L]`` for samples ``sample_start + [0, S)`` at columns ``cols [N|1, L]``.

    ``u = (m + 0.5) / 2**23`` from 23 hash bits, strictly inside (0, 1), so ``log(u) < 0``.
    """
    if num_samples == 1:
        sample_S = _fmix32((sample_start + 0x9E3779B9) & _M32)
    else:
        samples = torch.arange(sample_start, sample_start + num_samples, dtype=torch.int64, device=seeds_N.device)
        sample_S = _fmix32((samples + 0x9E3779B9) & _M32)
    high_N1 = ((seeds_N >> 32) & _M32)[:, None]
    key_NS1 = _fmix32((seeds_N & _M32)[:, None] ^ _fmix32(high_N1 ^ sample_S))[:, :, None]
    col_hash = _column_hashes(int(cols.max()) + 1, cols.device).take(cols)
    bits_NSL = _fmix32(col_hash[:, None, :] ^ key_NS1)
    return (bits_NSL >> 9).float().add_(0.5).mul_(2.0**-23).log_()


@functools.lru_cache(maxsize=16)
def _column_hashes_cached(size: int, device: torch.device) -> torch.Tensor:
    return _fmix32(torch.arange(size, dtype=torch.int64, device=device))


def _column_hashes(size: int, device: torch.device) -> torch.Tensor:
    """``fmix32(column)`` for columns ``[0, size)``, cached for sizes rounded up to 2**k."""
    return _column_hashes_cached(1 << max(0, size - 1).bit_length(), device)


def _mul32(x: torch.Tensor | int, constant: int) -> torch.Tensor | int:
    """``x * constant mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow."""
    signed = constant - (1 << 32) if constant >= (1 << 31) else constant
    return (x * signed) & _M32


def _fmix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """MurmurHash3's 32-bit finaliser on int64 tensors (or Python ints) holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)
