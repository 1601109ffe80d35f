"""Training data: image, audio, video and 3D shape sources behind one ``batch(indices)`` interface, and pre-extracted token shards.

A source's ``modality`` ("image", "audio", "video", "shape") names the key its batches hold the samples under; labelled
built-in sets (shapes, tones, moving shapes, primitives) also give their class count and captions (:func:`class_captions`).

Every step's batch is a pure function of ``(seed, step)`` (:func:`batch_indices`), so a resumed run sees
exactly the data an uninterrupted one would, and each process of a multi-process run takes its own
slice of the same global batch. :class:`StepBatches` makes "the batch of step i" a dataset item, so worker
processes can prepare the batches ahead without changing which data a step sees; :func:`step_seed` gives
the seeds of everything else random in a step.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from mmgen.data import (
    NUM_CLASSES,
    NUM_SHAPE3D_CLASSES,
    NUM_TONE_CLASSES,
    NUM_VIDEO_CLASSES,
    AudioFolder,
    ImageFolder,
    MeshFolder,
    MovingShapesDataset,
    PrimitivesDataset,
    ShapesDataset,
    TonesDataset,
    VideoFolder,
    caption,
    shape3d_caption,
    tone_caption,
    video_caption,
)
from mmgen.files import write_atomically

from .config import DataConfig

__all__ = ["build_source", "class_captions", "batch_indices", "length_grouped_indices", "step_seed", "TokenSource", "StepBatches", "step_batches", "HFImageSource",
           "save_token_shards", "load_token_shards"]

SHARD_INDEX = "tokens.json"


class HFImageSource:
    """A local Hugging Face ``datasets`` folder (``save_to_disk`` or files ``load_dataset`` reads), resized to ``size``."""

    modality = "image"

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


def build_source(cfg: DataConfig) -> Any:
    """The dataset a :class:`DataConfig` names, with ``modality``, ``len`` and ``batch(indices)``."""
    if cfg.class_mix is not None and cfg.dataset != "primitives":
        raise ValueError(f"data.class_mix applies to the built-in primitives only, not to data.dataset: {cfg.dataset}")
    if cfg.dataset == "shapes":
        return ShapesDataset(size=cfg.image_size, length=cfg.num_items, split="train", seed=cfg.seed)
    if cfg.dataset == "tones":
        return TonesDataset(length=cfg.num_items, split="train", seed=cfg.seed, sample_rate=cfg.sample_rate, seconds=cfg.clip_seconds,
                            detune=cfg.detune)
    if cfg.detune:
        raise ValueError(f"data.detune applies to the built-in tones only, not to data.dataset: {cfg.dataset}")
    if cfg.dataset == "moving_shapes":
        return MovingShapesDataset(size=cfg.image_size, num_frames=cfg.num_frames, length=cfg.num_items, split="train", seed=cfg.seed)
    if cfg.dataset == "primitives":
        return PrimitivesDataset(split="train", size=cfg.num_items, resolution=cfg.resolution, seed=cfg.seed,
                                 class_mix=cfg.class_mix)
    if cfg.path is None:
        raise ValueError(f"data.path is required for data.dataset: {cfg.dataset}")
    if cfg.dataset == "folder":
        return ImageFolder(cfg.path, size=cfg.image_size)
    if cfg.dataset == "mesh_folder":
        return MeshFolder(cfg.path, resolution=cfg.resolution)
    if cfg.dataset == "video_folder":
        return VideoFolder(cfg.path, size=cfg.image_size, num_frames=cfg.num_frames)
    if cfg.dataset == "audio_folder":
        return AudioFolder(cfg.path, sample_rate=cfg.sample_rate, seconds=cfg.clip_seconds)
    return HFImageSource(cfg.path, size=cfg.image_size, image_column=cfg.image_column, label_column=cfg.label_column)


def class_captions(dataset: str) -> list[str] | None:
    """The captions of a labelled built-in set's classes, in class-id order (None for unlabelled data)."""
    if dataset == "shapes":
        return [caption(c) for c in range(NUM_CLASSES)]
    if dataset == "tones":
        return [tone_caption(c) for c in range(NUM_TONE_CLASSES)]
    if dataset == "moving_shapes":
        return [video_caption(c) for c in range(NUM_VIDEO_CLASSES)]
    if dataset == "primitives":
        return [shape3d_caption(c) for c in range(NUM_SHAPE3D_CLASSES)]
    return None


