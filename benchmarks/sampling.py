"""Sampling speed side by side: mmgen's backends against transformers (CPU) and FlashInfer (GPU).

    python benchmarks/sampling.py            # CPU table; GPU tables too when CUDA is available
    python benchmarks/sampling.py --quick    # fewer shapes, shorter timings

Every number is the median of repeated timings after a warm-up. Logits are float32
``N(0, 2^2)``, temperature 0.8, filters top-k + top-p (``--configs``, default
``50:0.95,1000:0.95``).

- CPU: mmgen ``fast`` vs the transformers chain TemperatureLogitsWarper -> TopKLogitsWarper ->
  TopPLogitsWarper -> softmax -> torch.multinomial, and mmgen ``reference``.
- CUDA: the Triton kernel (replayed from a CUDA graph, so launch overhead is excluded, and
  through a plain ``sample()`` call) vs the torch reference and FlashInfer's
  ``top_k_top_p_sampling_from_logits`` when installed (fed ``logits / T`` from torch); the
  kernel's read bandwidth against the card's measured copy bandwidth; and with CFG, the fused
  kernel (reads cond and uncond) against guidance in torch followed by the kernel.

On a machine shared with other jobs use ``--threads 1 --clock cpu``: process CPU time is
immune to preemption, which otherwise inflates wall-clock medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from mmgen.sampling import apply_guidance, sample

TEMPERATURE = 0.8


def make_logits(N: int, V: int, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, V, generator=g) * 2.0).to(device)


def median_cpu_ms(fn: Callable[[], object], *, min_reps: int, budget_s: float, clock: Callable[[], float]) -> float:
    """Median time of ``fn`` on ``clock`` after one warm-up call (3 repeats suffice past 0.25 s)."""
    t0 = time.perf_counter()
    fn()
    if time.perf_counter() - t0 > 0.25:
        min_reps = min(min_reps, 3)
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < budget_s:
        t0 = clock()
        fn()
        times.append(clock() - t0)
        if len(times) >= 200:
            break
    return 1e3 * statistics.median(times)


def transformers_chain(top_k: int, top_p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain = LogitsProcessorList(
        [TemperatureLogitsWarper(TEMPERATURE), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    )

    def draw(logits_NV: torch.Tensor) -> torch.Tensor:
        input_ids = logits_NV.new_zeros((logits_NV.shape[0], 1), dtype=torch.long)
        scores = chain(input_ids, logits_NV)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1)[:, 0]

    return draw


def cpu_table(
    shapes: list[tuple[int, int]],
    configs: list[tuple[int, float]],
    *,
    min_reps: int,
    budget_s: float,
    clock: Callable[[], float],
) -> str:
    rows = [
        "| top_k | top_p | N | V | transformers ms | mmgen fast ms | speed-up | mmgen reference ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    timing = {"min_reps": min_reps, "budget_s": budget_s, "clock": clock}
    for top_k, top_p in configs:
        hf = transformers_chain(top_k, top_p)
        for N, V in shapes:
            t_hf, t_fast, t_ref = cpu_times(hf, make_logits(N, V, "cpu"), top_k, top_p, timing)
            rows.append(
                f"| {top_k} | {top_p} | {N} | {V} | {t_hf:.3f} | {t_fast:.3f} | {t_hf / t_fast:.1f}x | {t_ref:.3f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def cpu_times(
    hf: Callable[[torch.Tensor], torch.Tensor], x_NV: torch.Tensor, top_k: int, top_p: float, timing: dict
) -> tuple[float, float, float]:
    """Times (ms) of the transformers chain, mmgen fast and mmgen reference on ``x_NV``."""
    kwargs = {"temperature": TEMPERATURE, "top_k": top_k, "top_p": top_p, "generator": torch.Generator().manual_seed(0)}
    return (
        median_cpu_ms(lambda: hf(x_NV), **timing),
        median_cpu_ms(lambda: sample(x_NV, **kwargs, backend="fast"), **timing),
        median_cpu_ms(lambda: sample(x_NV, **kwargs, backend="reference"), **timing),
    )


def median_cuda_ms(fn: Callable[[], object], *, inner: int = 20, outer: int = 7) -> float:
    """Median over ``outer`` rounds of the mean time of ``inner`` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(outer):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        rounds.append(start.elapsed_time(end) / inner)
    return statistics.median(rounds)


