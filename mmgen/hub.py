"""Save / load for every mmgen model: safetensors + a JSON config, local folders and hub repos alike.

Models subclass :class:`PretrainedModel`, a diffusers ``ModelMixin`` + ``ConfigMixin`` whose
configuration is one typed dataclass (``config_class``). Being a ``ModelMixin`` is what lets
``diffusers.DiffusionPipeline`` save and load our components. On top of diffusers' loader this adds
checks that turn a missing, pickled or mismatched checkpoint into a clear ``ValueError`` before any
weights are touched, and never unpickles unless the caller opts in with ``allow_pickle=True``.

A hub repo id is first resolved to a local snapshot holding only the files mmgen reads (config,
safetensors, model card), so the same checks run on downloaded checkpoints as on local folders.
Uploads go the other way: :meth:`PretrainedModel.push_to_hub` and :func:`push_folder_to_hub` send
safetensors, JSON and a model card, and refuse folders that hold pickled files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import huggingface_hub
import torch
from diffusers import ConfigMixin, ModelMixin
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open

from .model_card import CARD_NAME, loading_code, write_model_card

__all__ = [
    "PretrainedModel",
    "config_from_dict",
    "pop_hub_kwargs",
    "push_folder_to_hub",
    "resolve_pipeline_path",
    "resolve_pretrained_path",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHT_NAMES = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.pth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
HUB_DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "force_download", "local_files_only")
MODEL_FILE_PATTERNS = (CONFIG_NAME, "*.safetensors", "*.safetensors.index.json")
PIPELINE_FILE_PATTERNS = ("model_index.json", CARD_NAME, f"*/{CONFIG_NAME}", "*/*.safetensors", "*/*.safetensors.index.json")
DEFAULT_COMMIT_MESSAGE = "Upload mmgen model"
SHIM_MODULE = "mmgen_pipeline"  # the one-line module a saved pipeline carries for diffusers' generic loader
SHIM_SOURCE = (
    '"""Written by mmgen: lets diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)\n'
    'find the pipeline class. It only imports mmgen\'s installed pipelines."""\n'
    "from pipelines import *  # noqa: F401,F403\n"
)
CARD_FIELDS = ("title", "config", "data", "training", "metrics", "usage", "reproduce", "summary", "tags", "license")


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
    has_weights: ClassVar[bool] = True  # False for a model that is all config (the octree tokenizer): its folder has no weights file

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
        """Load from a local folder or a hub repo id. Pickled weights are refused unless ``allow_pickle=True``.

        A repo id is downloaded first (config, safetensors and card only; pickles only with ``allow_pickle``),
        so the pre-checks read the snapshot from disk just as they read a local folder; a repo that cannot be
        downloaded (unknown, or offline without a cached copy) is a ``ValueError`` too. Weights stored in
        half precision (to keep shipped checkpoints small) load as float32 unless ``torch_dtype`` is given.
        """
        subfolder = kwargs.get("subfolder")
        patterns = MODEL_FILE_PATTERNS + (PICKLE_WEIGHT_NAMES if allow_pickle else ())
        root = resolve_pretrained_path(pretrained_model_name_or_path, allow_patterns=patterns, subfolder=subfolder,
                                       **pop_hub_kwargs(kwargs))
        folder = root / subfolder if subfolder else root
        _check_local_checkpoint(cls, folder, allow_pickle=allow_pickle)
        if not cls.has_weights:
            return cls.from_config(cls.load_config(str(folder)))
        kwargs.setdefault("use_safetensors", not allow_pickle)
        try:
            model = super().from_pretrained(str(root), **kwargs)
        except (RuntimeError, KeyError, OSError) as err:
            raise ValueError(f"{cls.__name__}.from_pretrained({str(folder)!r}) could not load the checkpoint: {err}") from err
        if kwargs.get("torch_dtype") is None and model.dtype in (torch.float16, torch.bfloat16):
            model = model.float()
        return model

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        model_card: Mapping[str, Any] | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = DEFAULT_COMMIT_MESSAGE,
        create_pr: bool = False,
    ) -> Any:
        """Upload safetensors, config.json and a model card to ``repo_id`` (created if missing).

        ``model_card`` holds :func:`mmgen.model_card.write_model_card` fields; those left out are filled
        from the model (title, config, loading code) or say that nothing was recorded (data, metrics).
        Returns what ``huggingface_hub.upload_folder`` returns (the commit).
        """
        card = {**self._card_defaults(repo_id), **_checked_card_fields(model_card)}
        with tempfile.TemporaryDirectory(prefix="mmgen-push-") as tmp:
            self.save_pretrained(tmp, safe_serialization=True)
            return push_folder_to_hub(tmp, repo_id, model_card=card, private=private, token=token,
                                      commit_message=commit_message, create_pr=create_pr)

    def _card_defaults(self, repo_id: str) -> dict[str, Any]:
        name = type(self).__name__
        return {
            "title": f"{repo_id.split('/')[-1]} ({name})",
            "config": dict(self.config),
            "data": "The training data of this checkpoint was not recorded with the upload.",
            "training": {},
            "metrics": {},
            "usage": loading_code(name, repo_id, module=_public_module(type(self))),
        }


