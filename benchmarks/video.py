"""Video paradigms side by side: tokens per video, GPT forwards per video and generation time (CPU).

The pipelines are built like the moving-shapes presets (9 frames of 32x32 -> a 3x4x4 latent grid) with random
weights (speed does not depend on them), one GPT size for all:

- ``next-token``: one FSQ id per step over the (t, h, w) grid (48 forwards);
- ``next-frame (flow)``: a whole continuous latent frame per step, flow head with ``--flow-steps`` Euler steps (3 forwards);
- ``next-frame (ids, depth)``: a whole frame of FSQ ids per step (one shared 32-wide input table), drawn one id
  after another by a tied depth head (3 forwards of the GPT, 16 small depth steps each; as the preset
  ``configs/moving_shapes/next-frame.yaml``);
- ``next-frame (ids, categorical)``: the same frames with the 16 ids drawn in parallel by a categorical head;
- ``next-scale (flow)``: a space-time pyramid of the continuous latents, 1x1x1, 1x2x2, 2x3x3, 3x4x4 (4 forwards,
  71 tokens of which 48 are the clip's), flow head;
- ``next-token (flow)``: one continuous latent position per step (48 forwards), the flow head's cost per token.

Every paradigm runs in one process, alternating over ``--repeats`` rounds after a warm-up; the table gives
medians, including the tokenizer's decode, and each paradigm's time relative to next-token.

    python benchmarks/video.py [--batch-sizes 1 16] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import torch

from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import NUM_VIDEO_CLASSES
from mmgen.tokens import DiscreteContent
from pipelines import ARPipeline, NextTokenPipeline, NextXPipeline
from tokenizers_visual import CausalVideoConfig, CausalVideoTokenizer

TOKENIZER = {"image_size": 32, "num_frames": 9, "spatial_downsample": 8, "temporal_downsample": 4, "channels": 32,
             "channel_mult": [1, 1, 2]}
SPACE_TIME_SCALES = [[1, 1, 1], [1, 2, 2], [2, 3, 3], [3, 4, 4]]  # configs/moving_shapes/next-scale.yaml


def build(args: argparse.Namespace) -> dict[str, ARPipeline]:
    torch.manual_seed(0)
    fsq = CausalVideoTokenizer(CausalVideoConfig(**TOKENIZER, bottleneck="fsq")).eval()
    kl = CausalVideoTokenizer(CausalVideoConfig(**TOKENIZER, bottleneck="kl", latent_dim=8)).eval()
    gpt = {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads}
    flow = {"width": 256, "depth": 3}

    def make(cls: type[ARPipeline], tokenizer: Any, gpt_options: dict[str, Any] | None = None, **options: Any) -> ARPipeline:
        conditioner = ClassConditioner(ClassConditionerConfig(dim=args.dim, num_classes=NUM_VIDEO_CLASSES))
        pipe = cls.from_tokenizer(tokenizer, conditioner=conditioner, gpt={**gpt, **(gpt_options or {})}, **options)
        pipe.register_to_config(null_condition_trained=True)  # random weights; lets the calls use CFG as a trained model would
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return {
        "next-token": make(NextTokenPipeline, fsq),
        "next-frame (flow)": make(NextXPipeline, kl, entity="frame", num_flow_steps=args.flow_steps, head=flow),
        "next-frame (ids, depth)": make(NextXPipeline, fsq, {"codebook_embed_dim": 32}, entity="frame",
                                        head={"class": "DepthHead", "width": 128, "depth": 4, "n_heads": 4, "tied": True}),
        "next-frame (ids, categorical)": make(NextXPipeline, fsq, entity="frame"),
        "next-scale (flow)": make(NextXPipeline, kl, entity="scale", patch_nums=SPACE_TIME_SCALES,
                                  num_flow_steps=args.flow_steps, head=flow),
        "next-token (flow)": make(NextXPipeline, kl, entity="token", num_flow_steps=args.flow_steps, head=flow),
    }


def tokens_per_video(pipe: ARPipeline) -> int:
    """Ids or latent positions a video is generated as (a frame of ids in one position counts each id)."""
    content = pipe.head.content
    per_position = content.num_codebooks if isinstance(content, DiscreteContent) else 1
    return pipe.pattern().num_positions * per_position


def forwards(pipe: ARPipeline) -> int:
    steps = []
    pipe(class_labels=[0], output_type="tokens", callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    return len(steps)


def time_call(pipe: ARPipeline, batch: int) -> float:
    labels = [c % NUM_VIDEO_CLASSES for c in range(batch)]
    generators = [torch.Generator().manual_seed(c) for c in range(batch)]
    start = time.perf_counter()
    pipe(class_labels=labels, guidance_scale=3.0, generator=generators, output_type="pt")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--flow-steps", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipes = build(args)
    for pipe in pipes.values():
        pipe(class_labels=[0], guidance_scale=3.0)  # warm-up
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
          f"GPT d{args.dim} x {args.layers}, CFG 3 (doubled batch), median of {args.repeats}")
    print("| paradigm | tokens / video | GPT forwards / video | batch | s / call | ms / video | vs next-token |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        times: dict[str, list[float]] = {name: [] for name in pipes}
        for _ in range(args.repeats):
            for name, pipe in pipes.items():
                times[name].append(time_call(pipe, batch))
        base = statistics.median(times["next-token"])
        for name, pipe in pipes.items():
            median = statistics.median(times[name])
            print(f"| {name} | {tokens_per_video(pipe)} | {forwards(pipe)} | {batch} | {median:.3f} | {1000 * median / batch:.1f} | "
                  f"{median / base:.2f}x |")


if __name__ == "__main__":
    main()
