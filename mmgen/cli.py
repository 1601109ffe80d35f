"""The ``mmgen`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .gpt import GPT, GPTConfig


def _demo(args: argparse.Namespace) -> int:
    """Class-conditional generation with CFG from a randomly initialised tiny GPT: the whole decode path, end to end."""
    torch.manual_seed(args.seed)
    gpt = GPT(GPTConfig(vocab_size=1024, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, num_classes=21, max_seq_len=512)).eval()
    labels = torch.arange(args.num_samples) % 21
    start = time.perf_counter()
    tokens = gpt.generate(
        torch.zeros(args.num_samples, 0, dtype=torch.long),
        max_new_tokens=args.num_tokens,
        class_labels=labels,
        guidance_scale=args.guidance_scale,
        temperature=1.0,
        top_k=100,
        top_p=0.95,
        generator=torch.Generator().manual_seed(args.seed),
    )
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in gpt.parameters()) / 1e6
    print(f"mmgen demo: random {params:.1f}M-parameter GPT, {args.num_samples} samples x {args.num_tokens} tokens, CFG {args.guidance_scale}")
    for label, row in zip(labels.tolist(), tokens.tolist()):
        print(f"  class {label:2d}: {' '.join(map(str, row[:12]))} ...")
    print(f"{tokens.numel() / seconds:.0f} tokens/s ({seconds:.2f} s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train what a YAML config describes (a tokenizer or a generator pipeline) with accelerate."""
    from .training import Trainer, load_config

    overrides = {"output_dir": str(args.output_dir)} if args.output_dir else None
    cfg = load_config(args.config, overrides=overrides)
    report = Trainer(cfg).fit(resume=args.resume)
    if "eval" in report:
        print(json.dumps(report["eval"], indent=2, default=float))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgen", description="Autoregressive multimodal generation on one shared GPT backbone.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="generate tokens with a randomly initialised tiny model (no downloads)")
    demo.add_argument("--num-samples", type=int, default=4, help="samples to generate (default 4)")
    demo.add_argument("--num-tokens", type=int, default=64, help="tokens per sample (default 64)")
    demo.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance scale (default 3.0)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(run=_demo)
    train = commands.add_parser("train", help="train a tokenizer or a generator from a YAML config (accelerate)")
    train.add_argument("config", type=Path, help="YAML run config, e.g. configs/pipelines/next-token-shapes32.yaml")
    train.add_argument("--resume", default=None, help='"latest" or a checkpoint folder to continue from')
    train.add_argument("--output-dir", type=Path, default=None, help="where checkpoints, logs and the model go (overrides the config)")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        print(f"mmgen {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
