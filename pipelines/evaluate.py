"""Prompt adherence of a pipeline on a built-in labelled set, judged by code on what it generates, and how
well its samples cover the data (:func:`generation_quality`).

Shapes (images) are judged on pixels by :func:`mmgen.metrics.judge_shapes`, tones (audio) on the spectrum
and pitch track by :func:`mmgen.metrics.judge_tones`. Both share one generation loop: every class asked
``samples_per_class`` times, by class id or by caption, each sample with its own seed.

Adherence alone rewards a model that draws one perfect sample per prompt, so :func:`generation_quality`
also compares the samples with as many held-out data items of the same classes: precision, recall, density,
coverage and Fréchet distance in the judge's attribute space (and, for shapes, in the shipped feature
network's), and the spread of the attributes a class leaves free (position and size; loudness and timbre).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmgen.conditioning import ClassConditioner
from mmgen.data import (
    NUM_CLASSES,
    NUM_TONE_CLASSES,
    ShapesDataset,
    TonesDataset,
    caption,
    class_parts,
    tone_caption,
    tone_class_parts,
)
from mmgen.metrics import (
    SHAPE_ATTRIBUTES,
    TONE_ATTRIBUTES,
    feature_frechet_distance,
    judge_shapes,
    judge_tones,
    manifold_metrics,
    shape_attributes,
    shapes_net_features,
    tone_attributes,
)

from .base import ARPipeline

__all__ = ["shapes_adherence", "tones_adherence", "tones_continuation", "class_samples", "generation_quality", "FREE_ATTRIBUTES"]

# What a class leaves to chance: the attributes whose spread the samples of one class should keep.
FREE_ATTRIBUTES = {"image": ("centre_x", "centre_y", "size"), "audio": ("loudness_db", "brightness")}


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


@torch.inference_mode()
def tones_continuation(pipe: ARPipeline, *, clips_per_class: int = 10, prompt_seconds: float = 0.25, conditioned: bool = False,
                       batch_size: int = 28, seed: int = 0, **call_kwargs: Any) -> dict[str, Any]:
    """Continue held-out tones clips from their first ``prompt_seconds`` and judge whether the class is kept.

    Each clip is tokenized, the sequence positions of its first ``round(prompt_seconds · frame_rate)``
    frames are given as ``prefill`` and the rest is generated: without a condition (the null class or
    prompt; ``conditioned=True`` also asks for the clip's class), so only the prompt says what to continue.
    Sample i has its own generator seeded ``seed + i``. Returns the adherence of the whole generated
    clip to the prompt clip's class (and the kind- and root-only rates), as :func:`tones_adherence`.
    """
    if isinstance(clips_per_class, bool) or not isinstance(clips_per_class, int) or clips_per_class < 1:
        raise ValueError(f"clips_per_class must be a positive int, got {clips_per_class!r}")
    tokenizer = pipe.tokenizer
    rate, frames = int(tokenizer.sample_rate), round(float(prompt_seconds) * float(tokenizer.frame_rate))
    clip_seconds = tokenizer.cfg.clip_samples / rate
    if not 1 <= frames < tokenizer.token_spec().shape[0]:
        raise ValueError(f"prompt_seconds={prompt_seconds!r} must cover at least one frame and less than the clip "
                         f"({clip_seconds:.3g} s at {tokenizer.frame_rate:g} frames/s)")
    clips = TonesDataset(length=NUM_TONE_CLASSES * clips_per_class, split="heldout", seed=seed, sample_rate=rate,
                         seconds=clip_seconds)
    labels = [clips[i]["class_id"] for i in range(len(clips))]
    samples = []
    for first in range(0, len(labels), batch_size):
        chunk = list(range(first, min(first + batch_size, len(labels))))
        sequence = pipe.tokenize(clips.batch(chunk)["audio"])
        per_frame = sequence.shape[1] // tokenizer.token_spec().shape[0]  # K for a flattened frame, else 1 (delay too)
        prefill = sequence[:, :frames * per_frame]
        asked = {"class_labels": [labels[i] for i in chunk]} if conditioned else {"num_samples_per_prompt": len(chunk)}
        generators = [torch.Generator().manual_seed(seed + i) for i in chunk]
        samples.append(pipe(**asked, prefill=prefill, generator=generators, output_type="pt", return_dict=False, **call_kwargs)[0])
    audio_N1T = torch.cat(samples)[:, None]
    judged = judge_tones(audio_N1T, sample_rate=rate)
    result = _adherence(judged, labels, tone_class_parts, num_classes=NUM_TONE_CLASSES, names=("kind", "root"))
    return {**result, "prompt_seconds": frames / float(tokenizer.frame_rate), "audios": audio_N1T, "sample_rate": rate}


def generation_quality(pipe: ARPipeline, *, samples_per_class: int = 10, batch_size: int | None = None, seed: int = 0,
                       k: int = 5, **call_kwargs: Any) -> dict[str, Any]:
    """Adherence (:func:`shapes_adherence` / :func:`tones_adherence`, chosen by the tokenizer's modality) plus
    distribution figures against ``samples_per_class`` held-out data items of each class.

    ``distribution``: ``{"attributes": {...}, "network": {...}}`` with precision, recall, density, coverage
    (``k`` nearest neighbours) and ``frechet`` over all classes (``network``: the shipped shapes feature net,
    images only); ``per_class_distribution``: the attribute-space figures per class (when
    ``samples_per_class > k``); ``spread``: per free attribute (:data:`FREE_ATTRIBUTES`) the samples' standard
    deviation within a class over the data's, averaged over classes (1.0: as varied as the data), and
    ``spread_min`` the smallest. The samples are returned too (``images`` or ``audios``).
    """
    audio = pipe.tokenizer.modality == "audio"
    if batch_size is None:
        batch_size = NUM_TONE_CLASSES if audio else 2 * NUM_CLASSES
    if audio:
        result = tones_adherence(pipe, samples_per_class=samples_per_class, batch_size=batch_size, seed=seed, **call_kwargs)
        fake, rate = result["audios"], result["sample_rate"]
        real = TonesDataset(length=NUM_TONE_CLASSES * samples_per_class, split="heldout", seed=seed, sample_rate=rate,
                            seconds=fake.shape[-1] / rate).batch(range(NUM_TONE_CLASSES * samples_per_class))["audio"]
        real_NF, fake_NF = (tone_attributes(x, sample_rate=rate) for x in (real, fake))
        names, num_classes, extra = TONE_ATTRIBUTES, NUM_TONE_CLASSES, {}
    else:
        result = shapes_adherence(pipe, samples_per_class=samples_per_class, batch_size=batch_size, seed=seed, **call_kwargs)
        fake = result["images"]
        real = ShapesDataset(size=fake.shape[-1], length=NUM_CLASSES * samples_per_class, split="heldout",
                             seed=seed).batch(range(NUM_CLASSES * samples_per_class))["image"]
        real_NF, fake_NF = shape_attributes(real), shape_attributes(fake)
        names, num_classes = SHAPE_ATTRIBUTES, NUM_CLASSES
        extra = {"network": _distribution(shapes_net_features(real), shapes_net_features(fake), k=k)}
    real_labels = torch.arange(real_NF.shape[0]) % num_classes  # the built-in sets cycle their classes
    fake_labels = torch.as_tensor([c for c in range(num_classes) for _ in range(samples_per_class)])
    per_class = [_distribution(real_NF[real_labels == c], fake_NF[fake_labels == c], k=k) for c in range(num_classes)
                 ] if samples_per_class > k else []
    free = FREE_ATTRIBUTES["audio" if audio else "image"] if samples_per_class > 1 else ()  # a spread needs two per class
    spread = {name: _spread_ratio(real_NF[:, names.index(name)], fake_NF[:, names.index(name)], real_labels, fake_labels,
                                  num_classes=num_classes) for name in free}
    return {**result, "distribution": {"attributes": _distribution(real_NF, fake_NF, k=k), **extra},
            "per_class_distribution": per_class, "spread": spread, "spread_min": min(spread.values(), default=None)}


def _distribution(real_NF: torch.Tensor, fake_NF: torch.Tensor, *, k: int) -> dict[str, float]:
    return {**manifold_metrics(real_NF, fake_NF, k=k), "frechet": feature_frechet_distance(real_NF, fake_NF)}


def _spread_ratio(real_N: torch.Tensor, fake_N: torch.Tensor, real_labels: torch.Tensor, fake_labels: torch.Tensor, *,
                  num_classes: int) -> float:
    """Mean over classes of std(fake) / std(real) of one attribute (affine-invariant, so standardised values do)."""
    ratios = [float(fake_N[fake_labels == c].double().std() / real_N[real_labels == c].double().std().clamp(min=1e-12))
              for c in range(num_classes)]
    return sum(ratios) / len(ratios)
