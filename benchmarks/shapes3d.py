"""Octree generation by level vs token by token, side by side: tokens, GPT forwards and time per shape (CPU).

Both pipelines are the shipped ``checkpoints/primitives/octree-level`` (NextScalePipeline: every node of an
octree level in one forward) and ``octree-token`` (NextTokenPipeline: one node per forward), 16^3 primitives,
the same GPT size. They are different trained models, so each draws its own trees; the table gives each
one's mean tokens per shape next to its forwards. Both run in one process, alternating over ``--repeats``
rounds after a warm-up, on the same prompts and seeds; times are medians and include decoding the octree,
and the last column is each one's time relative to token by token.

    python benchmarks/shapes3d.py [--batch-sizes 1 20] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from mmgen.data import NUM_SHAPE3D_CLASSES
from pipelines import ARPipeline, NextScalePipeline, NextTokenPipeline

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints" / "primitives"
PIPELINES = {"by level (next-scale)": ("octree-level", NextScalePipeline), "by token (next-token)": ("octree-token", NextTokenPipeline)}
SAMPLING = {"guidance_scale": 2.0, "temperature": 0.5}  # configs/primitives/octree-token.yaml evaluates with T 0.5, octree-level with 0.3


def load(folder: Path, cls: type[ARPipeline]) -> ARPipeline:
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"{folder} is not a saved pipeline: train it with `mmgen train configs/primitives/{folder.name}.yaml` "
                         f"and copy its pipeline/ folder there")
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe: ARPipeline, batch: int, forwards: list[int]) -> tuple[float, torch.Tensor]:
    """Seconds of one call on ``batch`` prompts (cycling the classes) and the tokens it drew."""
    labels = [c % NUM_SHAPE3D_CLASSES for c in range(batch)]
    generators = [torch.Generator().manual_seed(c) for c in range(batch)]
    trunk = pipe.gpt.hidden_states

    def counted(*args, **kwargs):
        forwards.append(1)
        return trunk(*args, **kwargs)

    pipe.gpt.hidden_states = counted
    start = time.perf_counter()
    out = pipe(class_labels=labels, generator=generators, output_type="voxels", **SAMPLING)
    seconds = time.perf_counter() - start
    pipe.gpt.hidden_states = trunk
    return seconds, out.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoints", type=Path, default=CHECKPOINTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipes = {name: load(args.checkpoints / folder, cls) for name, (folder, cls) in PIPELINES.items()}
    for pipe in pipes.values():
        call(pipe, 1, [])  # warm-up
    gpt = next(iter(pipes.values())).gpt.cfg
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"GPT d{gpt.dim} x {gpt.n_layers}, CFG {SAMPLING['guidance_scale']:g} (doubled batch), median of {args.repeats}")
    print("| octree order | batch | tokens / shape | GPT forwards / call | s / call | ms / shape | vs by token |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        times: dict[str, list[float]] = {name: [] for name in pipes}
        counts: dict[str, list[int]] = {name: [] for name in pipes}
        tokens: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, pipe in pipes.items():
                forwards: list[int] = []
                seconds, ids = call(pipe, batch, forwards)
                times[name].append(seconds)
                counts[name].append(len(forwards))
                tokens[name] = float(pipe.tokenizer.lengths(ids).float().mean())
        base = statistics.median(times["by token (next-token)"])
        for name in pipes:
            median = statistics.median(times[name])
            print(f"| {name} | {batch} | {tokens[name]:.0f} | {statistics.median(counts[name]):.0f} | {median:.3f} | "
                  f"{1000 * median / batch:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
