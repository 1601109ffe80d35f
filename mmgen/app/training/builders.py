"""Build what a run config trains: a tokenizer from a preset, or a pipeline around a trained tokenizer.

Nothing here names a concrete tokenizer: a tokenizer class is found by the name its preset or saved
config gives, among the tokenizer packages; :meth:`~pipelines.ARPipeline.from_tokenizer` derives the
GPT's vocabulary, coordinates and inputs and the head from the paradigm's plan over the tokenizer, and
the conditioner comes from ``condition`` / ``conditioner``.
"""

from __future__ import annotations

import json
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from mmgen.conditioning import (
    ByteTextConditioner,
    ClassConditioner,
    Conditioner,
    TextEncoderConditioner,
)
from mmgen.gpt import GPTConfig
from mmgen.hub import config_from_dict
from mmgen.text_encoders import write_word_level_bert

from .config import TrainConfig
from .data import class_captions

__all__ = ["build_tokenizer", "load_tokenizer", "build_pipeline", "build_conditioner", "tokenizer_class"]

TOKENIZER_PACKAGES = ("tokenizers_visual", "tokenizers_audio")
TEXT_MAX_LEN = 24  # bytes; the longest built-in captions: "a magenta triangle" 18, "a falling chirp from C4" 23


def tokenizer_class(name: object, *, source: str) -> type:
    """The tokenizer class called ``name`` in one of the tokenizer packages."""
    exported = []
    for package in TOKENIZER_PACKAGES:
        module = import_module(package)
        exported += list(getattr(module, "__all__", ()))
        cls = getattr(module, str(name), None) if str(name) in getattr(module, "__all__", ()) else None
        if cls is not None and hasattr(cls, "config_class"):
            return cls
    raise ValueError(f"{source}: class {name!r} is not a tokenizer exported by {TOKENIZER_PACKAGES} ({sorted(exported)})")


def build_tokenizer(preset: dict[str, Any], *, source: str = "tokenizer") -> torch.nn.Module:
    """A fresh tokenizer from a preset mapping: ``class`` (a tokenizer class name) plus its config fields."""
    values = dict(preset)
    cls = tokenizer_class(values.pop("class", None), source=source)
    return cls(config_from_dict(cls.config_class, values, source=source))


def load_tokenizer(folder: str | Path) -> torch.nn.Module:
    """A trained tokenizer from its ``save_pretrained`` folder; the class comes from its config.json."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"tokenizer: {folder} is not a saved tokenizer (no config.json); train one with `mmgen train`")
    name = json.loads(config_file.read_text()).get("_class_name")
    return tokenizer_class(name, source=f"tokenizer: {folder}").from_pretrained(str(folder))


def build_conditioner(cfg: TrainConfig, *, dim: int) -> Conditioner:
    """The conditioner a run asks for: ``condition`` (class / text / text_encoder) with the ``conditioner`` fields."""
    fields = dict(cfg.conditioner)
    if cfg.condition == "class":
        captions = class_captions(cfg.data.dataset)
        if captions is not None:
            fields.setdefault("num_classes", len(captions))
        elif "num_classes" not in fields:
            raise ValueError(f"conditioner.num_classes: data.dataset {cfg.data.dataset!r} has no built-in classes, "
                             "so a class-conditional run must say how many classes its labels hold")
        return ClassConditioner(config_from_dict(ClassConditioner.config_class, {"dim": dim, **fields}, source="conditioner"))
    fields.setdefault("max_len", TEXT_MAX_LEN)
    if cfg.condition == "text":
        return ByteTextConditioner(config_from_dict(ByteTextConditioner.config_class, {"dim": dim, **fields}, source="conditioner"))
    encoder = fields.pop("encoder", None)
    if isinstance(encoder, dict):  # a small random encoder over the captions' words, built here (nothing downloads)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        with tempfile.TemporaryDirectory() as folder:
            write_word_level_bert(folder, **encoder)
            return TextEncoderConditioner.from_encoder(folder, dim=dim, local_files_only=True, **fields)
    if not isinstance(encoder, str):
        raise ValueError("conditioner.encoder: condition 'text_encoder' needs the folder or hub id of a transformers text encoder, "
                         "or a mapping of write_word_level_bert's arguments (e.g. {hidden_size: 64}) to build a small one")
    return TextEncoderConditioner.from_encoder(encoder, dim=dim, **fields)


def build_pipeline(cfg: TrainConfig) -> Any:
    """A fresh generator pipeline: the trained tokenizer (frozen), a new conditioner, GPT and head."""
    import pipelines

    if isinstance(cfg.tokenizer, dict):
        tokenizer = build_tokenizer(cfg.tokenizer)
        if tokenizer.has_weights:
            raise ValueError(f"tokenizer: {type(tokenizer).__name__} has weights to learn; train it first (kind: tokenizer) "
                             "and name its folder here")
    else:
        tokenizer = load_tokenizer(cfg.tokenizer)
    tokenizer = tokenizer.eval().requires_grad_(False)
    conditioner = build_conditioner(cfg, dim=cfg.gpt.get("dim", GPTConfig.dim))
    options = dict(cfg.pipeline_args)
    captions = class_captions(cfg.data.dataset)
    if cfg.condition == "class" and captions is not None:
        options["class_names"] = captions
    return getattr(pipelines, cfg.pipeline).from_tokenizer(tokenizer, conditioner=conditioner, gpt=cfg.gpt, head=cfg.head, **options)
