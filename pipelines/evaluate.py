"""Prompt adherence of a pipeline on the built-in shapes classes, judged by code on the generated pixels."""

from __future__ import annotations

import time
from typing import Any

import torch

from mmgen.conditioning import ClassConditioner
from mmgen.data import NUM_CLASSES, caption, class_parts
from mmgen.metrics import judge_shapes

from .base import ARPipeline

__all__ = ["shapes_adherence"]


@torch.inference_mode()
def shapes_adherence(pipe: ARPipeline, *, samples_per_class: int = 10, batch_size: int = 42, seed: int = 0,
                     **call_kwargs: Any) -> dict[str, Any]:
    """Generate ``samples_per_class`` images for each of the 21 shapes classes and judge them.

    A class-conditional pipeline is asked by class id, a text-conditional one by the class's caption.
    The judge is :func:`mmgen.metrics.judge_shapes`, as in :func:`mmgen.metrics.prompt_adherence`.
    Sample i of class c uses its own generator seeded ``seed + c * samples_per_class + i``, so the figure
    does not depend on ``batch_size``. Returns ``adherence`` (fraction judged exactly right), the colour-
    and shape-only rates, per-class adherence, seconds per image, and the images ``[N, 3, H, W]`` in [-1, 1].
    """
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be a positive int, got {samples_per_class!r}")
    by_class = isinstance(pipe.conditioner, ClassConditioner)
    if by_class and pipe.conditioner.config.num_classes != NUM_CLASSES:
        raise ValueError(f"the conditioner has num_classes={pipe.conditioner.config.num_classes}; the shapes classes need {NUM_CLASSES}")
    labels = [c for c in range(NUM_CLASSES) for _ in range(samples_per_class)]
    images, start = [], time.perf_counter()
    for first in range(0, len(labels), batch_size):
        chunk = labels[first:first + batch_size]
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(chunk))]
        asked = {"class_labels": chunk} if by_class else {"prompt": [caption(c) for c in chunk]}
        out = pipe(**asked, generator=generators, output_type="pt", **call_kwargs)
        images.append(out.images * 2 - 1)
    seconds = time.perf_counter() - start
    images_NCHW = torch.cat(images)
    judged = judge_shapes(images_NCHW)
    wanted = [class_parts(c) for c in labels]  # (shape, colour)
    per_class = [
        sum(judged[i] == wanted[i] for i in range(len(labels)) if labels[i] == c) / samples_per_class
        for c in range(NUM_CLASSES)
    ]
    return {
        "adherence": sum(j == w for j, w in zip(judged, wanted)) / len(labels),
        "colour_right": sum(j[1] == w[1] for j, w in zip(judged, wanted)) / len(labels),
        "shape_right": sum(j[0] == w[0] for j, w in zip(judged, wanted)) / len(labels),
        "per_class": per_class,
        "num_samples": len(labels),
        "seconds_per_image": seconds / len(labels),
        "images": images_NCHW,
    }
