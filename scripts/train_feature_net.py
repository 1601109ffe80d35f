"""Train the shapes feature network that mmgen ships (``mmgen/metrics/weights/shapes_features.safetensors``).

    python scripts/train_feature_net.py [--steps 2000] [--batch-size 128] [--lr 2e-3] [--seed 0] [--threads 2] [--out PATH]

:class:`mmgen.metrics.features.ShapesFeatureNet` learns shape and colour (cross-entropy) and centre and radius
(mean squared error, as fractions of the side) from a fresh batch of train-split :class:`~mmgen.data.ShapesDataset`
images every step, dimmed, blurred and noised at random so that generated images that resemble a shape land near
it. Everything is a function of ``--seed`` (on the CPU; a few CPU-minutes). It reports accuracy on the held-out split,
clean and augmented, stores it in the file's metadata and writes the weights as float16 safetensors.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mmgen.data import COLOURS, ShapesDataset
from mmgen.metrics.features import WEIGHTS, ShapesFeatureNet

GEOMETRY_WEIGHT = 10.0  # geometry targets are fractions of the side (errors ~0.02), logits losses ~0.1


def targets(dataset: ShapesDataset, indices: range) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images ``[B, 3, S, S]`` and their shape, colour and geometry (centre x, y, radius / side) labels."""
    batch = dataset.batch(indices)
    params = [dataset.params(i) for i in indices]
    geometry = torch.tensor([[*p["centre"], p["radius"]] for p in params], dtype=torch.float32) / dataset.size
    return batch["image"], {"shape": batch["class_id"] // len(COLOURS), "colour": batch["class_id"] % len(COLOURS),
                            "geometry": geometry}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random dimming (x0.5 to x1), a 3x3 blur for half the images and Gaussian noise (sigma up to 0.08)."""
    n = images.shape[0]
    unit = (images + 1) / 2 * torch.empty(n, 1, 1, 1).uniform_(0.5, 1.0, generator=generator)
    blurred = F.avg_pool2d(unit, 3, stride=1, padding=1, count_include_pad=False)
    unit = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, blurred, unit)
    unit = unit + torch.randn(unit.shape, generator=generator) * torch.empty(n, 1, 1, 1).uniform_(0, 0.08, generator=generator)
    return (unit * 2 - 1).clamp(-1, 1)


def loss_fn(out: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    return (F.cross_entropy(out["shape"], labels["shape"]) + F.cross_entropy(out["colour"], labels["colour"])
            + GEOMETRY_WEIGHT * F.mse_loss(out["geometry"], labels["geometry"]))


@torch.no_grad()
def evaluate(net: ShapesFeatureNet, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    """Shape, colour and class (both right) accuracy and the geometry's mean absolute error in pixels at 32."""
    out = net.eval()(images)
    shape_ok = out["shape"].argmax(1) == labels["shape"]
    colour_ok = out["colour"].argmax(1) == labels["colour"]
    return {"shape_accuracy": float(shape_ok.float().mean()), "colour_accuracy": float(colour_ok.float().mean()),
            "class_accuracy": float((shape_ok & colour_ok).float().mean()),
            "geometry_mae_px": float((out["geometry"] - labels["geometry"]).abs().mean() * images.shape[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=2100, help="held-out images to evaluate on")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train = ShapesDataset(split="train", length=args.steps * args.batch_size, seed=args.seed)
    heldout_images, heldout_labels = targets(ShapesDataset(split="heldout", length=args.heldout, seed=args.seed),
                                             range(args.heldout))

    net = ShapesFeatureNet()
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / args.steps)))
    started = time.time()
    for step in range(args.steps):
        images, labels = targets(train, range(step * args.batch_size, (step + 1) * args.batch_size))
        loss = loss_fn(net.train()(augment(images, generator)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:.0f} s", flush=True)

    net.load_state_dict({name: tensor.half().float() for name, tensor in net.state_dict().items()})  # as shipped
    report = {"clean": evaluate(net, heldout_images, heldout_labels),
              "augmented": evaluate(net, augment(heldout_images, torch.Generator().manual_seed(args.seed + 1)), heldout_labels)}
    print(json.dumps(report, indent=2))
    metadata = {"seed": str(args.seed), "steps": str(args.steps), "batch_size": str(args.batch_size),
                "heldout_images": str(args.heldout), "heldout": json.dumps(report)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().half().contiguous() for name, tensor in net.state_dict().items()}, str(args.out),
              metadata=metadata)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
