"""Save / load for every mmgen model: safetensors + a JSON config, local folders and hub repos alike.

Models subclass :class:`PretrainedModel`, a diffusers ``ModelMixin`` + ``ConfigMixin`` whose
configuration is one typed dataclass (``config_class``). Being a ``ModelMixin`` is what lets
``diffusers.DiffusionPipeline`` save and load our components. On top of diffusers' loader this adds
checks that turn a missing, pickled or mismatched checkpoint into a clear ``ValueError`` before any
weights are touched, and never unpickles unless the caller opts in with ``allow_pickle=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import ConfigMixin, ModelMixin
from safetensors import safe_open

__all__ = ["PretrainedModel", "config_from_dict"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHT_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.pth")


def config_from_dict(config_class: type, values: dict[str, Any], *, source: str) -> Any:
    """Build a config dataclass from a JSON dict; unknown keys fail with their name."""
    names = {f.name for f in dataclasses.fields(config_class)}
    fields = {k: v for k, v in values.items() if not k.startswith("_")}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {config_class.__name__} key(s) {unknown}; expected a subset of {sorted(names)}")
    return config_class(**fields)


class PretrainedModel(ModelMixin, ConfigMixin):
    """Base of mmgen models: ``Model(config_dataclass)``, ``save_pretrained``, ``from_pretrained``."""

    config_name = CONFIG_NAME
    config_class: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # diffusers' pipeline loader imports a component's module (model_index.json names e.g. "mmgen.gpt")
        # and recognises a loadable class by ``issubclass(cls, module.ModelMixin)``: expose it there.
        module = sys.modules.get(cls.__module__)
        if module is not None and not hasattr(module, "ModelMixin"):
            module.ModelMixin = ModelMixin

    def _register_typed_config(self, config: Any) -> Any:
        """Accept the dataclass (or its dict form), record it as the diffusers config, return the dataclass."""
        if isinstance(config, dict):
            config = config_from_dict(self.config_class, config, source=type(self).__name__)
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.register_to_config(**dataclasses.asdict(config))
        return config

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):  # type: ignore[override]
        """diffusers calls this with the JSON dict while loading; build through the typed dataclass."""
        if isinstance(config, (str, os.PathLike)):
            config = cls.load_config(config)
        values = dict(config or {})
        values.update({k: v for k, v in kwargs.items() if k in {f.name for f in dataclasses.fields(cls.config_class)}})
        model = cls(config_from_dict(cls.config_class, values, source=f"{cls.__name__} config"))
        return (model, {}) if return_unused_kwargs else model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, allow_pickle: bool = False, **kwargs: Any):  # type: ignore[override]
        """Load from a local folder or a hub repo id. Pickled weights are refused unless ``allow_pickle=True``."""
        path = Path(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder")
        folder = path / subfolder if subfolder else path
        if folder.is_dir():
            _check_local_checkpoint(cls, folder, allow_pickle=allow_pickle)
        kwargs.setdefault("use_safetensors", not allow_pickle)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (RuntimeError, KeyError, OSError) as err:
            if not folder.is_dir():
                raise
            raise ValueError(f"{cls.__name__}.from_pretrained({str(folder)!r}) could not load the checkpoint: {err}") from err


def _check_local_checkpoint(cls: type[PretrainedModel], folder: Path, *, allow_pickle: bool) -> None:
    """Validate config and weights of a local checkpoint folder against the class, before loading."""
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(f"{folder} is not a {cls.__name__} checkpoint: expected {CONFIG_NAME} in it")
    try:
        values = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    saved_class = values.get("_class_name", cls.__name__)
    if saved_class != cls.__name__:
        raise ValueError(f"{folder} holds a {saved_class} checkpoint, not a {cls.__name__}")
    config = config_from_dict(cls.config_class, values, source=str(config_file))
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [name for name in PICKLE_WEIGHT_NAMES if (folder / name).is_file()]
        if pickled and not allow_pickle:
            raise ValueError(
                f"{folder} has only pickled weights ({pickled[0]}); mmgen loads safetensors only. "
                "Pass allow_pickle=True if you trust this file."
            )
        if not pickled:
            raise ValueError(f"{folder} has no weights: expected {WEIGHTS_NAME}")
        return
    _check_weights_match(cls, config, weights)


def _check_weights_match(cls: type[PretrainedModel], config: Any, weights: Path) -> None:
    """Compare tensor names and shapes in a safetensors file with what ``config`` builds."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"{weights} is not a readable safetensors file: {err}") from err
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in cls(config).state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}"
        )
    for name, shape in expected.items():
        if saved[name] != shape:
            raise ValueError(f"{weights}: tensor {name!r} has shape {saved[name]}, the config expects {shape}")
