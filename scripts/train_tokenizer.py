"""Train any image tokenizer from a YAML preset on procedural shapes; report reconstruction before and after.

    python scripts/train_tokenizer.py --preset configs/tokenizers/vq-shapes32.yaml --steps 300 --batch-size 64 \\
        [--lr 2e-4] [--out DIR [--overwrite]] [--threads 1]

The preset names the class (``class: VQImageTokenizer``, looked up in the tokenizer packages); its other keys
are fields of that class's config dataclass. The script relies only on the tokenizer interface:
``encode`` / ``decode`` / ``loss`` / ``save_pretrained``, ``codebook_size`` for discrete tokenizers, and a
``num_tokens`` keyword of ``encode`` for flexible-length ones (reported per prefix length k).

Evaluation (in ``eval()`` mode) uses held-out shapes and crops of scikit-image's photos: PSNR, SSIM, and
for discrete tokenizers codebook usage and perplexity of the ids. Training draws a fresh batch of
train-split shapes every step, so there is no overfitting to a fixed set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from mmgen.data import PhotoCrops, ShapesDataset
from mmgen.app.training.builders import build_tokenizer
from mmgen.app.training.evaluation import reconstruction_metrics


def build_from_preset(preset: Path) -> torch.nn.Module:
    """The tokenizer a preset file describes: ``class`` (a tokenizer class name), the other keys its config."""
    values = yaml.safe_load(preset.read_text())
    if not isinstance(values, dict) or "class" not in values:
        raise ValueError(f"{preset}: a preset is a YAML mapping with a 'class' key (e.g. class: VQImageTokenizer)")
    return build_tokenizer(values, source=str(preset))


def markdown_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    """One row per (eval set, metric): before and after training."""
    lines = ["| eval set | metric | before | after |", "|---|---|---|---|"]
    for set_name, metrics in before.items():
        for metric, value in metrics.items():
            lines.append(f"| {set_name} | {metric} | {value:.4g} | {after[set_name][metric]:.4g} |")
    return "\n".join(lines)


def train(tok: torch.nn.Module, *, steps: int, batch_size: int, lr: float, size: int, seed: int, device: torch.device,
          weight_decay: float, grad_clip: float, log_every: int) -> None:
    """AdamW through ``tok.loss(images)`` on fresh train-split shapes; linear warm-up over the first 5% of steps."""
    data = ShapesDataset(size=size, length=steps * batch_size, split="train", seed=seed)
    params = [p for p in tok.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    tok.train()
    sums: dict[str, float] = {}
    for step in range(steps):
        images = data.batch(range(step * batch_size, (step + 1) * batch_size))["image"].to(device)
        loss, logs = tok.loss(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        for key, value in {"loss": float(loss.detach()), **logs}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            count = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            print(f"step {step + 1:5d}/{steps}  " + "  ".join(f"{k} {v / count:.4g}" for k, v in sums.items()), flush=True)
            sums = {}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, required=True, help="YAML preset, e.g. configs/tokenizers/vq-shapes32.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 turns clipping off")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the config's image_size, else 32)")
    parser.add_argument("--eval-shapes", type=int, default=256, help="held-out shapes to evaluate on")
    parser.add_argument("--eval-photos", type=int, default=64, help="photo crops to evaluate on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="save_pretrained folder (and eval.json) after training")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to be a non-empty folder")
    args = parser.parse_args(argv)
    for name, least in (("steps", 1), ("batch_size", 1), ("eval_shapes", 2), ("eval_photos", 2), ("threads", 1), ("log_every", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}")
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())) and not args.overwrite:
        parser.error(f"--out {args.out} exists and is not an empty folder; pass --overwrite to write into it anyway")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tok = build_from_preset(args.preset).to(device)
    size = args.size or int(tok.config.get("image_size", 32))
    num_params = sum(p.numel() for p in tok.parameters())
    print(f"{type(tok).__name__} from {args.preset}: {num_params / 1e6:.3f} M parameters, images {size}x{size}, "
          f"{args.threads} thread(s) on {device}", flush=True)

    heldout = ShapesDataset(size=size, length=args.eval_shapes, split="heldout", seed=args.seed).batch(range(args.eval_shapes))
    eval_sets = {
        f"shapes heldout ({args.eval_shapes})": (heldout["image"], heldout["class_id"]),
        f"photo crops ({args.eval_photos})": (PhotoCrops(size=size, num_crops=args.eval_photos, seed=args.seed).images_NCHW, None),
    }
    eval_sets = {name: (images.to(device), ids) for name, (images, ids) in eval_sets.items()}
    before = {name: reconstruction_metrics(tok, images, class_ids=ids) for name, (images, ids) in eval_sets.items()}

    start = time.perf_counter()
    train(tok, steps=args.steps, batch_size=args.batch_size, lr=args.lr, size=size, seed=args.seed, device=device,
          weight_decay=args.weight_decay, grad_clip=args.grad_clip, log_every=args.log_every)
    train_seconds = time.perf_counter() - start

    after = {name: reconstruction_metrics(tok, images, class_ids=ids) for name, (images, ids) in eval_sets.items()}
    print()
    print(markdown_table(before, after))
    print(f"\ntraining: {args.steps} steps x {args.batch_size} images in {train_seconds:.1f} s "
          f"({train_seconds / args.steps * 1000:.0f} ms/step)")
    report = {"preset": str(args.preset), "class": type(tok).__name__, "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "seed": args.seed, "train_seconds": train_seconds, "before": before, "after": after}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(args.out))
        (args.out / "eval.json").write_text(json.dumps(report, indent=2))
        print(f"saved to {args.out}")
    return report


if __name__ == "__main__":
    main()
