"""Octree round trip on held-out primitives, and the tokens-per-shape distribution per class.

    python scripts/octree_round_trip.py [--n 1000] [--resolutions 16 32]

For each resolution, ``--n`` held-out primitives (class = index % 5) are encoded by :class:`OctreeTokenizer`
and decoded again; the script counts the shapes that come back voxel for voxel, and prints per class the
tokens per shape (mean, 5th / 50th / 95th percentile, max) and the mean bytes per shape (one byte a token).
Prints one markdown table.
"""

from __future__ import annotations

import argparse

import torch

from mmgen.data import PRIMITIVES, PrimitivesDataset
from tokenizers_visual import OctreeTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| resolution | class | exact round trips | tokens / shape: mean | p5 | p50 | p95 | max |")
    print("|---|---|---|---|---|---|---|---|")
    for resolution in args.resolutions:
        data = PrimitivesDataset(split="heldout", size=args.n, resolution=resolution, seed=args.seed).batch(range(args.n))
        tokenizer = OctreeTokenizer({"resolution": resolution})
        exact, lengths = [], []
        for start in range(0, args.n, 100):
            shapes = data["shape"][start:start + 100]
            ids = tokenizer.encode(shapes)
            exact.append((tokenizer.decode(ids) == shapes).flatten(1).all(1))
            lengths.append(tokenizer.lengths(ids))
        exact_N, lengths_N = torch.cat(exact), torch.cat(lengths).float()
        rows = [(name, data["class_id"] == c) for c, name in enumerate(PRIMITIVES)]
        rows.append(("all", torch.ones(args.n, dtype=torch.bool)))
        for name, keep in rows:
            n = lengths_N[keep]
            p5, p50, p95 = (float(n.quantile(q)) for q in (0.05, 0.5, 0.95))
            print(f"| {resolution}^3 | {name} | {int(exact_N[keep].sum())} / {int(keep.sum())} | {float(n.mean()):.0f} | "
                  f"{p5:.0f} | {p50:.0f} | {p95:.0f} | {float(n.max()):.0f} |")


if __name__ == "__main__":
    main()
