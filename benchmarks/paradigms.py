"""Next-token vs next-scale vs next-X at equal model size: GPT forward passes per image and images/s (CPU).

All paradigms share one GPT shape (``--dim``, ``--layers``) and generate 32×32 images from an 8×8
token grid (the same VQ ids for next-token and discrete next-X; VAR's scales 1,2,3,4,6,8 ending at that
grid for next-scale; an 8×8 continuous latent grid with a flow head for continuous next-X). Weights are
random: speed does not depend on them. The script runs every paradigm in one process, alternating over
``--repeats`` rounds, and prints medians and the speed of each relative to next-token.

    python benchmarks/paradigms.py [--batch-sizes 1 16] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any, Callable

import torch

from mmgen import GPT, GPTConfig
from mmgen.flow_head import FlowHead, FlowHeadConfig
from pipelines import ARImagePipeline, NextScalePipeline, NextTokenPipeline, NextXPipeline
from tokenizers_visual import KLConfig, KLImageTokenizer, MultiScaleVQConfig, MultiScaleVQTokenizer, VQConfig, VQImageTokenizer

GRID = 8
IMAGE = 32


def _gpt(args: argparse.Namespace, **fields: Any) -> GPT:
    return GPT(GPTConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, num_classes=21, start_token=True,
                         max_seq_len=256, **fields)).eval()


def build(args: argparse.Namespace) -> dict[str, tuple[ARImagePipeline, dict[str, Any]]]:
    """One pipeline per paradigm (and per next-X entity), each with the same GPT size."""
    torch.manual_seed(0)
    vq = VQImageTokenizer(VQConfig(image_size=IMAGE, downsample=4, channels=32, channel_mult=[1, 2, 2], codebook_size=512)).eval()
    msvq = MultiScaleVQTokenizer(MultiScaleVQConfig(image_size=IMAGE, channels=32, channel_mult=(1, 2, 2), codebook_size=512,
                                                    codebook_dim=32, patch_nums=(1, 2, 3, 4, 6, 8))).eval()
    kl = KLImageTokenizer(KLConfig(image_size=IMAGE, downsample=4, channels=32, channel_mult=[1, 2, 2], latent_dim=4)).eval()
    head = FlowHead(FlowHeadConfig(latent_dim=4, cond_dim=args.dim, width=128, depth=2)).eval()
    common = {"null_condition_trained": True}
    pipes: dict[str, tuple[ARImagePipeline, dict[str, Any]]] = {
        "next-token (64 tokens)": (NextTokenPipeline(gpt=_gpt(args, vocab_size=512, coord_rank=2), tokenizer=vq, **common), {}),
        "next-scale (6 scales, 130 tokens)": (NextScalePipeline(
            gpt=_gpt(args, vocab_size=512, coord_rank=3, input_dim=32), tokenizer=msvq, **common), {}),
        "next-X discrete, 2x2 cells (16 steps)": (NextXPipeline(
            gpt=_gpt(args, vocab_size=512, coord_rank=2), tokenizer=vq, entity="cell", cell_size=2, **common), {}),
    }
    for entity, steps, extra in (("cell", 16, {"cell_size": 2}), ("scale", 4, {"patch_nums": [1, 2, 4, 8]})):
        rank = 3 if entity == "scale" else 2
        pipe = NextXPipeline(gpt=_gpt(args, vocab_size=1, coord_rank=rank, input_dim=4), tokenizer=kl, head=head,
                             entity=entity, num_flow_steps=args.flow_steps, **extra, **common)
        pipes[f"next-X continuous, {entity} ({steps} steps x {args.flow_steps} flow steps)"] = (pipe, {})
    return pipes


def count_forwards(pipe: ARImagePipeline, run: Callable[[], Any]) -> int:
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipes = build(args)
    for pipe, _ in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    print(f"# paradigms: GPT dim {args.dim}, {args.layers} layers; CFG {args.guidance_scale}; {args.threads} thread(s); "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print("\n| paradigm | GPT (+ flow head) params | forward passes / image | " + " | ".join(f"images/s (batch {b})" for b in args.batch_sizes)
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
        head = getattr(pipe, "head", None)
        modules = [pipe.gpt] + ([head] if head is not None else [])
        params = sum(p.numel() for m in modules for p in m.parameters()) / 1e6
        rates = [batch / statistics.median(times[(name, batch)]) for batch in args.batch_sizes]
        ratios = [rate / (batch / statistics.median(times[(baseline, batch)])) for rate, batch in zip(rates, args.batch_sizes)]
        print(f"| {name} | {params:.2f}M | {forwards[name]} | " + " | ".join(f"{r:.1f}" for r in rates) + " | "
              + " | ".join(f"{x:.2f}x" for x in ratios) + " |")


if __name__ == "__main__":
    main()
