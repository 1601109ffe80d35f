"""``mmgen demo``: generate the shapes prompts with every paradigm's shipped checkpoint and write a report.

The repository ships one tiny pipeline per paradigm in ``checkpoints/shapes32`` (each reproducible by
one ``mmgen train configs/shapes32/...`` command). The demo loads them, generates every shapes prompt
("a red circle", ...) with each, judges every image with :func:`mmgen.metrics.judge_shapes`, and writes
into the output folder: one PNG per sample, a grid per paradigm, ``manifest.json`` and ``index.html``.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from mmgen.data import NUM_CLASSES, caption, class_parts
from mmgen.metrics import judge_shapes

__all__ = ["DEFAULT_CHECKPOINTS", "PARADIGMS", "run_demo"]

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes32"
PARADIGMS = {"next-token": "NextTokenPipeline", "next-scale": "NextScalePipeline", "next-x": "NextXPipeline"}
SAMPLING = {"guidance_scale": 3.0, "temperature": 1.0}


def run_demo(*, checkpoints: Path = DEFAULT_CHECKPOINTS, out_dir: Path = Path("mmgen-demo"), samples_per_prompt: int = 1,
             seed: int = 0, overwrite: bool = False, paradigms: list[str] | None = None) -> dict[str, Any]:
    """Generate every shapes prompt ``samples_per_prompt`` times per paradigm; returns the manifest."""
    import pipelines

    chosen = list(PARADIGMS) if paradigms is None else paradigms
    unknown = [p for p in chosen if p not in PARADIGMS]
    if unknown:
        raise ValueError(f"unknown paradigm(s) {unknown}; choose from {list(PARADIGMS)}")
    missing = [p for p in chosen if not (Path(checkpoints) / p / "model_index.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no shipped pipeline for {missing} in {checkpoints}; pass --checkpoints DIR "
                                f"(a folder with {', '.join(chosen)} sub-folders, e.g. from `mmgen train configs/shapes32/...`)")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {str(out_dir)!r} is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    prompts = [caption(c) for c in range(NUM_CLASSES)]
    manifest: dict[str, Any] = {"sampling": SAMPLING, "seed": seed, "samples": [], "paradigms": {}}
    for paradigm in chosen:
        pipe = getattr(pipelines, PARADIGMS[paradigm]).from_pretrained(str(Path(checkpoints) / paradigm))
        pipe.set_progress_bar_config(disable=True)
        manifest["paradigms"][paradigm] = _run_paradigm(pipe, paradigm, prompts, samples_per_prompt, seed, out_dir, manifest)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out_dir / "index.html").write_text(_html(manifest))
    return manifest


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
             "image-rendering:pixelated;border:2px solid #2a2} .miss img{border-color:#a22}")
    return (f"<!doctype html><meta charset=utf-8><title>mmgen demo</title><style>{style}</style>"
            f"<h1>mmgen demo: shapes prompts, three paradigms</h1><p>Green border: the judge reads the prompt's shape "
            f"and colour; red: it does not. Sampling: {html.escape(json.dumps(manifest['sampling']))}, seed {manifest['seed']}.</p>"
            + "".join(rows))
