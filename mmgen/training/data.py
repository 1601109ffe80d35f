"""Training data: image sources behind one ``batch(indices)`` interface, and pre-extracted token shards.

Every step's batch is a pure function of ``(seed, step)`` (:func:`batch_indices`), so a resumed run sees
exactly the data an uninterrupted one would, and each process of a multi-process run takes its own
slice of the same global batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmgen.data import ImageFolder, ShapesDataset

from .config import DataConfig

__all__ = ["build_image_source", "batch_indices", "HFImageSource", "save_token_shards", "load_token_shards"]

SHARD_INDEX = "tokens.json"


class HFImageSource:
    """A local Hugging Face ``datasets`` folder (``save_to_disk`` or files ``load_dataset`` reads), resized to ``size``."""

    def __init__(self, path: str, *, size: int, image_column: str, label_column: str | None) -> None:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("data.dataset: hf needs the `datasets` package (pip install datasets)") from err
        folder = Path(path)
        if not folder.exists():
            raise FileNotFoundError(f"data.path {path!r} does not exist")
        if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
            self.dataset = datasets.load_from_disk(str(folder))
        else:
            self.dataset = datasets.load_dataset(str(folder), split="train")
        if image_column not in self.dataset.column_names:
            raise ValueError(f"data.image_column {image_column!r} is not a column of {path}: {self.dataset.column_names}")
        self.size, self.image_column, self.label_column = size, image_column, label_column

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        import numpy as np

        rows = self.dataset[list(indices)]
        images = []
        for image in rows[self.image_column]:
            image = image.convert("RGB").resize((self.size, self.size))
            images.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
        labels = rows[self.label_column] if self.label_column else [-1] * len(images)
        return {"image": torch.stack(images), "class_id": torch.as_tensor(labels, dtype=torch.long), "caption": [""] * len(images)}


def build_image_source(cfg: DataConfig) -> Any:
    """The dataset a :class:`DataConfig` names, with ``len`` and ``batch(indices)``."""
    if cfg.dataset == "shapes":
        return ShapesDataset(size=cfg.image_size, length=cfg.num_images, split="train", seed=cfg.seed)
    if cfg.path is None:
        raise ValueError(f"data.path is required for data.dataset: {cfg.dataset}")
    if cfg.dataset == "folder":
        return ImageFolder(cfg.path, size=cfg.image_size)
    return HFImageSource(cfg.path, size=cfg.image_size, image_column=cfg.image_column, label_column=cfg.label_column)


def batch_indices(*, seed: int, step: int, batch_size: int, num_items: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Indices of ``step``'s global batch (sampled without replacement within a step), this rank's share."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch_size <= num_items:
        chosen = torch.randperm(num_items, generator=generator)[:batch_size]
    else:
        chosen = torch.randint(0, num_items, (batch_size,), generator=generator)
    return chosen[rank::world_size]


def save_token_shards(folder: str | Path, tokens: torch.Tensor, labels: torch.Tensor, *, shard_size: int,
                      meta: dict[str, Any]) -> list[Path]:
    """Write ``tokens`` / ``labels`` as safetensors shards plus an index; refuses a non-empty folder."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"token folder {str(folder)!r} is not empty; choose a new one or delete it first")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, tokens.shape[0], shard_size)):
        path = folder / f"shard-{number:05d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({"tokens": tokens[start:start + shard_size].contiguous(), "labels": labels[start:start + shard_size].contiguous()}, str(tmp))
        tmp.replace(path)
        paths.append(path)
    index = {"shards": [p.name for p in paths], "num_items": int(tokens.shape[0]), **meta}
    (folder / SHARD_INDEX).write_text(json.dumps(index, indent=2))
    return paths


def load_token_shards(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read what :func:`save_token_shards` wrote: ``(tokens, labels, meta)``."""
    folder = Path(folder)
    index_file = folder / SHARD_INDEX
    if not index_file.is_file():
        raise ValueError(f"{folder} holds no token shards: expected {SHARD_INDEX} (written by `mmgen tokenize`)")
    index = json.loads(index_file.read_text())
    shards = [load_file(str(folder / name)) for name in index["shards"]]
    tokens = torch.cat([s["tokens"] for s in shards])
    labels = torch.cat([s["labels"] for s in shards])
    if tokens.shape[0] != index["num_items"]:
        raise ValueError(f"{folder}: the index promises {index['num_items']} items, the shards hold {tokens.shape[0]}")
    return tokens, labels, index
