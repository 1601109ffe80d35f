"""``mmgen demo``: generate the shapes, tones, moving-shapes and 3D primitives prompts with every paradigm's shipped
checkpoint and write a report.

The repository ships one tiny pipeline per image paradigm in ``checkpoints/shapes32``, one per audio
paradigm in ``checkpoints/tones``, one per video paradigm in ``checkpoints/moving_shapes`` and one per 3D
paradigm in ``checkpoints/primitives`` (each reproducible by one ``mmgen train configs/...`` command). The demo
loads them, generates every shapes prompt ("a red circle", ...), every tones prompt ("a C4 tone", ...), every
moving-shapes prompt ("a red square moving left", ...) and every primitives prompt ("a torus", ...) with each,
judges every image with :func:`mmgen.metrics.judge_shapes`, every audio clip with :func:`mmgen.metrics.judge_tones`,
every video clip with :func:`mmgen.metrics.judge_moving_shapes` and every 3D shape with
:func:`mmgen.metrics.judge_primitives`, and writes into the output folder: one PNG per image and a grid per image
paradigm, one WAV and one spectrogram PNG per audio clip (under ``tones/``), one animated GIF per video clip and a
grid GIF per video paradigm (under ``video/``), one PLY mesh and one PNG preview per 3D shape and a grid of previews
per 3D paradigm (under ``shapes/``), ``manifest.json`` and ``index.html``: one static page (inline CSS, no scripts, no external files, readable from ``file://``) with a summary table
(per paradigm: how it generates, GPT forwards per sample, prompt adherence, time), then every sample with its
prompt, the judge's verdict and, on hover, its seed and time.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmgen import __version__
from mmgen.data import (
    NUM_CLASSES,
    NUM_SHAPE3D_CLASSES,
    NUM_TONE_CLASSES,
    NUM_VIDEO_CLASSES,
    PRIMITIVES,
    caption,
    class_parts,
    shape3d_caption,
    tone_caption,
    tone_class_parts,
    video_caption,
    video_class_parts,
)
from mmgen.files import write_atomically, write_video
from mmgen.meshes import occupancy_to_mesh, render_preview, write_mesh
from mmgen.metrics import (
    judge_moving_shapes,
    judge_primitives,
    judge_shapes,
    judge_tones,
)
from mmgen.spectral import LOG_FLOOR, mel_spectrogram

from .shipped import (
    AUDIO_CHECKPOINTS,
    AUDIO_PARADIGMS,
    DEFAULT_CHECKPOINTS,
    PARADIGMS,
    SHAPE_CHECKPOINTS,
    SHAPE_PARADIGMS,
    VIDEO_CHECKPOINTS,
    VIDEO_PARADIGMS,
)

__all__ = ["AUDIO_CHECKPOINTS", "AUDIO_DESCRIPTIONS", "AUDIO_PARADIGMS", "DEFAULT_CHECKPOINTS", "DESCRIPTIONS", "PARADIGMS",
           "SHAPE_CHECKPOINTS", "SHAPE_DESCRIPTIONS", "SHAPE_PARADIGMS", "VIDEO_CHECKPOINTS", "VIDEO_DESCRIPTIONS",
           "VIDEO_PARADIGMS", "run_demo"]

DESCRIPTIONS = {  # formatted with the pipeline's config; the counts come from its program (see _cost)
    "next-token": "one token per GPT forward, in raster order (LlamaGen-style)",
    "next-scale": "a whole scale of tokens per GPT forward, coarse to fine, each scale seeing the picture so far (VAR-style)",
    "next-x": "one {entity} of the token grid per GPT forward, all its positions drawn at once by the head (xAR-style)",
}
AUDIO_DESCRIPTIONS = {
    "next-token-rvq": "RVQ codec, next-token in the delay pattern: one step per frame, codebook k delayed by k (MusicGen-style)",
    "next-scale": "multi-scale codec, next-scale: a whole scale of its token pyramid per GPT forward, coarse to fine (VAR-style)",
    "next-token-single": "single-codebook codec, next-token with one token per frame",
}
VIDEO_DESCRIPTIONS = {
    "next-token": "discrete causal video tokenizer, next-token: one token per GPT forward, raster order frame after frame "
                  "(LlamaGen-style, 3D RoPE)",
    "next-frame": "discrete causal video tokenizer, next-frame: a whole latent frame per GPT forward, its 4x4 ids one position "
                  "of 16 codebooks drawn one after another by a tied depth head, the KV cache kept across frames (xAR-style)",
}
SHAPE_DESCRIPTIONS = {
    "octree-level": "octree tokenizer, next-scale by level: one GPT forward per octree level, drawing every node of it at "
                    "once, its nodes the children of the cells the level before occupied (Uni-3DAR-style)",
    "octree-token": "octree tokenizer, next-token: one GPT forward per octree node in breadth-first (Morton) order, each "
                    "node's cell known before its token is drawn (Uni-3DAR-style); a tree has as many nodes as its surface "
                    "needs, so the forwards counted are the most a shape can take",
    "vat-next-scale": "VAT-style variational shape tokenizer, next-scale: one GPT forward per scale of its 1D latent "
                      "pyramid, coarse to fine (VAR-style)",
}
AUDIO_FOLDER = "tones"  # clips go to tones/<paradigm>/: the audio and image paradigm names overlap (next-scale)
VIDEO_FOLDER = "video"  # and video/<paradigm>/ (next-token is an image paradigm too), with video/grid-<paradigm>.gif
VIDEO_FPS = 8  # what `mmgen generate` writes GIFs with: 9 frames of moving shapes play for about a second
VIDEO_GRID_ROWS = 12  # 84 prompts: 12 rows of 7 clips (times samples_per_prompt)
SHAPE_FOLDER = "shapes"  # meshes and previews go to shapes/<paradigm>/, with shapes/grid-<paradigm>.png
SAMPLING = {"guidance_scale": 3.0, "temperature": 1.0}  # what the shapes32 and tones configs evaluate with
VIDEO_SAMPLING = {"guidance_scale": 2.0, "temperature": 0.7}  # what configs/moving_shapes/next-token.yaml evaluates with
SHAPE_SAMPLING = {  # per paradigm what its configs/primitives/<paradigm>.yaml evaluates with (a sweep of the trained model)
    "octree-level": {"guidance_scale": 2.0, "temperature": 0.3},
    "octree-token": {"guidance_scale": 2.0, "temperature": 0.5},
    "vat-next-scale": {"guidance_scale": 2.0, "temperature": 0.7},
}
SPECTROGRAM = {"n_fft": 1024, "hop_length": 128, "n_mels": 64}
SPECTROGRAM_RANGE_DB = 80.0  # shown below each clip's peak; quieter is black


def run_demo(*, checkpoints: Path = DEFAULT_CHECKPOINTS, out_dir: Path = Path("mmgen-demo"), samples_per_prompt: int = 1,
             seed: int = 0, overwrite: bool = False, paradigms: list[str] | None = None,
             audio_checkpoints: Path | None = AUDIO_CHECKPOINTS, audio_paradigms: list[str] | None = None,
             video_checkpoints: Path | None = VIDEO_CHECKPOINTS, video_paradigms: list[str] | None = None,
             shape_checkpoints: Path | None = SHAPE_CHECKPOINTS, shape_paradigms: list[str] | None = None) -> dict[str, Any]:
    """Generate every shapes prompt per image paradigm, then every tones prompt per audio paradigm, then every
    moving-shapes prompt per video paradigm, then every primitives prompt per 3D paradigm, ``samples_per_prompt``
    times each; returns the manifest.

    ``audio_checkpoints=None`` leaves audio out. With ``audio_paradigms=None`` the audio paradigms whose
    folder is absent are skipped (the manifest's ``audio.skipped`` says why), since the tones pipelines may
    not be shipped yet; ones named in ``audio_paradigms`` must exist, like the image ones. Video and 3D shapes
    likewise: ``video_checkpoints``, ``video_paradigms``, ``video.skipped``; ``shape_checkpoints``,
    ``shape_paradigms``, ``shapes.skipped``.
    """
    import pipelines

    chosen = list(PARADIGMS) if paradigms is None else paradigms
    unknown = [p for p in chosen if p not in PARADIGMS]
    if unknown:
        raise ValueError(f"unknown paradigm(s) {unknown}; choose from {list(PARADIGMS)}")
    missing = [p for p in chosen if not (Path(checkpoints) / p / "model_index.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no shipped pipeline for {missing} in {checkpoints}; pass --checkpoints DIR "
                                f"(a folder with {', '.join(chosen)} sub-folders, e.g. from `mmgen train configs/shapes32/...`)")
    audio_chosen, skipped = _optional_plan("audio", audio_checkpoints, audio_paradigms, AUDIO_PARADIGMS, configs="tones")
    video_chosen, video_skipped = _optional_plan("video", video_checkpoints, video_paradigms, VIDEO_PARADIGMS,
                                                 configs="moving_shapes")
    shape_chosen, shape_skipped = _optional_plan("shape", shape_checkpoints, shape_paradigms, SHAPE_PARADIGMS,
                                                 configs="primitives")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output folder {str(out_dir)!r} is a file; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {str(out_dir)!r} is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prompts = [caption(c) for c in range(NUM_CLASSES)]
    manifest: dict[str, Any] = {"mmgen_version": __version__, "created": datetime.now().astimezone().isoformat(timespec="seconds"),
                                "checkpoints": str(checkpoints), "samples_per_prompt": samples_per_prompt,
                                "sampling": SAMPLING, "seed": seed, "samples": [], "paradigms": {},
                                "audio": {"samples": [], "paradigms": {}, "skipped": skipped},
                                "video": {"samples": [], "paradigms": {}, "skipped": video_skipped, "sampling": VIDEO_SAMPLING},
                                "shapes": {"samples": [], "paradigms": {}, "skipped": shape_skipped, "sampling": SHAPE_SAMPLING}}
    for paradigm in chosen:
        pipe = _load(getattr(pipelines, PARADIGMS[paradigm]), Path(checkpoints) / paradigm)
        manifest["paradigms"][paradigm] = _run_paradigm(pipe, paradigm, prompts, samples_per_prompt, seed, out_dir, manifest)
    tone_prompts = [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
    for paradigm in audio_chosen:
        pipe = _load(getattr(pipelines, AUDIO_PARADIGMS[paradigm]), Path(audio_checkpoints) / paradigm)
        manifest["audio"]["paradigms"][paradigm] = _run_audio_paradigm(pipe, paradigm, tone_prompts, samples_per_prompt,
                                                                       seed, out_dir, manifest["audio"]["samples"])
    video_prompts = [video_caption(c) for c in range(NUM_VIDEO_CLASSES)]
    for paradigm in video_chosen:
        pipe = _load(getattr(pipelines, VIDEO_PARADIGMS[paradigm]), Path(video_checkpoints) / paradigm)
        manifest["video"]["paradigms"][paradigm] = _run_video_paradigm(pipe, paradigm, video_prompts, samples_per_prompt,
                                                                       seed, out_dir, manifest["video"]["samples"])
    shape_prompts = [shape3d_caption(c) for c in range(NUM_SHAPE3D_CLASSES)]
    for paradigm in shape_chosen:
        pipe = _load(getattr(pipelines, SHAPE_PARADIGMS[paradigm]), Path(shape_checkpoints) / paradigm)
        manifest["shapes"]["paradigms"][paradigm] = _run_shape_paradigm(pipe, paradigm, shape_prompts, samples_per_prompt,
                                                                        seed, out_dir, manifest["shapes"]["samples"])
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out_dir / "index.html").write_text(_html(manifest), encoding="utf-8")
    return manifest


def _optional_plan(kind: str, root: Path | None, named: list[str] | None, known: dict[str, str], *,
                   configs: str) -> tuple[list[str], dict[str, str]]:
    """The ``kind`` ("audio", "video", "shape") paradigms to run and the skipped ones with why; checked before anything is
    generated or deleted. Absent folders are skipped unless ``named`` asks for them; ``configs`` trains them."""
    if root is None:
        if named:
            raise ValueError(f"{kind}_paradigms={named} needs {kind}_checkpoints (a folder with their sub-folders), got None")
        return [], {}
    chosen = list(known) if named is None else named
    unknown = [p for p in chosen if p not in known]
    if unknown:
        raise ValueError(f"unknown {kind} paradigm(s) {unknown}; choose from {list(known)}")
    missing = [p for p in chosen if not (Path(root) / p / "model_index.json").is_file()]
    if missing and named is not None:
        raise FileNotFoundError(f"no shipped {kind} pipeline for {missing} in {root}; pass --{kind}-checkpoints DIR "
                                f"(a folder with {', '.join(chosen)} sub-folders, e.g. from `mmgen train configs/{configs}/...`)")
    return [p for p in chosen if p not in missing], {p: f"no pipeline in {Path(root) / p}" for p in missing}


def _load(cls: type, folder: Path) -> Any:
    """A saved pipeline, its progress bars off: the demo prints its own summary."""
    pipe = cls.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: Any, prompts: list[str], repeat: int, seed: int, sampling: dict[str, float] = SAMPLING,
              output_type: str = "pt") -> tuple[Any, list[int], float]:
    """Every prompt ``repeat`` times as one batch, sample i seeded with ``seed + i``: the output, the seeds, the seconds."""
    seeds = [seed + i for i in range(len(prompts) * repeat)]
    start = time.perf_counter()
    out = pipe(prompt=prompts, num_samples_per_prompt=repeat, output_type=output_type,
               generator=[torch.Generator().manual_seed(s) for s in seeds], **sampling)
    return out, seeds, time.perf_counter() - start


def _stem(i: int, prompt: str, seed: int) -> str:
    """A sample's file name without suffix: its index, prompt and seed ("000-a-red-circle-seed0")."""
    return f"{i:03d}-{prompt.replace(' ', '-')}-seed{seed}"


def _info(pipe: Any, description: str, seeds: list[int], seconds: float, right: int, **extra: Any) -> dict[str, Any]:
    """A paradigm's manifest entry: what it is, what a sample costs, how many it made, how fast and how well."""
    return {"pipeline": type(pipe).__name__, "description": description, **_cost(pipe), **extra,
            "num_samples": len(seeds), "seconds": seconds, "seconds_per_sample": seconds / len(seeds),
            "num_right": right, "prompt_adherence": right / len(seeds)}


def _run_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                  manifest: dict[str, Any]) -> dict[str, Any]:
    from .training.evaluation import save_grid

    out, seeds, seconds = _generate(pipe, prompts, repeat, seed)
    images = out.images * 2 - 1
    judged = judge_shapes(images)
    folder = out_dir / paradigm
    folder.mkdir()
    right = 0
    for i, (image, (shape, colour)) in enumerate(zip(images, judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = (shape, colour) == class_parts(class_id)
        right += ok
        name = f"{paradigm}/{_stem(i, prompt, seeds[i])}.png"
        save_grid(image[None], out_dir / name, rows=1)
        manifest["samples"].append({"file": name, "paradigm": paradigm, "prompt": prompt, "class_id": class_id,
                                    "seed": seeds[i], "seconds": seconds / len(seeds),
                                    "judged": {"shape": shape, "colour": colour}, "right": bool(ok)})
    save_grid(images, out_dir / f"grid-{paradigm}.png", rows=len(prompts) // 3)
    return _info(pipe, DESCRIPTIONS[paradigm].format(**pipe.config), seeds, seconds, right)


def _run_audio_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                        samples: list[dict[str, Any]]) -> dict[str, Any]:
    import soundfile

    out, seeds, seconds = _generate(pipe, prompts, repeat, seed)
    audio_B1T, rate = out.audios[:, None], out.sample_rate
    judged = judge_tones(audio_B1T, sample_rate=rate)
    pictures = _spectrograms(audio_B1T, sample_rate=rate)
    (out_dir / AUDIO_FOLDER / paradigm).mkdir(parents=True)
    right = 0
    for i, (clip, picture, (kind, root)) in enumerate(zip(out.audios.numpy(), pictures, judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = (kind, root) == tone_class_parts(class_id)
        right += ok
        stem = f"{AUDIO_FOLDER}/{paradigm}/{_stem(i, prompt, seeds[i])}"
        write_atomically(out_dir / f"{stem}.wav", lambda tmp, clip=clip: soundfile.write(str(tmp), clip, rate, subtype="PCM_16",
                                                                                          format="WAV"))
        write_atomically(out_dir / f"{stem}.png", lambda tmp, picture=picture: Image.fromarray(picture).save(tmp, format="PNG"))
        samples.append({"file": f"{stem}.wav", "spectrogram": f"{stem}.png", "paradigm": paradigm, "prompt": prompt,
                        "class_id": class_id, "seed": seeds[i], "seconds": seconds / len(seeds),
                        "judged": {"kind": kind, "root": root}, "right": bool(ok)})
    return _info(pipe, AUDIO_DESCRIPTIONS[paradigm], seeds, seconds, right, sample_rate=rate)


def _run_video_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                        samples: list[dict[str, Any]]) -> dict[str, Any]:
    from .training.evaluation import save_video_grid

    out, seeds, seconds = _generate(pipe, prompts, repeat, seed, VIDEO_SAMPLING)
    videos = out.videos.cpu()  # [B, T, 3, H, W] in [0, 1]
    clips = videos * 2 - 1
    judged = judge_moving_shapes(clips)
    (out_dir / VIDEO_FOLDER / paradigm).mkdir(parents=True)
    right = 0
    for i, (frames_THW3, (shape, colour, direction)) in enumerate(zip(videos.permute(0, 1, 3, 4, 2).numpy(), judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = (shape, colour, direction) == video_class_parts(class_id)
        right += ok
        name = f"{VIDEO_FOLDER}/{paradigm}/{_stem(i, prompt, seeds[i])}.gif"
        write_video(out_dir / name, frames_THW3, fps=VIDEO_FPS)
        samples.append({"file": name, "paradigm": paradigm, "prompt": prompt, "class_id": class_id, "seed": seeds[i],
                        "seconds": seconds / len(seeds), "judged": {"shape": shape, "colour": colour, "direction": direction},
                        "right": bool(ok)})
    save_video_grid(clips, out_dir / VIDEO_FOLDER / f"grid-{paradigm}.gif", rows=VIDEO_GRID_ROWS, frame_ms=round(1000 / VIDEO_FPS))
    return _info(pipe, VIDEO_DESCRIPTIONS[paradigm], seeds, seconds, right, num_frames=videos.shape[1], fps=VIDEO_FPS)


def _run_shape_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                        samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One PLY mesh and PNG preview per shape and a grid of the previews, one column per prompt.

    The mesh is taken from the very occupancy the judge reads (marching cubes at 0.5), so what a reader
    downloads is what was judged.
    """
    from .training.evaluation import save_grid

    out, seeds, seconds = _generate(pipe, prompts, repeat, seed, SHAPE_SAMPLING[paradigm], output_type="voxels")
    voxels_BRRR = out.shapes  # bool
    judged = judge_primitives(torch.from_numpy(voxels_BRRR))
    (out_dir / SHAPE_FOLDER / paradigm).mkdir(parents=True)
    right, previews = 0, []
    for i, (grid_RRR, primitive) in enumerate(zip(voxels_BRRR, judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = primitive == PRIMITIVES[class_id]
        right += ok
        stem = f"{SHAPE_FOLDER}/{paradigm}/{_stem(i, prompt, seeds[i])}"
        mesh = occupancy_to_mesh(grid_RRR)
        write_mesh(out_dir / f"{stem}.ply", mesh)
        preview = render_preview(mesh)
        write_atomically(out_dir / f"{stem}.png", lambda tmp, preview=preview: preview.save(tmp, format="PNG"))
        previews.append(torch.from_numpy(np.array(preview)).permute(2, 0, 1).float() / 127.5 - 1)
        samples.append({"file": f"{stem}.ply", "preview": f"{stem}.png", "paradigm": paradigm, "prompt": prompt,
                        "class_id": class_id, "seed": seeds[i], "seconds": seconds / len(seeds),
                        "judged": {"primitive": None if primitive == "none" else primitive}, "right": bool(ok)})
    by_column = torch.stack(previews).unflatten(0, (len(prompts), repeat)).transpose(0, 1).flatten(0, 1)
    save_grid(by_column, out_dir / SHAPE_FOLDER / f"grid-{paradigm}.png", rows=repeat)
    info = _info(pipe, SHAPE_DESCRIPTIONS[paradigm], seeds, seconds, right, resolution=voxels_BRRR.shape[1])
    lengths = pipe.sequence_lengths(pipe.to_sequence(out.tokens))
    if lengths is not None:  # a tree's length is its own: the program's counts are its capacity, so say what was drawn
        one_per_position = info["gpt_forwards_per_sample"] == info["positions_per_sample"]
        info["positions_per_sample"] = round(float(lengths.float().mean()), 1)
        if one_per_position:
            info["gpt_forwards_per_sample"] = info["positions_per_sample"]
    return info


def _cost(pipe: Any) -> dict[str, Any]:
    """What one sample takes, read off the program the pipeline generates with rather than assumed per paradigm.

    Each generation step is one GPT forward over the new positions (the prefix rides with the first; under
    guidance the conditional and null rows share it as one doubled batch), so forwards = groups of the pattern.
    """
    program = pipe.program()
    return {"tokenizer": type(pipe.tokenizer).__name__, "device": str(pipe.device),
            "gpt_forwards_per_sample": program.num_steps, "positions_per_sample": program.num_positions}


def _spectrograms(audio_B1T: torch.Tensor, *, sample_rate: int) -> np.ndarray:
    """Log-mel pictures ``[B, n_mels, frames]`` as uint8 grey, low frequencies at the bottom.

    Each clip is shown over the ``SPECTROGRAM_RANGE_DB`` below its own peak, so quiet clips stay readable;
    a silent clip is black.
    """
    db = 20 * torch.log10(mel_spectrogram(audio_B1T, sample_rate=sample_rate, **SPECTROGRAM).clamp_min(LOG_FLOOR))
    low = (db.amax(dim=(1, 2), keepdim=True) - SPECTROGRAM_RANGE_DB).clamp_min(20 * math.log10(LOG_FLOOR))
    grey = ((db - low) / SPECTROGRAM_RANGE_DB).clamp(0, 1) * 255
    return grey.round().to(torch.uint8).flip(1).numpy()


STYLE = (
    "body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1d2330;background:#f6f7f9}"
    "main{max-width:1100px;margin:0 auto;padding:24px}h1{margin:0 0 4px;font-size:28px}"
    "h2{margin-top:36px;padding-bottom:4px;border-bottom:1px solid #d8dce3}h3 small,td small,.settings,.verdict{color:#5b6474}"
    "h3 small{font-weight:normal}.lead{font-size:17px}code{font-size:13px}"
    "table{width:100%;border-collapse:collapse;background:#fff}th,td{padding:6px 10px;border-bottom:1px solid #e3e6eb;"
    "text-align:left;vertical-align:top}td small{display:block}.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:104px;padding:4px;background:#fff;font-size:12px;"
    "border:3px solid #2e9d4f;border-radius:6px}figure.miss{border-color:#d0453b}figure img{display:block;margin:0 auto 2px;"
    "width:96px;height:96px;image-rendering:pixelated;background:#000}figure.audio{width:168px}.audio img{width:160px;height:64px}"
    ".audio audio{width:160px;height:28px}figure.shape{width:136px}.shape img{width:128px;height:128px;"
    "image-rendering:auto;background:none}.verdict{display:block}.ok b{color:#2e9d4f}.miss b{color:#d0453b}"
)


def _html(manifest: dict[str, Any]) -> str:
    """The page: header, summary table, then every sample per paradigm; all text escaped, all files relative to it."""
    images = "".join(_section("image", p, info, [s for s in manifest["samples"] if s["paradigm"] == p])
                     for p, info in manifest["paradigms"].items())
    if images:
        images = ("<h2>Images: shapes prompts</h2><p>Each image enlarged, pixels kept sharp. A green frame: the judge "
                  "(<code>mmgen.metrics.judge_shapes</code>, on the pixels) reads the prompt's shape and colour; red: it does not. "
                  "Hover over a sample for its seed and generation time.</p>" + images)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">"
            f"<title>mmgen {html.escape(manifest['mmgen_version'])} demo</title><style>{STYLE}</style></head><body><main>"
            + _header(manifest) + _summary(manifest) + images + _audio_html(manifest["audio"]) + _video_html(manifest["video"])
            + _shapes_html(manifest["shapes"])
            + '<footer><p>Everything on this page, machine-readable: <a href="manifest.json">manifest.json</a>.</p></footer>'
            "</main></body></html>\n")


def _header(manifest: dict[str, Any]) -> str:
    """What the page shows and how it was made, in words: a reader should not need the manifest to follow it."""
    made = datetime.fromisoformat(manifest["created"])
    infos = [*manifest["paradigms"].values(), *manifest["audio"]["paradigms"].values(), *manifest["video"]["paradigms"].values(),
             *manifest["shapes"]["paradigms"].values()]
    devices = ", ".join(sorted({info["device"] for info in infos})) or "no device"
    ran = [f"every {name} prompt" for name, paradigms in (("shapes", manifest["paradigms"]), ("tones", manifest["audio"]["paradigms"]),
                                                           ("moving-shapes", manifest["video"]["paradigms"]),
                                                           ("3D primitives", manifest["shapes"]["paradigms"])) if paradigms]
    prompts = " and ".join([", ".join(ran[:-1]), ran[-1]] if len(ran) > 2 else ran)
    n, sampling = manifest["samples_per_prompt"], manifest["sampling"]
    return (f"<header><h1>mmgen demo</h1><p class=lead>Autoregressive generation with mmgen "
            f"{html.escape(manifest['mmgen_version'])}: one small pipeline per paradigm generated {prompts or 'nothing'}, "
            f"and an automatic judge checked each sample against its prompt.</p><p class=settings>Made on {made.day} {made:%B %Y at %H:%M} on "
            f"{html.escape(devices)}: {n} sample{'' if n == 1 else 's'} per prompt, sample <i>i</i> seeded with "
            f"{manifest['seed']} + <i>i</i>, classifier-free guidance scale {sampling['guidance_scale']:g}, temperature "
            f"{sampling['temperature']:g}. Pipelines from <code>{html.escape(manifest['checkpoints'])}</code>.</p></header>")


def _summary(manifest: dict[str, Any]) -> str:
    """One row per paradigm, images, audio, video, then 3D shapes: the figures a reader compares first, each linked to its samples."""
    rows = [*(("image", p, info) for p, info in manifest["paradigms"].items()),
            *(("audio", p, info) for p, info in manifest["audio"]["paradigms"].items()),
            *(("video", p, info) for p, info in manifest["video"]["paradigms"].items()),
            *(("shape", p, info) for p, info in manifest["shapes"]["paradigms"].items())]
    body = "".join(
        f'<tr><th scope=row><a href="#{kind}-{html.escape(p)}">{html.escape(p)}</a></th><td>{kind}</td>'
        f'<td>{html.escape(info["description"])}<small>{_positions_in_words(info)}; '
        f'{html.escape(info["pipeline"])} on {html.escape(info["tokenizer"])}</small></td>'
        f'<td class=num>{info["gpt_forwards_per_sample"]}</td><td class=num>{info["num_samples"]}</td>'
        f'<td class=num>{info["prompt_adherence"]:.0%}</td><td class=num>{info["seconds_per_sample"] * 1000:.0f}</td></tr>'
        for kind, p, info in rows
    )
    return ("<h2>Summary</h2><p>Every paradigm runs on the same GPT trunk and sampler; they differ in how many token positions "
            "one GPT forward draws, hence in how many forwards a sample takes (under guidance a forward carries the prompt "
            "and the null condition as one batch). Prompt adherence: the share of samples in which the judge reads back "
            "exactly what the prompt asks for.</p><table><thead><tr><th>Paradigm</th><th>Modality</th><th>How it generates</th>"
            "<th class=num>GPT forwards per sample</th><th class=num>Samples</th><th class=num>Prompt adherence</th>"
            f"<th class=num>ms per sample</th></tr></thead><tbody>{body}</tbody></table>")


def _positions_in_words(info: dict[str, Any]) -> str:
    """A sample's token positions against its forwards: "64 token positions, one per forward" or "30 ... in 4 forwards"."""
    positions, forwards = info["positions_per_sample"], info["gpt_forwards_per_sample"]
    return f"{positions} token positions, one per forward" if positions == forwards else f"{positions} token positions in {forwards} forwards"


def _section(kind: str, paradigm: str, info: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """A paradigm's samples after a line on how it generates them and how well they follow their prompts."""
    how = info["description"][:1].upper() + info["description"][1:]
    batch = f"one batch of {info['num_samples']} in {info['seconds']:.2f} s"
    figures = "".join(_figure(kind, s, batch) for s in samples)
    return (f'<section id="{kind}-{html.escape(paradigm)}"><h3>{html.escape(paradigm)} <small>'
            f'{html.escape(info["pipeline"])}</small></h3><p>{html.escape(how)}: {info["gpt_forwards_per_sample"]} GPT '
            f'forwards per sample. Prompt adherence {info["prompt_adherence"]:.0%} ({info["num_right"]} of {len(samples)}), '
            f'{info["seconds_per_sample"] * 1000:.0f} ms per sample.</p><div class=grid>{figures}</div></section>')


def _figure(kind: str, sample: dict[str, Any], batch: str) -> str:
    """One sample: its media (an image or animated GIF; a spectrogram above a player; a 3D shape's preview, a link to
    download its mesh), the prompt, the verdict; seed and time on hover.

    A paradigm's samples are generated as one ``batch``, so a sample's time is the batch's divided by its size.
    """
    prompt = html.escape(sample["prompt"])
    if kind == "audio":
        media = (f'<img src="{html.escape(sample["spectrogram"])}" alt="spectrogram of {prompt}">'
                 f'<audio controls preload=none src="{html.escape(sample["file"])}"></audio>')
    elif kind == "shape":
        media = (f'<a href="{html.escape(sample["file"])}" download><img src="{html.escape(sample["preview"])}" '
                 f'alt="preview of {prompt}"></a>')
    else:
        media = f'<img src="{html.escape(sample["file"])}" alt="{prompt}">'
    verdict = "✓ right" if sample["right"] else "✗ wrong"
    hover = f"seed {sample['seed']}, generated in {sample['seconds'] * 1000:.0f} ms ({batch})"
    return (f'<figure class="{kind} {"ok" if sample["right"] else "miss"}" title="{html.escape(hover)}">{media}'
            f'<figcaption>{prompt}<span class=verdict><b>{verdict}</b>: {html.escape(_read(sample["judged"]))}</span>'
            "</figcaption></figure>")


def _read(judged: dict[str, str | None]) -> str:
    """What the judge made of a sample, part by part ("read shape circle, colour ?"); "?" is a part it could not read."""
    if not any(judged.values()):
        return "read nothing"
    return "read " + ", ".join(f"{part} {value or '?'}" for part, value in judged.items())


def _audio_html(audio: dict[str, Any]) -> str:
    """The tones section; nothing when audio was left out."""
    return _optional_html("audio", audio, "<h2>Audio: tones prompts</h2><p>Each clip's log-mel spectrogram (low frequencies at "
                          f"the bottom, {SPECTROGRAM_RANGE_DB:.0f} dB below its peak) above a player. The frame is green when the "
                          "judge (<code>mmgen.metrics.judge_tones</code>, on the spectrum) reads the prompt's kind and root note, "
                          "red when it does not; hover for seed and generation time.</p>")


def _video_html(video: dict[str, Any]) -> str:
    """The moving-shapes section; nothing when video was left out."""
    return _optional_html("video", video, "<h2>Video: moving-shapes prompts</h2><p>Each clip an animated GIF, looping at "
                          f"{VIDEO_FPS} frames per second, enlarged with its pixels kept sharp. The frame is green when the judge "
                          "(<code>mmgen.metrics.judge_moving_shapes</code>, on the pixels of every frame) reads the prompt's shape, "
                          "colour and direction of motion, red when it does not; hover for seed and generation time.</p>")


def _shapes_html(shapes: dict[str, Any]) -> str:
    """The 3D primitives section; nothing when 3D shapes were left out."""
    settings = "; ".join(f"{p} {s['guidance_scale']:g} / {s['temperature']:g}" for p, s in shapes["sampling"].items()
                         if p in shapes["paradigms"])
    return _optional_html("shape", shapes, "<h2>3D shapes: primitives prompts</h2><p>Each shape's preview (the mesh "
                          "marching cubes makes of its occupancy, shaded, seen from the front right and above); click it to "
                          "download the mesh (PLY). Sampled with classifier-free guidance scale / temperature "
                          f"{settings}. The frame is green when "
                          "the judge (<code>mmgen.metrics.judge_primitives</code>, on the occupancy) reads the prompt's "
                          "primitive, red when it does not; hover for seed and generation time.</p>")


def _optional_html(kind: str, part: dict[str, Any], intro: str) -> str:
    """A section that may be absent (audio, video, 3D shapes): ``intro``, per paradigm its samples, then the paradigms skipped and
    why; nothing when the modality was left out."""
    if not part["paradigms"] and not part["skipped"]:
        return ""
    sections = "".join(_section(kind, p, info, [s for s in part["samples"] if s["paradigm"] == p])
                       for p, info in part["paradigms"].items())
    skipped = "".join(f"<p>{html.escape(p)}: skipped, {html.escape(why)}.</p>" for p, why in part["skipped"].items())
    return intro + sections + skipped