def graph_of(fn: Callable[[], object]) -> Callable[[], None]:
    """Capture ``fn`` in a CUDA graph; the returned callable replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth_gbs() -> float:
    """Device copy bandwidth (bytes read + written per second) on a 1 GiB buffer."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = median_cuda_ms(lambda: dst.copy_(src), inner=5, outer=5)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def cuda_tables(shapes: list[tuple[int, int]], configs: list[tuple[int, float]]) -> str:
    copy_gbs = copy_bandwidth_gbs()
    lines = [
        f"Copy bandwidth (read + write): {copy_gbs:.0f} GB/s. GB/s below = logits bytes read / kernel time.",
        "",
        (
            "| top_k | top_p | N | V | triton graph ms | triton call ms | reference ms | flashinfer ms "
            "| vs reference | vs flashinfer | GB/s | % of copy |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for top_k, top_p in configs:
        for N, V in shapes:
            t_graph, t_call, t_ref, t_fi = cuda_times(make_logits(N, V, "cuda"), top_k, top_p)
            gbs = N * V * 4 / (t_graph * 1e-3) / 1e9
            lines.append(
                f"| {top_k} | {top_p} | {N} | {V} | {t_graph:.4f} | {t_call:.4f} | {t_ref:.4f} | {t_fi:.4f} "
                f"| {t_ref / t_graph:.1f}x | {t_fi / t_graph:.2f}x | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "With CFG (scale 4): one kernel reading cond and uncond vs torch guidance then the kernel (graph replay).",
        "",
        "| top_k | top_p | N | V | fused ms | CFG-then-sample ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for top_k, top_p in configs:
        for N, V in shapes:
            t_fused, t_split = cuda_cfg_times(make_logits(N, V, "cuda", 1), make_logits(N, V, "cuda", 2), top_k, top_p)
            lines.append(
                f"| {top_k} | {top_p} | {N} | {V} | {t_fused:.4f} | {t_split:.4f} | {t_split / t_fused:.2f}x |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def cuda_times(x_NV: torch.Tensor, top_k: int, top_p: float) -> tuple[float, float, float, float]:
    """Times (ms): Triton kernel from a CUDA graph and as a call, torch reference, FlashInfer."""
    seeds_N = torch.arange(x_NV.shape[0], device="cuda")
    kwargs = {"temperature": TEMPERATURE, "top_k": top_k, "top_p": top_p, "return_valid": True}

    def fused() -> None:
        sample(x_NV, **kwargs, seed=seeds_N, backend="triton")

    ref_gen = torch.Generator("cuda").manual_seed(0)
    t_ref = median_cuda_ms(lambda: sample(x_NV, **kwargs, generator=ref_gen, backend="reference"))
    t_fi = float("nan")
    try:
        from flashinfer.sampling import top_k_top_p_sampling_from_logits
    except ImportError:
        pass
    else:
        fi_gen = torch.Generator("cuda").manual_seed(0)
        t_fi = median_cuda_ms(
            lambda: top_k_top_p_sampling_from_logits(x_NV / TEMPERATURE, top_k, top_p, generator=fi_gen)
        )
    return median_cuda_ms(graph_of(fused)), median_cuda_ms(fused), t_ref, t_fi


def cuda_cfg_times(cond_NV: torch.Tensor, uncond_NV: torch.Tensor, top_k: int, top_p: float) -> tuple[float, float]:
    """Times (ms, graph replay): fused CFG kernel, and guidance in torch followed by the kernel."""
    seeds_N = torch.arange(cond_NV.shape[0], device="cuda")
    kwargs = {"temperature": TEMPERATURE, "top_k": top_k, "top_p": top_p, "seed": seeds_N, "return_valid": True}

    def fused_cfg() -> None:
        sample(cond_NV, uncond_logits=uncond_NV, guidance_scale=4.0, **kwargs, backend="triton")

    def cfg_then_sample() -> None:
        sample(apply_guidance(cond_NV, uncond_NV, 4.0), **kwargs, backend="triton")

    return median_cuda_ms(graph_of(fused_cfg)), median_cuda_ms(graph_of(cfg_then_sample))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {1, 16}, V in {4096, 16384}, short timings")
    parser.add_argument("--configs", default="50:0.95,1000:0.95", help="comma-separated top_k:top_p pairs")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU tables")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="CPU table clock: wall time, or this process's CPU time (immune to preemption by other "
        "jobs on a shared machine; equals wall time for a single thread on an idle machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    configs = [(int(k), float(p)) for k, p in (pair.split(":") for pair in args.configs.split(","))]
    Ns, Vs = ((1, 16), (4096, 16384)) if args.quick else ((1, 16, 256), (4096, 16384, 65536, 128256))
    shapes = [(N, V) for N in Ns for V in Vs]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}\n"
    )
    print(f"CPU (float32 logits, {args.clock} clock)\n", flush=True)
    cpu = cpu_table(shapes, configs, min_reps=3 if args.quick else 5, budget_s=0.3 if args.quick else 1.0, clock=clock)
    print("\n" + cpu)
    if torch.cuda.is_available() and not args.no_cuda:
        print(f"\nCUDA: {torch.cuda.get_device_name()}\n", flush=True)
        print("\n" + cuda_tables(shapes, configs))


if __name__ == "__main__":
    main()
