"""Prompt adherence of a pipeline on a built-in labelled set, judged by code on what it generates, and how
well its samples cover the data (:func:`generation_quality`).

Shapes (images) are judged on pixels by :func:`mmgen.metrics.judge_shapes`, tones (audio) on the spectrum
and pitch track by :func:`mmgen.metrics.judge_tones`, moving shapes frame by frame, 3D primitives on the
decoded occupancy by :func:`mmgen.metrics.judge_primitives`. Both share one generation loop: every class asked
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
    NUM_SHAPE3D_CLASSES,
    NUM_TONE_CLASSES,
    PRIMITIVES,
    NUM_VIDEO_CLASSES,
    MovingShapesDataset,
    ShapesDataset,
    TonesDataset,
    caption,
    class_parts,
    shape3d_caption,
    tone_caption,
    tone_class_parts,
    video_caption,
    video_class_parts,
)
from mmgen.metrics import (
    SHAPE_ATTRIBUTES,
    TONE_ATTRIBUTES,
    feature_frechet_distance,
    judge_moving_shapes,
    judge_primitives,
    judge_shapes,
    judge_tones,
    manifold_metrics,
    shape_attributes,
    shapes_net_features,
    tone_attributes,
)

from .base import ARPipeline
from .long_video import first_frame_prefill, generate_long_video

__all__ = ["shapes_adherence", "tones_adherence", "tones_continuation", "moving_shapes_adherence", "moving_shapes_image_to_video",
           "moving_shapes_long_video", "primitives_adherence", "class_samples", "generation_quality", "FREE_ATTRIBUTES"]

# What a class leaves to chance: the attributes whose spread the samples of one class should keep.
FREE_ATTRIBUTES = {"image": ("centre_x", "centre_y", "size"), "audio": ("loudness_db", "brightness")}
VIDEO_CAPTIONS = tuple(video_caption(c) for c in range(NUM_VIDEO_CLASSES))
TONE_CAPTIONS = tuple(tone_caption(c) for c in range(NUM_TONE_CLASSES))


@torch.inference_mode()
def class_samples(pipe: ARPipeline, *, captions: Sequence[str], samples_per_class: int, batch_size: int, seed: int,
                  output_type: str = "pt", **call_kwargs: Any) -> tuple[torch.Tensor, list[int], float]:
    """``samples_per_class`` samples of every class (``output_type``, "pt" or shapes' "voxels"): ``(samples, labels, seconds)``.

    A class-conditional pipeline is asked by class id, a text-conditional one by the class's caption.
    Sample i of class c uses its own generator seeded ``seed + c * samples_per_class + i``, so the samples
    do not depend on ``batch_size``. Images come back in [0, 1] ``[N, 3, H, W]``, audio ``[N, T]`` in [-1, 1].
    """
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be a positive int, got {samples_per_class!r}")
    if isinstance(pipe.conditioner, ClassConditioner) and pipe.conditioner.config.num_classes != len(captions):
        raise ValueError(f"the conditioner has num_classes={pipe.conditioner.config.num_classes}; this set has {len(captions)} classes")
    labels = [c for c in range(len(captions)) for _ in range(samples_per_class)]
    samples, start = [], time.perf_counter()
    for first in range(0, len(labels), batch_size):
        chunk = labels[first:first + batch_size]
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(chunk))]
        out = pipe(**_asked(pipe, chunk, captions), generator=generators, output_type=output_type, return_dict=False, **call_kwargs)
        samples.append(torch.as_tensor(out[0]))
    return torch.cat(samples), labels, time.perf_counter() - start


def _asked(pipe: ARPipeline, labels: Sequence[int], captions: Sequence[str]) -> dict[str, Any]:
    """The call's condition for classes ``labels``: their ids for a class-conditional pipeline, else their captions."""
    if isinstance(pipe.conditioner, ClassConditioner):
        return {"class_labels": list(labels)}
    return {"prompt": [captions[c] for c in labels]}


def _call_condition(pipe: ARPipeline, prefill: torch.Tensor, labels: Sequence[int], captions: Sequence[str], *,
                    conditioned: bool, infer_class: bool, seeds: Sequence[int]) -> dict[str, Any]:
    """The condition of a call that continues ``prefill``: the null one, the clips' own classes ``labels``
    (``conditioned``), or (``infer_class``) one class per row drawn from the model's posterior given the prefill
    (:meth:`~pipelines.base.ARPipeline.class_posterior`) with a generator seeded from ``seeds``."""
    if conditioned and infer_class:
        raise ValueError("pass conditioned=True (the clip's class given) or infer_class=True (drawn from the prompt), not both")
    if infer_class:
        candidates = None if isinstance(pipe.conditioner, ClassConditioner) else list(captions)
        posterior_BC = pipe.class_posterior(prefill, candidates=candidates).exp()
        labels = [int(torch.multinomial(p_C, 1, generator=torch.Generator().manual_seed(s))) for p_C, s in zip(posterior_BC, seeds)]
    elif not conditioned:
        return {"num_samples_per_prompt": prefill.shape[0]}
    return _asked(pipe, labels, captions)


def _adherence(judged: list[tuple[Any, ...]], labels: list[int], parts: Callable[[int], tuple[Any, ...]], *,
               num_classes: int, names: tuple[str, ...]) -> dict[str, Any]:
    """Exact, per-part and per-class agreement of judged ``(part0, part1, …)`` tuples with the asked classes."""
    wanted = [parts(c) for c in labels]
    per_class = [sum(j == w for j, w, c in zip(judged, wanted, labels) if c == k) / labels.count(k) for k in range(num_classes)]
    return {
        "adherence": sum(j == w for j, w in zip(judged, wanted)) / len(labels),
        **{f"{name}_right": sum(j[i] == w[i] for j, w in zip(judged, wanted)) / len(labels) for i, name in enumerate(names)},
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
    audios, labels, seconds = class_samples(pipe, captions=TONE_CAPTIONS, samples_per_class=samples_per_class,
                                            batch_size=batch_size, seed=seed, **call_kwargs)
    audio_N1T = audios[:, None]
    rate = int(pipe.tokenizer.sample_rate)
    judged = judge_tones(audio_N1T, sample_rate=rate)
    result = _adherence(judged, labels, tone_class_parts, num_classes=NUM_TONE_CLASSES, names=("kind", "root"))
    return {**result, "seconds_per_clip": seconds / len(labels), "audios": audio_N1T, "sample_rate": rate}


def moving_shapes_adherence(pipe: ARPipeline, *, samples_per_class: int = 5, batch_size: int = 42, seed: int = 0,
                            **call_kwargs: Any) -> dict[str, Any]:
    """Generate ``samples_per_class`` clips for each of the 84 moving-shapes classes and judge their frames.

    Returns ``adherence`` (shape, colour and direction all right), the per-part rates, per-class adherence,
    seconds per clip, and the clips ``[N, T, 3, H, W]`` in [-1, 1].
    """
    videos, labels, seconds = class_samples(pipe, captions=VIDEO_CAPTIONS, samples_per_class=samples_per_class,
                                            batch_size=batch_size, seed=seed, **call_kwargs)
    videos_NTCHW = videos * 2 - 1
    result = _adherence(judge_moving_shapes(videos_NTCHW), labels, video_class_parts, num_classes=NUM_VIDEO_CLASSES,
                        names=("shape", "colour", "direction"))
    return {**result, "seconds_per_clip": seconds / len(labels), "videos": videos_NTCHW}


@torch.inference_mode()
def moving_shapes_image_to_video(pipe: ARPipeline, *, clips_per_class: int = 5, conditioned: bool = False,
                                 infer_class: bool = False, batch_size: int = 42, seed: int = 0,
                                 **call_kwargs: Any) -> dict[str, Any]:
    """Image-to-video: held-out clips' first frames given, the rest generated without a condition (``conditioned=True``:
    with the clip's class as the condition too, as text + image to video; ``infer_class=True``: with a class drawn
    from the model's own posterior given the frame, :meth:`~pipelines.base.ARPipeline.class_posterior`, so the
    frame stays the only source of what to keep).

    The first frame of each held-out clip, held still for the clip's length, is tokenized and its first latent
    frame given as ``prefill`` (the tokenizer is causal: that latent frame reads frame 0 alone, so it is the
    image's own tokens); the null class (or prompt) leaves the rest to the model unless ``conditioned``.
    Sample i has its own generator seeded ``seed + i`` (and one more, seeded alike, draws its inferred class).
    ``kept``: the share of generated clips whose shape and colour, judged over the whole clip, are the given
    frame's; ``moving``: the share with a readable direction (any). Returns the clips ``[N, T, 3, H, W]`` in
    [-1, 1] too.
    """
    if isinstance(clips_per_class, bool) or not isinstance(clips_per_class, int) or clips_per_class < 1:
        raise ValueError(f"clips_per_class must be a positive int, got {clips_per_class!r}")
    frames = pipe.tokenizer.num_frames_for(pipe.tokenizer.token_spec().shape[0])
    clips = MovingShapesDataset(size=pipe.tokenizer.cfg.image_size, num_frames=frames, length=NUM_VIDEO_CLASSES * clips_per_class,
                                split="heldout", seed=seed)
    labels = [i % NUM_VIDEO_CLASSES for i in range(len(clips))]
    samples = []
    for first in range(0, len(labels), batch_size):
        chunk = list(range(first, min(first + batch_size, len(labels))))
        prefill = first_frame_prefill(pipe, clips.batch(chunk)["video"][:, 0])
        generators = [torch.Generator().manual_seed(seed + i) for i in chunk]
        asked = _call_condition(pipe, prefill, [labels[i] for i in chunk], VIDEO_CAPTIONS, conditioned=conditioned,
                                infer_class=infer_class, seeds=[seed + i for i in chunk])
        samples.append(pipe(**asked, prefill=prefill, generator=generators, output_type="pt", return_dict=False, **call_kwargs)[0])
    videos_NTCHW = torch.cat(samples) * 2 - 1
    judged = judge_moving_shapes(videos_NTCHW)
    wanted = [video_class_parts(c) for c in labels]
    kept = sum(j[:2] == w[:2] for j, w in zip(judged, wanted)) / len(labels)
    return {"kept": kept, "moving": sum(j[2] is not None for j in judged) / len(labels), "num_samples": len(labels),
            "videos": videos_NTCHW}


def moving_shapes_long_video(pipe: ARPipeline, *, samples_per_class: int = 1, length_factor: int = 4, batch_size: int = 42,
                             seed: int = 0, **call_kwargs: Any) -> dict[str, Any]:
    """Videos ``length_factor`` times the trained clip length (:func:`pipelines.generate_long_video`) for every class,
    judged whole and segment by segment.

    ``adherence``: shape, colour and direction of the whole video right; ``direction_kept``: every consecutive
    segment of the trained clip length moves in the asked direction (none stalls, turns or is unreadable).
    Sample i of class c has its own generator seeded ``seed + c * samples_per_class + i``.
    """
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ValueError(f"samples_per_class must be a positive int, got {samples_per_class!r}")
    if isinstance(length_factor, bool) or not isinstance(length_factor, int) or length_factor < 1:
        raise ValueError(f"length_factor must be a positive int, got {length_factor!r}")
    clip = pipe.tokenizer.num_frames_for(pipe.tokenizer.token_spec().shape[0])
    labels = [c for c in range(NUM_VIDEO_CLASSES) for _ in range(samples_per_class)]
    videos = []
    for first in range(0, len(labels), batch_size):
        chunk = labels[first:first + batch_size]
        generators = [torch.Generator().manual_seed(seed + first + i) for i in range(len(chunk))]
        videos.append(generate_long_video(pipe, num_frames=length_factor * clip, generator=generators,
                                          **_asked(pipe, chunk, VIDEO_CAPTIONS), **call_kwargs))
    videos_NTCHW = torch.cat(videos)
    wanted = [video_class_parts(c) for c in labels]
    whole = judge_moving_shapes(videos_NTCHW)
    segments = [judge_moving_shapes(videos_NTCHW[:, start:start + clip]) for start in range(0, videos_NTCHW.shape[1] - clip + 1, clip)]
    kept = [all(seg[i][2] == wanted[i][2] for seg in segments) for i in range(len(labels))]
    return {"adherence": sum(j == w for j, w in zip(whole, wanted)) / len(labels),
            "direction_kept": sum(kept) / len(labels), "num_frames": int(videos_NTCHW.shape[1]), "num_segments": len(segments),
            "num_samples": len(labels), "videos": videos_NTCHW}


@torch.inference_mode()
def primitives_adherence(pipe: ARPipeline, *, samples_per_class: int = 20, batch_size: int = 20, seed: int = 0,
                         **call_kwargs: Any) -> dict[str, Any]:
    """Generate ``samples_per_class`` shapes for each of the 3D primitives classes and judge their occupancy.

    Returns ``adherence``, per-class adherence, ``watertight`` (the share of exported meshes that are closed;
    every primitive is a closed solid), seconds per shape, and the occupancy grids ``[N, R, R, R]`` (bool).
    """
    from mmgen.meshes import occupancy_to_mesh

    captions = [shape3d_caption(c) for c in range(NUM_SHAPE3D_CLASSES)]
    voxels, labels, seconds = class_samples(pipe, captions=captions, samples_per_class=samples_per_class, batch_size=batch_size,
                                            seed=seed, output_type="voxels", **call_kwargs)
    judged = [(name,) for name in judge_primitives(voxels.float())]
    result = _adherence(judged, labels, lambda c: (PRIMITIVES[c],), num_classes=NUM_SHAPE3D_CLASSES, names=("shape",))
    del result["shape_right"]  # one part: the same as adherence
    closed = [occupancy_to_mesh(v.float()).is_watertight for v in voxels]
    return {**result, "watertight": sum(closed) / len(closed), "seconds_per_shape": seconds / len(labels), "voxels": voxels}


def tones_continuation(pipe: ARPipeline, *, clips_per_class: int = 10, prompt_seconds: float = 0.25, conditioned: bool = False,
                       infer_class: bool = False, batch_size: int = 28, seed: int = 0, **call_kwargs: Any) -> dict[str, Any]:
    """Continue held-out tones clips from their first ``prompt_seconds`` and judge whether the class is kept.

    Each clip is tokenized, the sequence positions of its first ``round(prompt_seconds · frame_rate)``
    frames are given as ``prefill`` and the rest is generated: without a condition (the null class or
    prompt; ``conditioned=True`` also asks for the clip's class), so only the prompt says what to continue;
    ``infer_class=True`` asks for a class drawn from the model's own posterior given the prompt's tokens
    (:meth:`~pipelines.base.ARPipeline.class_posterior`), which only the prompt informs either.
    Sample i has its own generator seeded ``seed + i`` (and one more, seeded alike, draws its inferred class).
    Returns the adherence of the whole generated clip to the prompt clip's class (and the kind- and root-only
    rates), as :func:`tones_adherence`.
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
        asked = _call_condition(pipe, prefill, [labels[i] for i in chunk], TONE_CAPTIONS, conditioned=conditioned,
                                infer_class=infer_class, seeds=[seed + i for i in chunk])
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
    if pipe.tokenizer.modality not in ("image", "audio"):
        raise ValueError(f"generation_quality covers image and audio pipelines; this one makes {pipe.tokenizer.modality} "
                         "(for moving shapes use pipelines.moving_shapes_adherence, for 3D primitives pipelines.primitives_adherence)")
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
