"""Build what a run trains from its config: a tokenizer from a preset, or a pipeline around a trained tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mmgen.data import NUM_CLASSES, caption
from mmgen.gpt import GPT, GPTConfig
from mmgen.hub import config_from_dict

from .config import TrainConfig

__all__ = ["build_tokenizer", "load_tokenizer", "build_pipeline", "gpt_fields_for"]

TEXT_MAX_LEN = 24  # bytes; the longest shapes caption, "a magenta triangle", has 18


def build_tokenizer(preset: dict[str, Any], *, source: str = "tokenizer") -> torch.nn.Module:
    """A fresh tokenizer from a preset mapping: ``class`` (a ``tokenizers_visual`` class) plus its config fields."""
    import tokenizers_visual

    values = dict(preset)
    name = values.pop("class", None)
    cls = getattr(tokenizers_visual, str(name), None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ValueError(f"{source}: class {name!r} is not a tokenizer exported by tokenizers_visual ({tokenizers_visual.__all__})")
    return cls(config_from_dict(cls.config_class, values, source=source))


def load_tokenizer(folder: str | Path) -> torch.nn.Module:
    """A trained tokenizer from its ``save_pretrained`` folder; the class comes from its config.json."""
    import tokenizers_visual

    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"tokenizer: {folder} is not a saved tokenizer (no config.json); train one with `mmgen train`")
    name = json.loads(config_file.read_text()).get("_class_name")
    cls = getattr(tokenizers_visual, str(name), None)
    if cls is None:
        raise ValueError(f"tokenizer: {folder} holds a {name!r}, not a tokenizers_visual tokenizer")
    return cls.from_pretrained(str(folder))


def gpt_fields_for(pipeline: str, tokenizer: torch.nn.Module, pipeline_args: dict[str, Any]) -> dict[str, Any]:
    """GPT config fields a paradigm fixes from its tokenizer: vocabulary, coordinate rank, continuous input size."""
    from tokenizers_visual import FlexImageTokenizer, KLImageTokenizer

    if pipeline == "NextTokenPipeline":
        return {"vocab_size": tokenizer.codebook_size, "coord_rank": 1 if isinstance(tokenizer, FlexImageTokenizer) else 2}
    if pipeline == "NextScalePipeline":
        return {"vocab_size": tokenizer.codebook_size, "coord_rank": 3, "input_dim": tokenizer.cfg.codebook_dim}
    rank = 3 if pipeline_args.get("entity") == "scale" else 2
    if isinstance(tokenizer, KLImageTokenizer):
        return {"vocab_size": 1, "coord_rank": rank, "input_dim": tokenizer.latent_dim}
    return {"vocab_size": tokenizer.codebook_size, "coord_rank": rank}


def build_pipeline(cfg: TrainConfig) -> Any:
    """A fresh generator pipeline: the trained tokenizer (frozen), a new GPT, and a flow head where the paradigm needs one."""
    import pipelines

    tokenizer = load_tokenizer(cfg.tokenizer).eval().requires_grad_(False)
    fields = dict(cfg.gpt)
    derived = gpt_fields_for(cfg.pipeline, tokenizer, cfg.pipeline_args)
    clash = sorted(k for k in derived if k in fields and fields[k] != derived[k])
    if clash:
        raise ValueError(f"gpt: {clash} are fixed by the tokenizer and pipeline ({ {k: derived[k] for k in clash} }); remove them")
    fields.update(derived, start_token=True)
    body_len = _body_length(cfg.pipeline, tokenizer, cfg.pipeline_args)
    if cfg.condition == "class":
        fields.setdefault("num_classes", NUM_CLASSES)
        prefix = 1
    else:
        fields.setdefault("text_max_len", TEXT_MAX_LEN)
        prefix = fields["text_max_len"]
    fields.setdefault("max_seq_len", prefix + body_len)
    gpt = GPT(config_from_dict(GPTConfig, fields, source="gpt"))
    cls = getattr(pipelines, cfg.pipeline)
    kwargs: dict[str, Any] = {"gpt": gpt, "tokenizer": tokenizer, **cfg.pipeline_args}
    if cfg.condition == "class" and cfg.data.dataset == "shapes":
        kwargs["class_names"] = [caption(c) for c in range(NUM_CLASSES)]
    if cfg.head is not None:
        from mmgen.flow_head import FlowHead, FlowHeadConfig

        head_fields = {"latent_dim": tokenizer.latent_dim, "cond_dim": gpt.cfg.dim, **cfg.head}
        kwargs["head"] = FlowHead(config_from_dict(FlowHeadConfig, head_fields, source="head"))
    return cls(**kwargs)


def _body_length(pipeline: str, tokenizer: torch.nn.Module, pipeline_args: dict[str, Any]) -> int:
    if pipeline == "NextScalePipeline":
        return tokenizer.num_tokens
    if hasattr(tokenizer, "max_tokens"):
        return tokenizer.max_tokens
    h, w = tokenizer.grid_shape()
    if pipeline_args.get("entity") == "scale":
        from pipelines.next_x import default_patch_nums

        patch_nums = pipeline_args.get("patch_nums") or default_patch_nums(h)  # what NextXPipeline itself uses
        return sum(pn * pn for pn in patch_nums)
    return h * w
