"""Next-token vs next-scale vs next-X at equal model size: GPT forward passes per image and images/s (CPU).

All paradigms share one GPT shape (``--dim``, ``--layers``) and generate 32×32 images from an 8×8
token grid (the same VQ ids for next-token and discrete next-X; VAR's scales 1,2,3,4,6,8 ending at that
grid for next-scale; an 8×8 continuous latent grid with a flow head for continuous next-X). Weights are
random: speed does not depend on them. The script runs every paradigm in one process, alternating over
``--repeats`` rounds, and prints medians and the speed of each relative to next-token.

``--against REV`` compares with another commit in the same run: it checks REV out into a temporary
git worktree and runs this script there and here in turn (``--rounds`` times each, in fresh processes),
then prints both tables and the ratio of images/s (this tree / REV) per paradigm and batch size.

    python benchmarks/paradigms.py [--batch-sizes 1 16] [--repeats 5] [--threads 1] [--against HEAD~1 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from pipelines import ARPipeline, NextScalePipeline, NextTokenPipeline, NextXPipeline
from tokenizers_visual import KLConfig, KLImageTokenizer, MultiScaleVQConfig, MultiScaleVQTokenizer, VQConfig, VQImageTokenizer

GRID = 8
IMAGE = 32


def build(args: argparse.Namespace) -> dict[str, tuple[ARPipeline, dict[str, Any]]]:
    """One pipeline per paradigm (and per next-X entity), each with the same GPT size."""
    torch.manual_seed(0)
    vq = VQImageTokenizer(VQConfig(image_size=IMAGE, downsample=4, channels=32, channel_mult=[1, 2, 2], codebook_size=512)).eval()
    msvq = MultiScaleVQTokenizer(MultiScaleVQConfig(image_size=IMAGE, channels=32, channel_mult=(1, 2, 2), codebook_size=512,
                                                    codebook_dim=32, patch_nums=(1, 2, 3, 4, 6, 8))).eval()
    kl = KLImageTokenizer(KLConfig(image_size=IMAGE, downsample=4, channels=32, channel_mult=[1, 2, 2], latent_dim=4)).eval()
    gpt = {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads, "max_seq_len": 256}
    flow = {"width": 128, "depth": 2}

    def make(cls: type[ARPipeline], tokenizer: Any, **options: Any) -> ARPipeline:
        conditioner = ClassConditioner(ClassConditionerConfig(dim=args.dim, num_classes=21))
        return cls.from_tokenizer(tokenizer, conditioner=conditioner, gpt=gpt, null_condition_trained=True, **options)

    pipes: dict[str, tuple[ARPipeline, dict[str, Any]]] = {
        "next-token (64 tokens)": (make(NextTokenPipeline, vq), {}),
        "next-scale (6 scales, 130 tokens)": (make(NextScalePipeline, msvq), {}),
        "next-X discrete, 2x2 cells (16 steps)": (make(NextXPipeline, vq, entity="cell", cell_size=2), {}),
    }
    for entity, steps, extra in (("cell", 16, {"cell_size": 2}), ("scale", 4, {"patch_nums": [1, 2, 4, 8]})):
        pipe = make(NextXPipeline, kl, head=flow, entity=entity, num_flow_steps=args.flow_steps, **extra)
        pipes[f"next-X continuous, {entity} ({steps} steps x {args.flow_steps} flow steps)"] = (pipe, {})
    return pipes


def count_forwards(pipe: ARPipeline, run: Callable[[], Any]) -> int:
    """GPT trunk calls during ``run`` (one per generation step)."""
    calls = [0]
    handle = pipe.gpt.norm.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        run()
    finally:
        handle.remove()
    return calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--flow-steps", type=int, default=16)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--against", default=None, help="a git revision to compare with, run in a temporary worktree")
    parser.add_argument("--rounds", type=int, default=3, help="with --against: runs of each tree, alternating")
    args = parser.parse_args()
    if args.against:
        compare(args)
        return
    torch.set_num_threads(args.threads)
    pipes = build(args)
    for pipe, _ in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    print(f"# paradigms: GPT dim {args.dim}, {args.layers} layers; CFG {args.guidance_scale}; {args.threads} thread(s); "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print("\n| paradigm | conditioner + GPT + head params | forward passes / image | " + " | ".join(f"images/s (batch {b})" for b in args.batch_sizes)
          + " | " + " | ".join(f"vs next-token (batch {b})" for b in args.batch_sizes) + " |")
    print("|---|---|---|" + "---|" * (2 * len(args.batch_sizes)))
    times: dict[tuple[str, int], list[float]] = {}
    forwards: dict[str, int] = {}
    for name, (pipe, kwargs) in pipes.items():
        forwards[name] = count_forwards(pipe, lambda: pipe(class_labels=[0], guidance_scale=args.guidance_scale, output_type="pt", **kwargs))
    for _ in range(args.repeats):
        for batch in args.batch_sizes:
            for name, (pipe, kwargs) in pipes.items():
                gens = [torch.Generator().manual_seed(i) for i in range(batch)]
                start = time.perf_counter()
                pipe(class_labels=list(range(batch)), guidance_scale=args.guidance_scale, generator=gens, output_type="pt", **kwargs)
                times.setdefault((name, batch), []).append(time.perf_counter() - start)
    baseline = next(iter(pipes))
    for name, (pipe, _) in pipes.items():
        modules = [pipe.conditioner, pipe.gpt, pipe.head]
        params = sum(p.numel() for m in modules for p in m.parameters()) / 1e6
        rates = [batch / statistics.median(times[(name, batch)]) for batch in args.batch_sizes]
        ratios = [rate / (batch / statistics.median(times[(baseline, batch)])) for rate, batch in zip(rates, args.batch_sizes)]
        print(f"| {name} | {params:.2f}M | {forwards[name]} | " + " | ".join(f"{r:.1f}" for r in rates) + " | "
              + " | ".join(f"{x:.2f}x" for x in ratios) + " |")


def _rates(table: str, num_batches: int) -> dict[str, list[float]]:
    """images/s per paradigm from a printed table (columns 4 .. 3 + num_batches)."""
    rates = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 + num_batches and cells[0].startswith("next-"):
            rates[cells[0]] = [float(c) for c in cells[3:3 + num_batches]]
    return rates


def compare(args: argparse.Namespace) -> None:
    """This tree against ``args.against``: alternate fresh runs of both, print both tables and the ratios of the medians."""
    here = Path(__file__).resolve().parents[1]
    passed = [a for a in sys.argv[1:] if a not in ("--against", args.against, "--rounds", str(args.rounds))]
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(here), "worktree", "add", "--detach", str(other), args.against], check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict[str, list[float]]]] = {"this tree": [], args.against: []}
            last: dict[str, str] = {}
            for _ in range(args.rounds):
                for label, root in ((args.against, other), ("this tree", here)):
                    out = subprocess.run([sys.executable, str(root / "benchmarks" / "paradigms.py"), *passed], cwd=root, check=True,
                                         capture_output=True, text=True, env={**_env(), "PYTHONPATH": str(root)}).stdout
                    runs[label].append(_rates(out, len(args.batch_sizes)))
                    last[label] = out
        finally:
            subprocess.run(["git", "-C", str(here), "worktree", "remove", "--force", str(other)], capture_output=True)
    for label in (args.against, "this tree"):
        print(f"## {label} (last of {args.rounds} runs)\n{last[label]}")
    print(f"## images/s, median of {args.rounds} runs: this tree / {args.against}\n")
    print("| paradigm | " + " | ".join(f"batch {b}: this / {args.against}" for b in args.batch_sizes) + " | ratios |")
    print("|---|" + "---|" * (len(args.batch_sizes) + 1))
    for name in runs["this tree"][0]:
        cells, ratios = [], []
        for i in range(len(args.batch_sizes)):
            new = statistics.median(r[name][i] for r in runs["this tree"])
            old = statistics.median(r[name][i] for r in runs[args.against] if name in r)
            cells.append(f"{new:.1f} / {old:.1f}")
            ratios.append(f"{new / old:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


if __name__ == "__main__":
    main()
