"""Evaluations a run reports: reconstruction for tokenizers, prompt adherence for generators, per modality.

Image tokenizers: PSNR / SSIM on held-out shapes and photo crops. Audio codecs: SI-SDR, mel and STFT
distance on held-out tones and on espeak-ng speech (out of domain), per codebook count where the codec
encodes at several bitrates, and how often the tones judge still reads the class of a reconstruction.
Video tokenizers: PSNR per frame position on held-out moving shapes, and on held-out shapes as 1-frame videos.
Shape tokenizers: volume IoU, Chamfer distance and F-score on held-out primitives, tokens and bytes per shape.
Generators: adherence on the classes of the built-in set they learnt (shapes, tones, moving shapes or primitives).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from mmgen.data import MovingShapesDataset, PhotoCrops, PrimitivesDataset, ShapesDataset, SpeechClips, TonesDataset
from mmgen.metrics import (
    chamfer_distance,
    codebook_usage,
    f_score,
    codebook_usage_per_level,
    mel_distance,
    prompt_adherence,
    psnr,
    shape3d_adherence,
    si_sdr,
    ssim,
    surface_points_from_voxels,
    stft_distance,
    tone_adherence,
    video_adherence,
    volume_iou,
)
from mmgen.sampling import GuidanceSchedule
from mmgen.tokens import DiscreteContent

from .config import TrainConfig

__all__ = ["evaluate_tokenizer", "evaluate_generator", "reconstruction_metrics", "audio_reconstruction_metrics",
           "video_reconstruction_metrics", "shape_reconstruction_metrics", "save_grid", "save_video_grid", "save_shape_grid",
           "write_wavs"]

SPEECH_CLIPS = 24  # espeak-ng clips in the out-of-domain check (about 1 s of rendering each batch of 12)
WAVS_PER_RUN = 28  # generated clips written as WAV files next to eval.json (one per tones class)


def _integer_tensors(tokens: Any) -> list[torch.Tensor]:
    """The id tensors inside whatever ``encode`` returned (a tensor, or a list of them)."""
    if isinstance(tokens, torch.Tensor):
        return [] if tokens.is_floating_point() else [tokens]
    if isinstance(tokens, (list, tuple)):
        return [t for item in tokens for t in _integer_tensors(item)]
    return []


@torch.no_grad()
def _reconstruct(tok: torch.nn.Module, images: torch.Tensor, *, batch_size: int, **encode_kwargs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    recs, ids = [], []
    for start in range(0, images.shape[0], batch_size):
        tokens = tok.encode(images[start:start + batch_size], **encode_kwargs)
        ids.extend(t.flatten() for t in _integer_tensors(tokens))
        recs.append(tok.decode(tokens).float())
    return torch.cat(recs), ids


@torch.no_grad()
def reconstruction_metrics(tok: torch.nn.Module, images: torch.Tensor, *, class_ids: torch.Tensor | None = None,
                           batch_size: int = 64) -> dict[str, float]:
    """PSNR / SSIM of ``decode(encode(images))``, usage / perplexity of discrete ids, PSNR per prefix for flexible ones.

    With ``class_ids`` (shapes), also ``judged_right``: the share of reconstructions whose shape and colour
    :func:`mmgen.metrics.prompt_adherence` still reads as their class, the ceiling for a generator on these tokens.
    """
    was_training = tok.training
    tok.eval()
    try:
        rec, ids = _reconstruct(tok, images, batch_size=batch_size)
        results = {"psnr": psnr(rec, images.float()), "ssim": ssim(rec, images.float())}
        if class_ids is not None:
            results["judged_right"] = prompt_adherence(rec, class_ids)
        codebook_size = getattr(tok, "codebook_size", None)
        if ids and isinstance(codebook_size, int):
            results.update(codebook_usage(torch.cat(ids), codebook_size))
        if "num_tokens" in inspect.signature(tok.encode).parameters:
            total = tok.max_tokens
            for k in sorted({2**i for i in range(int(math.log2(total)) + 1)} | {total}):
                rec_k, _ = _reconstruct(tok, images, batch_size=batch_size, num_tokens=k)
                results[f"psnr@k={k}"] = psnr(rec_k, images.float())
    finally:
        tok.train(was_training)
    return results


@torch.no_grad()
def audio_reconstruction_metrics(tok: torch.nn.Module, audio_B1T: torch.Tensor, *, class_ids: torch.Tensor | None = None,
                                 batch_size: int = 32) -> dict[str, float]:
    """SI-SDR, mel and STFT distance of ``decode(encode(audio))`` and codebook usage per level.

    A codec that encodes at several bitrates (``encode(..., num_quantizers=k)``) is measured at k = 1, 2, 4, …
    up to all its codebooks too (``si_sdr@q=k``). With ``class_ids`` (tones), ``judged_right``: the share of
    reconstructions the tones judge reads as their class, the ceiling for a generator on these tokens.
    """
    was_training = tok.training
    tok.eval()
    try:
        rate = int(tok.sample_rate)
        reference = audio_B1T.float()

        def scores(rec: torch.Tensor, suffix: str = "") -> dict[str, float]:
            rec = rec[..., :reference.shape[-1]]
            return {f"si_sdr{suffix}": si_sdr(rec, reference), f"mel_distance{suffix}": mel_distance(rec, reference, sample_rate=rate),
                    f"stft_distance{suffix}": stft_distance(rec, reference)}

        rec, ids = _reconstruct(tok, audio_B1T, batch_size=batch_size)
        results = scores(rec)
        if class_ids is not None:
            results["judged_right"] = tone_adherence(rec[..., :reference.shape[-1]], class_ids, sample_rate=rate)
        if ids and isinstance(getattr(tok, "codebook_size", None), int):
            for level, usage in enumerate(_levels(tok, audio_B1T[:batch_size])):
                results.update({f"{k}/level{level}": v for k, v in usage.items()})
        if "num_quantizers" in inspect.signature(tok.encode).parameters:
            total = int(tok.num_codebooks)
            for k in sorted({2**i for i in range(int(math.log2(total)) + 1)} | {total}):
                rec_k, _ = _reconstruct(tok, audio_B1T, batch_size=batch_size, num_quantizers=k)
                results.update(scores(rec_k, f"@q={k}"))
    finally:
        tok.train(was_training)
    return results


def _levels(tok: torch.nn.Module, audio_B1T: torch.Tensor) -> list[dict[str, float]]:
    """Codebook usage and perplexity of each level (codebook) over one batch of codes."""
    tokens = tok.encode(audio_B1T)
    if isinstance(tokens, (list, tuple)):  # a pyramid: one codebook per scale
        return [codebook_usage(t.flatten(), tok.codebook_size) for t in tokens]
    ids_BtK = tokens if tokens.dim() == 3 else tokens[..., None]
    return codebook_usage_per_level(ids_BtK, tok.codebook_size)


def _evaluate_codec(tok: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Reconstruction of held-out tones and of espeak-ng speech at the codec's rate."""
    n, rate = cfg.eval.num_items, cfg.data.sample_rate
    seconds = cfg.eval.clip_seconds or cfg.data.clip_seconds
    device = next(tok.parameters()).device
    heldout = TonesDataset(length=n, split="heldout", seed=cfg.seed, sample_rate=rate, seconds=seconds).batch(range(n))
    speech = SpeechClips(sample_rate=rate, seconds=seconds)
    speech_audio = speech.batch(range(min(len(speech), SPEECH_CLIPS)))["audio"]
    return {
        "tones_heldout": audio_reconstruction_metrics(tok, heldout["audio"].to(device), class_ids=heldout["class_id"]),
        "speech": audio_reconstruction_metrics(tok, speech_audio.to(device)),
    }


