"""Data-vs-data reference figures for the distribution metrics: the built-in held-out split against the train split.

    python scripts/distribution_reference.py [--n 2100] [--class-n 300] [--tones-n 560] [--k 5] [--threads 2]

A generator's precision, recall, density, coverage and Fréchet distance against real data mean little alone;
these rows are what two samples of the *data itself* score with the same extractor, ``k`` and set sizes, i.e.
the best a generator can hope for. Shapes: all classes (``--n`` images each side, classes balanced) and class 0
alone (``--class-n``), with the attribute features and the shipped feature network; tones: all classes with the
attribute features. Prints a markdown table.
"""

from __future__ import annotations

import argparse

import torch

from mmgen.data import NUM_CLASSES, NUM_TONE_CLASSES, ShapesDataset, TonesDataset
from mmgen.metrics import distribution_metrics, shape_attributes, shapes_net_features, tone_attributes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2100, help="images per side, all classes")
    parser.add_argument("--class-n", type=int, default=300, help="images per side, class 0")
    parser.add_argument("--tones-n", type=int, default=560, help="clips per side, all classes (0: skip tones)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def shapes(split: str, indices: range) -> torch.Tensor:
        return ShapesDataset(split=split, length=indices.stop, seed=args.seed).batch(indices)["image"]

    sets = {"shapes, all classes": (range(args.n), shapes), "shapes, class 0": (range(0, NUM_CLASSES * args.class_n, NUM_CLASSES), shapes)}
    extractors = {"attributes": shape_attributes, "feature net": shapes_net_features}
    print(f"| data (heldout vs train, k = {args.k}) | features | N | precision | recall | density | coverage | Fréchet |")
    print("|---|---|---|---|---|---|---|---|")
    for set_name, (indices, load) in sets.items():
        heldout, train = load("heldout", indices), load("train", indices)
        for extractor_name, extractor in extractors.items():
            m = distribution_metrics(heldout, train, feature_extractor=extractor, k=args.k)
            print(f"| {set_name} | {extractor_name} | {len(indices)} | {m['precision']:.3f} | {m['recall']:.3f} | "
                  f"{m['density']:.3f} | {m['coverage']:.3f} | {m['frechet']:.4f} |", flush=True)
    if args.tones_n:
        clips = {split: TonesDataset(split=split, length=args.tones_n, seed=args.seed).batch(range(args.tones_n))["audio"]
                 for split in ("heldout", "train")}
        m = distribution_metrics(clips["heldout"], clips["train"], feature_extractor=tone_attributes, k=args.k)
        print(f"| tones, all {NUM_TONE_CLASSES} classes | attributes | {args.tones_n} | {m['precision']:.3f} | "
              f"{m['recall']:.3f} | {m['density']:.3f} | {m['coverage']:.3f} | {m['frechet']:.4f} |")


if __name__ == "__main__":
    main()