def pop_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the download options (revision, token, ...) from a ``from_pretrained`` kwargs dict."""
    return {name: kwargs.pop(name) for name in HUB_DOWNLOAD_KWARGS if name in kwargs}


def resolve_pretrained_path(
    name_or_path: str | os.PathLike,
    *,
    allow_patterns: Sequence[str] = MODEL_FILE_PATTERNS,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or the snapshot of a hub repo id.

    Only files matching ``allow_patterns`` (inside ``subfolder`` when given, plus the repo's README.md)
    are downloaded, so a hub checkpoint is checked from disk exactly like a local one.
    ``hub_kwargs`` are ``huggingface_hub.snapshot_download`` options: revision, token, cache_dir,
    force_download, local_files_only.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    repo_id = _as_repo_id(name_or_path)
    unknown = sorted(set(hub_kwargs) - set(HUB_DOWNLOAD_KWARGS))
    if unknown:
        raise TypeError(f"unknown hub option(s) {unknown}; expected a subset of {list(HUB_DOWNLOAD_KWARGS)}")
    inside = [f"{subfolder}/{p}" for p in allow_patterns] if subfolder else list(allow_patterns)
    patterns = [*inside, CARD_NAME]
    try:
        snapshot = huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns, library_name="mmgen", **hub_kwargs)
    except OSError as err:  # not found, offline without a cached copy, no network: huggingface_hub's errors are OSErrors
        raise ValueError(f"pretrained_model_name_or_path {repo_id!r} is no local folder, and the hub repo could not be "
                         f"downloaded ({type(err).__name__}: {err})") from err
    return Path(snapshot)


def resolve_pipeline_path(name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    """A local folder for a saved pipeline or a pipeline repo id; takes the download options out of ``kwargs``.

    The snapshot holds model_index.json, mmgen's pipeline shim, the model card and each component's
    config and safetensors, so the pipeline's trust check reads the downloaded shim from disk.
    """
    patterns = (*PIPELINE_FILE_PATTERNS, f"{SHIM_MODULE}.py")
    return resolve_pretrained_path(name_or_path, allow_patterns=patterns, **pop_hub_kwargs(kwargs))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    model_card: Mapping[str, Any] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    create_pr: bool = False,
) -> Any:
    """Upload a saved model or pipeline folder to ``repo_id`` (created if missing), safetensors only.

    The folder must hold safetensors weights, no pickled files, and a README.md model card: pass
    ``model_card`` (fields of :func:`mmgen.model_card.write_model_card`) to write one into it first;
    an existing README.md is never overwritten. Returns what ``huggingface_hub.upload_folder`` returns.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a directory: save the model or pipeline there first")
    _check_uploadable(folder)
    if model_card is not None:
        write_model_card(folder, **_checked_card_fields(model_card))
    elif not (folder / CARD_NAME).is_file():
        raise ValueError(f"{folder} has no {CARD_NAME} model card: pass model_card=... or write one with "
                         "mmgen.model_card.write_model_card")
    huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
    return huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                         token=token, create_pr=create_pr)


def _as_repo_id(name_or_path: str | os.PathLike) -> str:
    """``name_or_path`` as a hub repo id; a path-like string that is no folder fails here, before any download."""
    name = os.fspath(name_or_path)
    if not (os.path.isabs(name) or name.startswith((".", "~"))):
        try:
            validate_repo_id(name)
            return name
        except HFValidationError:
            pass
    raise ValueError(f"pretrained_model_name_or_path {name!r} is neither a local folder nor a hub repo id ('owner/name')")


def _check_uploadable(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickled = sorted(str(p.relative_to(folder)) for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder} holds pickled files {pickled[:5]}; mmgen uploads safetensors only: remove them first")
    if not any(p.name.endswith(".safetensors") for p in files):
        raise ValueError(f"{folder} holds no .safetensors weights; save the model with save_pretrained first")


def _checked_card_fields(model_card: Mapping[str, Any] | None) -> dict[str, Any]:
    if model_card is None:
        return {}
    if not isinstance(model_card, Mapping):
        raise TypeError(f"model_card must be a dict of model card fields, got {type(model_card).__name__}")
    unknown = sorted(set(model_card) - set(CARD_FIELDS))
    if unknown:
        raise ValueError(f"model_card: unknown field(s) {unknown}; expected a subset of {list(CARD_FIELDS)}")
    return dict(model_card)


def _public_module(cls: type) -> str:
    """``mmgen`` when ``import mmgen`` exposes the class (the shortest import for a card), else its own module."""
    import mmgen

    return "mmgen" if getattr(mmgen, cls.__name__, None) is cls else cls.__module__


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
    if not cls.has_weights:
        return
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
