"""``mmgen upgrade OLD NEW``: convert a pipeline folder saved before the engine refactor (mmgen 0.1.0.dev0, November 2026).

Those folders kept the class / byte-text embeddings and the categorical output layers inside the GPT
(``gpt.class_embedding``, ``gpt.text_embedding``, ``gpt.heads.{d}``) and, for continuous next-X
models, a dummy one-id vocabulary. The converted folder has the same weights in the components that
own them now — ``conditioner`` (:class:`~mmgen.conditioning.ClassConditioner` or
:class:`~mmgen.conditioning.ByteTextConditioner`) and ``head`` (:class:`~mmgen.heads.CategoricalHead`,
or the unchanged flow head) — so a class-conditional model generates exactly what it generated before.
A converted byte-text model masks its prompt padding, which the old GPT attended to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mmgen.conditioning import ByteTextConditioner, ByteTextConditionerConfig, ClassConditioner, ClassConditionerConfig
from mmgen.gpt import GPT, GPTConfig
from mmgen.heads import CategoricalHead, CategoricalHeadConfig, FlowHead
from mmgen.hub import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["upgrade_pipeline", "is_old_pipeline"]

OLD_GPT_KEYS = ("num_classes", "text_max_len", "tie_embeddings")
COPIED_FILES = ("README.md", "train_report.json")


def is_old_pipeline(folder: Path) -> bool:
    index = folder / "model_index.json"
    return index.is_file() and "conditioner" not in json.loads(index.read_text())


def upgrade_pipeline(old: str | Path, new: str | Path, *, overwrite: bool = False) -> Path:
    """Write the converted pipeline of folder ``old`` to folder ``new``; returns ``new``.

    ``new`` must not exist unless ``overwrite`` (then it is replaced). Weights keep their dtype.
    """
    import pipelines

    from .training import load_tokenizer

    old, new = Path(old), Path(new)
    if not is_old_pipeline(old):
        raise ValueError(f"old: {old} is not a pipeline folder of the old format (model_index.json without a conditioner)")
    if new.exists() and not overwrite:
        raise ValueError(f"new: {new} exists; pass overwrite=True (--overwrite) to replace it")
    index = json.loads((old / "model_index.json").read_text())
    cls = getattr(pipelines, index["_class_name"][-1])
    gpt_config = {k: v for k, v in json.loads((old / "gpt" / CONFIG_NAME).read_text()).items() if not k.startswith("_")}
    weights = load_file(str(old / "gpt" / WEIGHTS_NAME))
    dtype = weights["norm.weight"].dtype
    flow = "head" in index and index["head"][1] == "FlowHead"
    conditioner = _conditioner(gpt_config, weights)
    head = FlowHead.from_pretrained(str(old / "head")) if flow else _categorical_head(gpt_config, weights)
    gpt = _gpt(gpt_config, weights, continuous=flow)
    options = {k: v for k, v in index.items() if not k.startswith("_") and k not in ("gpt", "tokenizer", "head")}
    pipe = cls(gpt=gpt, tokenizer=load_tokenizer(old / "tokenizer"), head=head, conditioner=conditioner, **options)
    if new.exists():
        shutil.rmtree(new)
    if dtype != torch.float32:  # the components are built in float32
        _cast(pipe, dtype)
    pipe.save_pretrained(new)
    for name in COPIED_FILES:
        if (old / name).is_file():
            shutil.copy2(old / name, new / name)
    return new


def _cast(pipe: Any, dtype: torch.dtype) -> None:
    """Every component to ``dtype``, without diffusers' warning about float32 modules (none of ours keeps any)."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for component in (pipe.gpt, pipe.head, pipe.conditioner, pipe.tokenizer):
            component.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _gpt(config: dict[str, Any], weights: dict[str, torch.Tensor], *, continuous: bool) -> GPT:
    fields = {k: v for k, v in config.items() if k not in OLD_GPT_KEYS}
    if continuous:
        fields["vocab_size"] = 0
    gpt = GPT(GPTConfig(**fields))
    kept = {k: v for k, v in weights.items() if k.split(".")[0] not in ("class_embedding", "text_embedding", "heads")}
    if continuous:
        kept = {k: v for k, v in kept.items() if not k.startswith("tok_embeddings.")}
    gpt.load_state_dict({k: v.float() for k, v in kept.items()}, strict=True)
    return gpt


def _conditioner(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> Any:
    if config.get("num_classes"):
        cond = ClassConditioner(ClassConditionerConfig(dim=config["dim"], num_classes=config["num_classes"]))
        cond.embedding.weight.data.copy_(weights["class_embedding.weight"])
        return cond
    if config.get("text_max_len"):
        cond = ByteTextConditioner(ByteTextConditionerConfig(dim=config["dim"], max_len=config["text_max_len"]))
        cond.embedding.weight.data.copy_(weights["text_embedding.weight"])
        return cond
    raise ValueError("old: the GPT has neither num_classes nor text_max_len; unconditional old pipelines are not converted")


def _categorical_head(config: dict[str, Any], weights: dict[str, torch.Tensor]) -> CategoricalHead:
    sizes = config["vocab_size"] if isinstance(config["vocab_size"], list) else [config["vocab_size"]]
    head = CategoricalHead(CategoricalHeadConfig(dim=config["dim"], codebook_sizes=sizes))
    for d, projection in enumerate(head.projections):
        source = weights["tok_embeddings.0.weight"] if config.get("tie_embeddings") else weights[f"heads.{d}.weight"]
        projection.weight.data.copy_(source)
    return head
