"""``mmgen demo``: generate the shapes and tones prompts with every paradigm's shipped checkpoint and write a report.

The repository ships one tiny pipeline per image paradigm in ``checkpoints/shapes32`` and one per audio
paradigm in ``checkpoints/tones`` (each reproducible by one ``mmgen train configs/...`` command). The demo
loads them, generates every shapes prompt ("a red circle", ...) and every tones prompt ("a C4 tone", ...)
with each, judges every image with :func:`mmgen.metrics.judge_shapes` and every clip with
:func:`mmgen.metrics.judge_tones`, and writes into the output folder: one PNG per image and a grid per
image paradigm, one WAV and one spectrogram PNG per clip (under ``tones/``), ``manifest.json`` and ``index.html``.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmgen.data import NUM_CLASSES, NUM_TONE_CLASSES, caption, class_parts, tone_caption, tone_class_parts
from mmgen.files import write_atomically
from mmgen.metrics import judge_shapes, judge_tones
from mmgen.spectral import LOG_FLOOR, mel_spectrogram

__all__ = ["AUDIO_CHECKPOINTS", "AUDIO_DESCRIPTIONS", "AUDIO_PARADIGMS", "DEFAULT_CHECKPOINTS", "PARADIGMS", "run_demo"]

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes32"
PARADIGMS = {"next-token": "NextTokenPipeline", "next-scale": "NextScalePipeline", "next-x": "NextXPipeline"}
AUDIO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "tones"
AUDIO_PARADIGMS = {"next-token-rvq": "NextTokenPipeline", "next-scale": "NextScalePipeline", "next-token-single": "NextTokenPipeline"}
AUDIO_DESCRIPTIONS = {
    "next-token-rvq": "RVQ codec, next-token in the delay pattern over 4 codebooks (MusicGen-style)",
    "next-scale": "multi-scale codec, next-scale over a 13/25/50-token pyramid (VAR-style)",
    "next-token-single": "single-codebook codec, next-token with one token per frame",
}
AUDIO_FOLDER = "tones"  # clips go to tones/<paradigm>/: the audio and image paradigm names overlap (next-scale)
SAMPLING = {"guidance_scale": 3.0, "temperature": 1.0}  # what the shapes32 and tones configs evaluate with
SPECTROGRAM = {"n_fft": 1024, "hop_length": 128, "n_mels": 64}
SPECTROGRAM_RANGE_DB = 80.0  # shown below each clip's peak; quieter is black


def run_demo(*, checkpoints: Path = DEFAULT_CHECKPOINTS, out_dir: Path = Path("mmgen-demo"), samples_per_prompt: int = 1,
             seed: int = 0, overwrite: bool = False, paradigms: list[str] | None = None,
             audio_checkpoints: Path | None = AUDIO_CHECKPOINTS, audio_paradigms: list[str] | None = None) -> dict[str, Any]:
    """Generate every shapes prompt per image paradigm, then every tones prompt per audio paradigm,
    ``samples_per_prompt`` times each; returns the manifest.

    ``audio_checkpoints=None`` leaves audio out. With ``audio_paradigms=None`` the audio paradigms whose
    folder is absent are skipped (the manifest's ``audio.skipped`` says why), since the tones pipelines may
    not be shipped yet; ones named in ``audio_paradigms`` must exist, like the image ones.
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
    audio_chosen, skipped = _audio_plan(audio_checkpoints, audio_paradigms)
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {str(out_dir)!r} is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prompts = [caption(c) for c in range(NUM_CLASSES)]
    manifest: dict[str, Any] = {"sampling": SAMPLING, "seed": seed, "samples": [], "paradigms": {},
                                "audio": {"samples": [], "paradigms": {}, "skipped": skipped}}
    for paradigm in chosen:
        pipe = getattr(pipelines, PARADIGMS[paradigm]).from_pretrained(str(Path(checkpoints) / paradigm))
        pipe.set_progress_bar_config(disable=True)
        manifest["paradigms"][paradigm] = _run_paradigm(pipe, paradigm, prompts, samples_per_prompt, seed, out_dir, manifest)
    tone_prompts = [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
    for paradigm in audio_chosen:
        pipe = getattr(pipelines, AUDIO_PARADIGMS[paradigm]).from_pretrained(str(Path(audio_checkpoints) / paradigm))
        pipe.set_progress_bar_config(disable=True)
        manifest["audio"]["paradigms"][paradigm] = _run_audio_paradigm(pipe, paradigm, tone_prompts, samples_per_prompt,
                                                                       seed, out_dir, manifest["audio"]["samples"])
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out_dir / "index.html").write_text(_html(manifest))
    return manifest


def _audio_plan(audio_checkpoints: Path | None, audio_paradigms: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The audio paradigms to run and the skipped ones with why; checked before anything is generated or deleted."""
    if audio_checkpoints is None:
        if audio_paradigms:
            raise ValueError(f"audio_paradigms={audio_paradigms} needs audio_checkpoints (a folder with their sub-folders), got None")
        return [], {}
    chosen = list(AUDIO_PARADIGMS) if audio_paradigms is None else audio_paradigms
    unknown = [p for p in chosen if p not in AUDIO_PARADIGMS]
    if unknown:
        raise ValueError(f"unknown audio paradigm(s) {unknown}; choose from {list(AUDIO_PARADIGMS)}")
    missing = [p for p in chosen if not (Path(audio_checkpoints) / p / "model_index.json").is_file()]
    if missing and audio_paradigms is not None:
        raise FileNotFoundError(f"no shipped audio pipeline for {missing} in {audio_checkpoints}; pass --audio-checkpoints DIR "
                                f"(a folder with {', '.join(chosen)} sub-folders, e.g. from `mmgen train configs/tones/...`)")
    return [p for p in chosen if p not in missing], {p: f"no pipeline in {Path(audio_checkpoints) / p}" for p in missing}


def _run_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                  manifest: dict[str, Any]) -> dict[str, Any]:
    from .training.evaluation import save_grid

    seeds = [seed + i for i in range(len(prompts) * repeat)]
    start = time.perf_counter()
    out = pipe(prompt=prompts, num_samples_per_prompt=repeat, output_type="pt",
               generator=[torch.Generator().manual_seed(s) for s in seeds], **SAMPLING)
    seconds = time.perf_counter() - start
    images = out.images * 2 - 1
    judged = judge_shapes(images)
    folder = out_dir / paradigm
    folder.mkdir()
    right = 0
    for i, (image, (shape, colour)) in enumerate(zip(images, judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = (shape, colour) == class_parts(class_id)
        right += ok
        name = f"{paradigm}/{i:03d}-{prompt.replace(' ', '-')}-seed{seeds[i]}.png"
        save_grid(image[None], out_dir / name, rows=1)
        manifest["samples"].append({"file": name, "paradigm": paradigm, "prompt": prompt, "class_id": class_id,
                                    "seed": seeds[i], "seconds": seconds / len(seeds),
                                    "judged": {"shape": shape, "colour": colour}, "right": bool(ok)})
    save_grid(images, out_dir / f"grid-{paradigm}.png", rows=len(prompts) // 3)
    return {"pipeline": type(pipe).__name__, "num_samples": len(seeds), "seconds": seconds,
            "seconds_per_sample": seconds / len(seeds), "prompt_adherence": right / len(seeds)}


def _run_audio_paradigm(pipe: Any, paradigm: str, prompts: list[str], repeat: int, seed: int, out_dir: Path,
                        samples: list[dict[str, Any]]) -> dict[str, Any]:
    import soundfile

    seeds = [seed + i for i in range(len(prompts) * repeat)]
    start = time.perf_counter()
    out = pipe(prompt=prompts, num_samples_per_prompt=repeat, output_type="pt",
               generator=[torch.Generator().manual_seed(s) for s in seeds], **SAMPLING)
    seconds = time.perf_counter() - start
    audio_B1T, rate = out.audios[:, None], out.sample_rate
    judged = judge_tones(audio_B1T, sample_rate=rate)
    pictures = _spectrograms(audio_B1T, sample_rate=rate)
    (out_dir / AUDIO_FOLDER / paradigm).mkdir(parents=True)
    right = 0
    for i, (clip, picture, (kind, root)) in enumerate(zip(out.audios.numpy(), pictures, judged)):
        class_id, prompt = i // repeat, prompts[i // repeat]
        ok = (kind, root) == tone_class_parts(class_id)
        right += ok
        stem = f"{AUDIO_FOLDER}/{paradigm}/{i:03d}-{prompt.replace(' ', '-')}-seed{seeds[i]}"
        write_atomically(out_dir / f"{stem}.wav", lambda tmp, clip=clip: soundfile.write(str(tmp), clip, rate, subtype="PCM_16",
                                                                                          format="WAV"))
        write_atomically(out_dir / f"{stem}.png", lambda tmp, picture=picture: Image.fromarray(picture).save(tmp, format="PNG"))
        samples.append({"file": f"{stem}.wav", "spectrogram": f"{stem}.png", "paradigm": paradigm, "prompt": prompt,
                        "class_id": class_id, "seed": seeds[i], "seconds": seconds / len(seeds),
                        "judged": {"kind": kind, "root": root}, "right": bool(ok)})
    return {"pipeline": type(pipe).__name__, "description": AUDIO_DESCRIPTIONS[paradigm], "sample_rate": rate,
            "num_samples": len(seeds), "seconds": seconds, "seconds_per_sample": seconds / len(seeds),
            "prompt_adherence": right / len(seeds)}


def _spectrograms(audio_B1T: torch.Tensor, *, sample_rate: int) -> np.ndarray:
    """Log-mel pictures ``[B, n_mels, frames]`` as uint8 grey, low frequencies at the bottom.

    Each clip is shown over the ``SPECTROGRAM_RANGE_DB`` below its own peak, so quiet clips stay readable;
    a silent clip is black.
    """
    db = 20 * torch.log10(mel_spectrogram(audio_B1T, sample_rate=sample_rate, **SPECTROGRAM).clamp_min(LOG_FLOOR))
    low = (db.amax(dim=(1, 2), keepdim=True) - SPECTROGRAM_RANGE_DB).clamp_min(20 * math.log10(LOG_FLOOR))
    grey = ((db - low) / SPECTROGRAM_RANGE_DB).clamp(0, 1) * 255
    return grey.round().to(torch.uint8).flip(1).numpy()


def _html(manifest: dict[str, Any]) -> str:
    rows = []
    for paradigm, info in manifest["paradigms"].items():
        cells = "".join(
            f'<figure class="{"ok" if s["right"] else "miss"}"><img src="{html.escape(s["file"])}" alt="{html.escape(s["prompt"])}">'
            f"<figcaption>{html.escape(s['prompt'])}</figcaption></figure>"
            for s in manifest["samples"] if s["paradigm"] == paradigm
        )
        rows.append(f"<h2>{paradigm} ({info['pipeline']})</h2><p>prompt adherence {info['prompt_adherence']:.0%} "
                    f"over {info['num_samples']} samples (judged on pixels by mmgen.metrics.judge_shapes); "
                    f"{info['seconds_per_sample'] * 1000:.0f} ms per sample</p><div class=grid>{cells}</div>")
    style = ("body{font-family:sans-serif;background:#111;color:#eee} .grid{display:flex;flex-wrap:wrap;gap:6px}"
             " figure{margin:0;width:100px;text-align:center;font-size:11px} img{width:96px;height:96px;"
             "image-rendering:pixelated;border:2px solid #2a2} .miss img{border-color:#a22}"
             " figure.clip{width:164px} .clip img{width:160px;height:64px} .clip audio{width:160px;height:28px}")
    return (f"<!doctype html><meta charset=utf-8><title>mmgen demo</title><style>{style}</style>"
            f"<h1>mmgen demo: shapes and tones prompts, one shipped pipeline per paradigm</h1><p>Green border: the judge reads "
            f"the prompt's shape and colour (images) or kind and root note (audio); red: it does not. Sampling: "
            f"{html.escape(json.dumps(manifest['sampling']))}, seed {manifest['seed']}.</p>"
            + "".join(rows) + _audio_html(manifest["audio"]))


def _audio_html(audio: dict[str, Any]) -> str:
    """The tones section: per paradigm its description and adherence, per clip its spectrogram and a player."""
    if not audio["paradigms"] and not audio["skipped"]:
        return ""
    rows = []
    for paradigm, info in audio["paradigms"].items():
        cells = "".join(
            f'<figure class="clip {"ok" if s["right"] else "miss"}" title="seed {s["seed"]}, generated in '
            f'{s["seconds"] * 1000:.0f} ms"><img src="{html.escape(s["spectrogram"])}" alt="spectrogram of {html.escape(s["prompt"])}">'
            f'<audio controls preload=none src="{html.escape(s["file"])}"></audio><figcaption>{html.escape(s["prompt"])}</figcaption></figure>'
            for s in audio["samples"] if s["paradigm"] == paradigm
        )
        rows.append(f"<h3>{paradigm} ({info['pipeline']})</h3><p>{html.escape(info['description'])}. Prompt adherence "
                    f"{info['prompt_adherence']:.0%} over {info['num_samples']} clips (judged on the spectrum by "
                    f"mmgen.metrics.judge_tones); {info['seconds_per_sample'] * 1000:.0f} ms per clip</p><div class=grid>{cells}</div>")
    skipped = "".join(f"<p>{html.escape(p)}: skipped, {html.escape(why)}.</p>" for p, why in audio["skipped"].items())
    return ("<h2>Audio: tones prompts</h2><p>Each clip's log-mel spectrogram (low frequencies at the bottom, "
            f"{SPECTROGRAM_RANGE_DB:.0f} dB below its peak) above a player; hover for its seed and generation time.</p>"
            + "".join(rows) + skipped)