@torch.no_grad()
def video_reconstruction_metrics(tok: torch.nn.Module, videos_BTCHW: torch.Tensor, *, class_ids: torch.Tensor | None = None,
                                 batch_size: int = 32) -> dict[str, Any]:
    """PSNR of ``decode(encode(videos))`` per frame position (``psnr_per_frame``), of the first frame and of the
    later ones, SSIM, codebook usage of discrete ids, and with ``class_ids`` (moving shapes) ``judged_right``: the
    share of reconstructions :func:`mmgen.metrics.video_adherence` still reads as their class."""
    was_training = tok.training
    tok.eval()
    try:
        rec, ids = _reconstruct(tok, videos_BTCHW, batch_size=batch_size)
        target = videos_BTCHW.float()
        results: dict[str, Any] = {"psnr": psnr(rec.flatten(0, 1), target.flatten(0, 1)),
                                   "psnr_first": psnr(rec[:, 0], target[:, 0]),
                                   "ssim": ssim(rec.flatten(0, 1), target.flatten(0, 1)),
                                   "psnr_per_frame": [psnr(rec[:, t], target[:, t]) for t in range(rec.shape[1])]}
        if rec.shape[1] > 1:
            results["psnr_rest"] = psnr(rec[:, 1:].flatten(0, 1), target[:, 1:].flatten(0, 1))
        if class_ids is not None:
            results["judged_right"] = video_adherence(rec, class_ids)
        if ids and isinstance(getattr(tok, "codebook_size", None), int):
            results.update(codebook_usage(torch.cat(ids), tok.codebook_size))
    finally:
        tok.train(was_training)
    return results


