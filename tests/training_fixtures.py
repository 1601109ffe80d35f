"""Run configs and run-folder readers shared by the trainer tests (tiny models: 16 px shapes, one-layer GPT)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VQ_FIELDS = {"image_size": 16, "downsample": 4, "channels": 8, "channel_mult": [1, 1, 1], "z_channels": 8,
             "codebook_size": 32, "codebook_dim": 4}



def generator_config(tokenizer: Path, output_dir: Path, **changes: object) -> dict:
    values = {
        "kind": "generator", "pipeline": "NextTokenPipeline", "tokenizer": str(tokenizer),
        "gpt": {"dim": 32, "n_layers": 1, "n_heads": 2}, "cond_drop_prob": 0.5,
        "data": {"dataset": "shapes", "num_items": 64, "image_size": 16},
        "optim": {"steps": 8, "batch_size": 8, "lr": "1e-3", "warmup_steps": 2, "ema_decay": 0.9},
        "eval": {"samples_per_class": 1, "every": 4},
        "checkpoint": {"every": 3, "keep": 2},
        "log_every": 1, "threads": 1, "output_dir": str(output_dir),
    }
    return _merge(values, changes)


def tokenizer_config(output_dir: Path, **changes: object) -> dict:
    values = {
        "kind": "tokenizer", "tokenizer": {"class": "VQImageTokenizer", **VQ_FIELDS, "dead_code_steps": 1},
        "data": {"dataset": "shapes", "num_items": 64, "image_size": 16},
        "optim": {"steps": 7, "batch_size": 8, "lr": 2e-3, "grad_accum_steps": 2},
        "eval": {"num_items": 8},
        "checkpoint": {"every": 2, "keep": 2},
        "log_every": 1, "threads": 1, "output_dir": str(output_dir),
    }
    return _merge(values, changes)


def _merge(values: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def records(output_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (output_dir / name).read_text().splitlines()]


def losses(output_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(output_dir)}


def report(output_dir: Path) -> dict:
    return json.loads((output_dir / "eval.json").read_text())


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()