def batch_indices(*, seed: int, step: int, batch_size: int, num_items: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Indices of ``step``'s global batch (sampled without replacement within a step), this rank's share."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch_size <= num_items:
        chosen = torch.randperm(num_items, generator=generator)[:batch_size]
    else:
        chosen = torch.randint(0, num_items, (batch_size,), generator=generator)
    return chosen[rank::world_size]


def length_grouped_indices(*, seed: int, step: int, batch_size: int, lengths: torch.Tensor, pool: int, rank: int = 0,
                           world_size: int = 1) -> torch.Tensor:
    """Like :func:`batch_indices`, for sequences of their own lengths (octrees): ``pool`` batches' worth of random items
    sorted by length, of which one batch (a random one) is kept, so a step pads its rows to a length near their own."""
    candidates = batch_indices(seed=seed, step=step, batch_size=pool * batch_size, num_items=lengths.shape[0])
    ordered = candidates[torch.argsort(lengths[candidates], stable=True)]
    chunks = ordered.split(batch_size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 1)
    chosen = chunks[int(torch.randint(0, len(chunks), (1,), generator=generator))]
    return chosen[rank::world_size]


def step_seed(seed: int, step: int, rank: int = 0, *, stream: str = "") -> int:
    """A 63-bit seed for the random draws of ``step`` on process ``rank`` (``stream`` separates independent uses).

    Hashing keeps the streams of neighbouring steps, ranks and seeds unrelated, and makes a step's randomness
    independent of what ran before it: a resumed run draws exactly what the uninterrupted one drew.
    """
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class TokenSource:
    """Pre-extracted tokens and their class labels in memory, behind the ``batch(indices)`` of the image sources.

    ``lengths`` (optional, ``[N]``): each sequence's own length where they differ (octrees), for length grouping.
    """

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        if tokens.shape[0] != labels.shape[0]:
            raise ValueError(f"tokens hold {tokens.shape[0]} items but labels {labels.shape[0]}")
        self.tokens, self.labels, self.lengths = tokens, labels, lengths

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"tokens": self.tokens[idx], "class_id": self.labels[idx]}


class StepBatches(Dataset):
    """Item ``step`` is this process's share of ``step``'s global batch: the ``fields`` of ``source.batch``, in order.

    Indexed by step rather than by sample, so a loader over ``range(start, stop)`` yields exactly the batches
    of those steps whatever the number of workers, and a run resumed at ``start`` sees the data it would have.
    """

    def __init__(self, source: Any, *, fields: Sequence[str], seed: int, batch_size: int, num_steps: int,
                 rank: int = 0, world_size: int = 1, group_by_length: int = 0) -> None:
        if len(source) == 0:
            raise ValueError("the training data is empty")
        if group_by_length > 1 and getattr(source, "lengths", None) is None:
            raise ValueError("data.group_by_length groups sequences of their own lengths (octrees); this pipeline's "
                             "sequences all have one length, so leave it at 0")
        self.source, self.fields = source, tuple(fields)
        self.seed, self.batch_size, self.num_steps = seed, batch_size, num_steps
        self.rank, self.world_size, self.group_by_length = rank, world_size, group_by_length

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> tuple[Any, ...]:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} is outside [0, {self.num_steps})")
        if self.group_by_length > 1:
            idx = length_grouped_indices(seed=self.seed, step=step, batch_size=self.batch_size, lengths=self.source.lengths,
                                         pool=self.group_by_length, rank=self.rank, world_size=self.world_size)
        else:
            idx = batch_indices(seed=self.seed, step=step, batch_size=self.batch_size, num_items=len(self.source),
                                rank=self.rank, world_size=self.world_size)
        batch = self.source.batch(idx.tolist())
        return tuple(batch[name] for name in self.fields)


def step_batches(batches: StepBatches, *, start: int, num_workers: int = 0, pin_memory: bool = False) -> Iterable[tuple[Any, ...]]:
    """The batches of steps ``start, start + 1, ...`` in order: built here, or ahead of time by ``num_workers`` processes."""
    steps = range(start, len(batches))
    if num_workers == 0:
        return (batches[step] for step in steps)
    return DataLoader(batches, batch_size=None, sampler=steps, num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=_ignore_stop_signals)


def _ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: workers keep preparing batches while the trainer saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
        shard = {"tokens": tokens[start:start + shard_size].contiguous(), "labels": labels[start:start + shard_size].contiguous()}
        write_atomically(path, lambda tmp, shard=shard: save_file(shard, str(tmp)))
        paths.append(path)
    index = {**meta, "shards": [p.name for p in paths], "num_items": int(tokens.shape[0])}  # the shards written here win
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