def _evaluate_video_tokenizer(tok: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Held-out moving shapes per frame position, and held-out shapes-32 images as 1-frame videos (the image path).
    A tokenizer of condensed 1D clip tokens (any prefix decodes) is measured per prefix length instead of on images."""
    n, size = cfg.eval.num_items, cfg.data.image_size
    device = next(tok.parameters()).device
    clips = MovingShapesDataset(size=size, num_frames=cfg.data.num_frames, length=n, split="heldout", seed=cfg.seed).batch(range(n))
    heldout = video_reconstruction_metrics(tok, clips["video"].to(device), class_ids=clips["class_id"])
    if tok.token_spec().prefix_decodable:
        total = tok.token_spec().shape[0]
        for k in sorted({2**i for i in range(int(math.log2(total)) + 1)} | {total}):
            rec, _ = _reconstruct(tok, clips["video"].to(device), batch_size=32, num_tokens=k)
            heldout[f"psnr@k={k}"] = psnr(rec.flatten(0, 1), clips["video"].flatten(0, 1).float())
        return {"moving_shapes_heldout": heldout}
    images = ShapesDataset(size=size, length=n, split="heldout", seed=cfg.seed).batch(range(n))
    target = images["image"].to(device).float()
    was_training = tok.training
    tok.eval()
    try:
        rec = _reconstruct(tok, target[:, None], batch_size=32)[0][:, 0]  # each image a 1-frame video
    finally:
        tok.train(was_training)
    return {"moving_shapes_heldout": heldout,
            "shapes_heldout_as_images": {"psnr": psnr(rec, target), "ssim": ssim(rec, target),
                                         "judged_right": prompt_adherence(rec, images["class_id"])}}


SHAPE_POINTS = 2048  # surface points per shape for Chamfer distance and F-score


@torch.no_grad()
def shape_reconstruction_metrics(tok: torch.nn.Module, shapes_BRRR: torch.Tensor, points_BN3: torch.Tensor, *,
                                 class_ids: torch.Tensor | None = None, batch_size: int = 32) -> dict[str, float]:
    """Volume IoU of ``decode(encode(shapes))`` (cut at 0.5), Chamfer distance and F-score of its voxel surface against
    the shapes' own surface points, tokens and bytes per shape, and the share the primitives judge still reads right."""
    was_training = tok.training
    tok.eval()
    try:
        rec, ids = _reconstruct(tok, shapes_BRRR, batch_size=batch_size)
    finally:
        tok.train(was_training)
    rec = rec > 0.5
    generator = torch.Generator().manual_seed(0)
    chamfer, fscore = [], []
    for shape, points in zip(rec, points_BN3):
        if not bool(shape.any()):  # nothing reconstructed: the worst scores, not a crash
            chamfer.append(float("inf"))
            fscore.append(0.0)
            continue
        surface = surface_points_from_voxels(shape[None].float(), SHAPE_POINTS, generator=generator)
        chamfer.append(float(chamfer_distance(surface, points[None].float())))
        fscore.append(float(f_score(surface, points[None].float())))
    spec = tok.token_spec()
    # an octree's length is its own (data never holds the padding id 0); a fixed pyramid has its positions
    tokens = sum(int((t != 0).sum()) for t in ids) / rec.shape[0] if spec.octree_depth else float(spec.num_positions)
    vocab = spec.content.codebook_sizes[0]
    results = {"iou": float(volume_iou(rec, shapes_BRRR > 0.5).mean()), "chamfer": sum(chamfer) / len(chamfer),
               "f_score": sum(fscore) / len(fscore), "tokens_per_shape": tokens, "bytes_per_shape": tokens * math.log2(vocab) / 8}
    if class_ids is not None:
        results["judged_right"] = shape3d_adherence(rec.float(), class_ids)
    return results


def _evaluate_shape_tokenizer(tok: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Held-out primitives at the tokenizer's resolution."""
    n = cfg.eval.num_items
    heldout = PrimitivesDataset(split="heldout", size=n, resolution=cfg.data.resolution, seed=cfg.seed).batch(range(n))
    device = next(iter(tok.parameters()), torch.empty(0)).device
    return {"primitives_heldout": shape_reconstruction_metrics(tok, heldout["shape"].to(device), heldout["points"],
                                                               class_ids=heldout["class_id"])}


def evaluate_tokenizer(tok: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Images: reconstruction on held-out shapes and on crops of scikit-image's photos. Audio: see
    :func:`_evaluate_codec`. Video: see :func:`_evaluate_video_tokenizer`. 3D: :func:`_evaluate_shape_tokenizer`."""
    if tok.modality == "audio":
        return _evaluate_codec(tok, cfg)
    if tok.modality == "video":
        return _evaluate_video_tokenizer(tok, cfg)
    if tok.modality == "shape":
        return _evaluate_shape_tokenizer(tok, cfg)
    n, size = cfg.eval.num_items, cfg.data.image_size
    heldout = ShapesDataset(size=size, length=n, split="heldout", seed=cfg.seed).batch(range(n))
    device = next(tok.parameters()).device
    photos = PhotoCrops(size=size, num_crops=max(2, n // 4), seed=cfg.seed).images_NCHW
    return {
        "shapes_heldout": reconstruction_metrics(tok, heldout["image"].to(device), class_ids=heldout["class_id"]),
        "photo_crops": reconstruction_metrics(tok, photos.to(device)),
    }


CONTINUATION_PROMPT_SECONDS = 0.25  # the prompt: a clip's first quarter second
LONG_VIDEO_FACTOR = 4  # long videos: 4x the clip length a video pipeline was trained on
CONTINUATION_FIELDS = ("adherence", "kind_right", "root_right", "prompt_seconds")
IMAGE_TO_VIDEO_FIELDS = ("kept", "moving", "num_samples")


def evaluate_generator(pipe: Any, cfg: TrainConfig, *, out_dir: Path | None = None) -> dict[str, Any]:
    """Prompt adherence and distribution figures (:func:`pipelines.generation_quality`, as ``mmgen eval``) over
    ``samples_per_class`` samples of each class of the built-in set (shapes or tones); a grid PNG (shapes) or
    one WAV per class (tones) in ``out_dir``. A tones pipeline that takes a ``prefill`` also reports
    ``continuation`` (:func:`pipelines.evaluate.tones_continuation`: held-out clips continued from their first
    0.25 s, or a quarter of a shorter clip, without a condition, ``samples_per_class`` per class) and, for id
    heads, ``continuation_inferred`` (the same with a class drawn from the model's posterior given the prompt)."""
    from pipelines.evaluate import generation_quality, tones_continuation

    ev = cfg.eval
    kwargs: dict[str, Any] = {"guidance_scale": GuidanceSchedule(scale=ev.guidance_scale, kind=ev.guidance_kind),
                              "temperature": ev.temperature, "top_k": ev.top_k, "top_p": ev.top_p, "min_p": ev.min_p}
    if ev.num_flow_steps is not None:
        kwargs["num_flow_steps"] = ev.num_flow_steps
    if cfg.data.dataset not in ("shapes", "tones", "moving_shapes", "primitives"):
        return {}
    if cfg.data.dataset == "moving_shapes":
        return _evaluate_video_generator(pipe, cfg, kwargs, out_dir=out_dir)
    if cfg.data.dataset == "primitives":
        return _evaluate_shape_generator(pipe, cfg, kwargs, out_dir=out_dir)
    result = generation_quality(pipe, samples_per_class=ev.samples_per_class, batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
    if cfg.data.dataset == "tones":
        audios, rate = result.pop("audios"), result.pop("sample_rate")
        if out_dir is not None:
            first_of_class = audios[::ev.samples_per_class][:WAVS_PER_RUN]
            write_wavs(first_of_class, Path(out_dir) / "samples", sample_rate=rate, names=[f"class-{c:02d}" for c in range(len(first_of_class))])
        if "prefill" in inspect.signature(pipe.__call__).parameters:
            sampling = {name: value for name, value in kwargs.items() if name != "guidance_scale"}
            prompt_seconds = min(CONTINUATION_PROMPT_SECONDS, cfg.data.clip_seconds / 4)  # a tiny test clip gets a quarter
            continued = tones_continuation(pipe, clips_per_class=ev.samples_per_class, prompt_seconds=prompt_seconds,
                                           batch_size=ev.batch_size, seed=cfg.seed, **sampling)
            result["continuation"] = {name: continued[name] for name in CONTINUATION_FIELDS}
            if isinstance(pipe.head.content, DiscreteContent):  # a class drawn from the model's posterior given the prompt
                inferred = tones_continuation(pipe, clips_per_class=ev.samples_per_class, prompt_seconds=prompt_seconds,
                                              infer_class=True, batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
                result["continuation_inferred"] = {name: inferred[name] for name in CONTINUATION_FIELDS}
        return result
    images = result.pop("images")
    if out_dir is not None:
        save_grid(images, Path(out_dir) / "samples.png", rows=21)
    return result


def _evaluate_video_generator(pipe: Any, cfg: TrainConfig, kwargs: dict[str, Any], *, out_dir: Path | None) -> dict[str, Any]:
    """Moving shapes: adherence over every class; for pipelines that take a ``prefill`` of a first frame, image-to-video (held-out
    first frames given, no condition; for id heads also with a class drawn from the model's posterior given the frame)
    and one video per class 4x the trained length (clips chained through their last frame). The first sample of each
    class as an animated GIF grid in ``out_dir``, the long videos too."""
    from pipelines import starts_with_the_first_frame
    from pipelines.evaluate import moving_shapes_adherence, moving_shapes_image_to_video, moving_shapes_long_video

    ev = cfg.eval
    result = moving_shapes_adherence(pipe, samples_per_class=ev.samples_per_class, batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
    videos = result.pop("videos")
    if out_dir is not None:
        save_video_grid(videos[::ev.samples_per_class], Path(out_dir) / "samples.gif", rows=12)
    if "prefill" in inspect.signature(pipe.__call__).parameters and starts_with_the_first_frame(pipe):
        sampling = {name: value for name, value in kwargs.items() if name != "guidance_scale"}
        given = moving_shapes_image_to_video(pipe, clips_per_class=ev.samples_per_class, batch_size=ev.batch_size, seed=cfg.seed,
                                             **sampling)
        result["image_to_video"] = {name: given[name] for name in IMAGE_TO_VIDEO_FIELDS}
        if isinstance(pipe.head.content, DiscreteContent):  # a class drawn from the model's posterior given the frame
            inferred = moving_shapes_image_to_video(pipe, clips_per_class=ev.samples_per_class, infer_class=True,
                                                    batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
            result["image_to_video_inferred"] = {name: inferred[name] for name in IMAGE_TO_VIDEO_FIELDS}
        long = moving_shapes_long_video(pipe, samples_per_class=1, length_factor=LONG_VIDEO_FACTOR, batch_size=ev.batch_size,
                                        seed=cfg.seed, **kwargs)
        if out_dir is not None:
            save_video_grid(long.pop("videos"), Path(out_dir) / "long_videos.gif", rows=12)
        result["long_video"] = {name: value for name, value in long.items() if name != "videos"}
    return result


def _evaluate_shape_generator(pipe: Any, cfg: TrainConfig, kwargs: dict[str, Any], *, out_dir: Path | None) -> dict[str, Any]:
    """Primitives: adherence over every class judged on the decoded occupancy, the share of closed meshes, and the
    first samples of each class as shaded previews in one PNG grid in ``out_dir``."""
    from pipelines.evaluate import primitives_adherence

    ev = cfg.eval
    result = primitives_adherence(pipe, samples_per_class=ev.samples_per_class, batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
    voxels = result.pop("voxels")
    if out_dir is not None:
        save_shape_grid(voxels, Path(out_dir) / "samples.png", per_class=ev.samples_per_class)
    return result


def save_shape_grid(voxels_NRRR: torch.Tensor, path: Path, *, per_class: int, columns: int = 8, size: int = 96) -> None:
    """Shaded previews of the first ``columns`` samples of each class (``per_class`` consecutive samples), a row per class."""
    import PIL.Image

    from mmgen.meshes import render_preview

    rows = math.ceil(voxels_NRRR.shape[0] / per_class)
    cols = min(columns, per_class)
    canvas = PIL.Image.new("RGB", (cols * size, rows * size), "white")
    for r in range(rows):
        for c in range(cols):
            i = r * per_class + c
            if i < voxels_NRRR.shape[0]:
                canvas.paste(render_preview(voxels_NRRR[i].float(), size=size), (c * size, r * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_video_grid(videos_NTCHW: torch.Tensor, path: Path, *, rows: int, frame_ms: int = 125) -> None:
    """Clips in [-1, 1] as one animated GIF: frame t of the GIF is the grid of every clip's frame t."""
    import PIL.Image

    from mmgen.files import write_atomically

    n, t, _, h, w = videos_NTCHW.shape
    cols = math.ceil(n / rows)
    canvas = torch.zeros(t, 3, rows * h, cols * w)
    for i, clip in enumerate(videos_NTCHW):
        r, c = divmod(i, cols)
        canvas[:, :, r * h:(r + 1) * h, c * w:(c + 1) * w] = (clip.float().cpu() + 1) / 2
    frames = [PIL.Image.fromarray((f.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for f in canvas]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms,
                                                      loop=0))


def write_wavs(audio_N1T: torch.Tensor, folder: Path, *, sample_rate: int, names: list[str]) -> list[Path]:
    """One 16-bit WAV per clip (``names[i].wav``) in ``folder``, each written atomically."""
    import soundfile

    from mmgen.files import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for clip, name in zip(audio_N1T, names):
        path = folder / f"{name}.wav"
        data = clip.float().clamp(-1, 1).reshape(-1).cpu().numpy()
        write_atomically(path, lambda tmp, data=data: soundfile.write(str(tmp), data, sample_rate, subtype="PCM_16", format="WAV"))
        paths.append(path)
    return paths


def save_grid(images_NCHW: torch.Tensor, path: Path, *, rows: int) -> None:
    """Images in [-1, 1] as one PNG grid with ``rows`` rows."""
    import PIL.Image

    n, _, h, w = images_NCHW.shape
    cols = math.ceil(n / rows)
    canvas = torch.zeros(3, rows * h, cols * w)
    for i, image in enumerate(images_NCHW):
        r, c = divmod(i, cols)
        canvas[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = (image.float().cpu() + 1) / 2
    array = (canvas.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)
