"""Evaluations a run reports: reconstruction for tokenizers, prompt adherence for generators."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from mmgen.data import PhotoCrops, ShapesDataset
from mmgen.metrics import codebook_usage, prompt_adherence, psnr, ssim
from mmgen.sampling import GuidanceSchedule

from .config import TrainConfig

__all__ = ["evaluate_tokenizer", "evaluate_generator", "reconstruction_metrics", "save_grid"]


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


def evaluate_tokenizer(tok: torch.nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Reconstruction on held-out shapes and on crops of scikit-image's photos."""
    n, size = cfg.eval.num_images, cfg.data.image_size
    heldout = ShapesDataset(size=size, length=n, split="heldout", seed=cfg.seed).batch(range(n))
    device = next(tok.parameters()).device
    photos = PhotoCrops(size=size, num_crops=max(2, n // 4), seed=cfg.seed).images_NCHW
    return {
        "shapes_heldout": reconstruction_metrics(tok, heldout["image"].to(device), class_ids=heldout["class_id"]),
        "photo_crops": reconstruction_metrics(tok, photos.to(device)),
    }


def evaluate_generator(pipe: Any, cfg: TrainConfig, *, out_dir: Path | None = None) -> dict[str, Any]:
    """Prompt adherence over ``samples_per_class`` samples of each shapes class; a grid PNG in ``out_dir``."""
    from pipelines.evaluate import shapes_adherence

    ev = cfg.eval
    kwargs: dict[str, Any] = {"guidance_scale": GuidanceSchedule(scale=ev.guidance_scale, kind=ev.guidance_kind),
                              "temperature": ev.temperature, "top_k": ev.top_k, "top_p": ev.top_p, "min_p": ev.min_p}
    if ev.num_flow_steps is not None:
        kwargs["num_flow_steps"] = ev.num_flow_steps
    if cfg.data.dataset != "shapes":
        return {}
    result = shapes_adherence(pipe, samples_per_class=ev.samples_per_class, batch_size=ev.batch_size, seed=cfg.seed, **kwargs)
    images = result.pop("images")
    if out_dir is not None:
        save_grid(images, Path(out_dir) / "samples.png", rows=21)
    return result


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
