"""Prompt adherence of a pipeline on a built-in labelled set, judged by code on what it generates.

Shapes (images) are judged on pixels by :func:`mmgen.metrics.judge_shapes`, tones (audio) on the spectrum
and pitch track by :func:`mmgen.metrics.judge_tones`. Both share one generation loop: every class asked
``samples_per_class`` times, by class id or by caption, each sample with its own seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmgen.conditioning import ClassConditioner
from mmgen.data import NUM_CLASSES, NUM_TONE_CLASSES, caption, class_parts, tone_caption, tone_class_parts
from mmgen.metrics import judge_shapes, judge_tones

from .base import ARPipeline

__all__ = ["shapes_adherence", "tones_adherence", "class_samples"]


@torch.inference_mode()
def class_samples(pipe: ARPipeline, *, captions: Sequence[str], samples_per_class: int, batch_size: int, seed: int,
                  **call_kwargs: Any) -> tuple[torch.Tensor, list[int], float]:
    """``samples_per_class`` samples of every class (``output_type="pt"``): ``(samples, labels, seconds)``.

    A class-conditional pipeline is asked by class id, a text-conditional one by the class's caption.
    Sample i of class c uses its own generator seeded ``seed + c * samples_per_class + i``, so the samples
    do not depend on ``batch_size``. Images come back in [0, 1] ``[N, 3, H, W]``, audio ``[N, T]`` in [-1, 1].
    """
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be a positive int, got {samples_per_class!r}")
    by_class = isinstance(pipe.conditioner, ClassConditioner)
    if by_class and pipe.conditioner.config.num_classes != len(captions):
        raise ValueError(f"the conditioner has num_classes={pipe.conditioner.config.num_classes}; this set has {len(captions)} classes")
    labels = [c for c in range(len(captions)) for _ in range(samples_per_class)]
    samples, start = [], time.perf_counter()
    for first in range(0, len(labels), batch_size):
        chunk = labels[first:first + batch_size]
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(chunk))]
        asked = {"class_labels": chunk} if by_class else {"prompt": [captions[c] for c in chunk]}
        out = pipe(**asked, generator=generators, output_type="pt", return_dict=False, **call_kwargs)
        samples.append(out[0])
    return torch.cat(samples), labels, time.perf_counter() - start


def _adherence(judged: list[tuple[Any, Any]], labels: list[int], parts: Callable[[int], tuple[Any, Any]], *,
               num_classes: int, names: tuple[str, str]) -> dict[str, Any]:
    """Exact, per-part and per-class agreement of judged ``(part0, part1)`` pairs with the asked classes."""
    wanted = [parts(c) for c in labels]
    per_class = [sum(j == w for j, w, c in zip(judged, wanted, labels) if c == k) / labels.count(k) for k in range(num_classes)]
    return {
        "adherence": sum(j == w for j, w in zip(judged, wanted)) / len(labels),
        f"{names[0]}_right": sum(j[0] == w[0] for j, w in zip(judged, wanted)) / len(labels),
        f"{names[1]}_right": sum(j[1] == w[1] for j, w in zip(judged, wanted)) / len(labels),
        "per_class": per_class,
        "num_samples": len(labels),
    }


def shapes_adherence(pipe: ARPipeline, *, samples_per_class: int = 10, batch_size: int = 42, seed: int = 0,
                     **call_kwargs: Any) -> dict[str, Any]:
    """Generate ``samples_per_class`` images for each of the 21 shapes classes and judge their pixels.

    Returns ``adherence`` (fraction judged exactly right), the shape- and colour-only rates, per-class
    adherence, seconds per image, and the images ``[N, 3, H, W]`` in [-1, 1].
    """
    captions = [caption(c) for c in range(NUM_CLASSES)]
    images, labels, seconds = class_samples(pipe, captions=captions, samples_per_class=samples_per_class,
                                            batch_size=batch_size, seed=seed, **call_kwargs)
    images_NCHW = images * 2 - 1
    result = _adherence(judge_shapes(images_NCHW), labels, class_parts, num_classes=NUM_CLASSES, names=("shape", "colour"))
    return {**result, "seconds_per_image": seconds / len(labels), "images": images_NCHW}


def tones_adherence(pipe: ARPipeline, *, samples_per_class: int = 10, batch_size: int = 28, seed: int = 0,
                    **call_kwargs: Any) -> dict[str, Any]:
    """Generate ``samples_per_class`` clips for each of the 28 tones classes and judge their spectra.

    Returns ``adherence`` (kind and root both right), the kind- and root-only rates, per-class adherence,
    seconds per clip, and the clips ``[N, 1, T]`` in [-1, 1] at ``sample_rate``.
    """
    captions = [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
    audios, labels, seconds = class_samples(pipe, captions=captions, samples_per_class=samples_per_class,
                                            batch_size=batch_size, seed=seed, **call_kwargs)
    audio_N1T = audios[:, None]
    rate = int(pipe.tokenizer.sample_rate)
    judged = judge_tones(audio_N1T, sample_rate=rate)
    result = _adherence(judged, labels, tone_class_parts, num_classes=NUM_TONE_CLASSES, names=("kind", "root"))
    return {**result, "seconds_per_clip": seconds / len(labels), "audios": audio_N1T, "sample_rate": rate}
