"""Training configuration: typed dataclasses read from YAML; unknown or mistyped keys fail with their path.

One file describes one run: what is trained (``kind: tokenizer`` or ``kind: generator``), on which
data, with which optimiser, how it is evaluated and where it is written. Presets live in ``configs/``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DataConfig", "OptimConfig", "EvalConfig", "CheckpointConfig", "TrainConfig", "load_config", "config_from_mapping", "parse_override", "apply_overrides"]

KINDS = ("tokenizer", "generator")
PIPELINES = ("NextTokenPipeline", "NextScalePipeline", "NextXPipeline")
CONDITIONS = ("class", "text", "text_encoder")
DATASETS = ("shapes", "folder", "hf", "tones", "audio_folder", "moving_shapes", "video_folder", "primitives", "mesh_folder")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")
PATH_KEYS = ("tokenizer", "data.tokens")  # relative to the config file when written in it
FREE_MAPPINGS = ("tokenizer", "pipeline_args", "conditioner", "gpt", "head")  # free-form: their own classes check the keys
EXPORT_DTYPES = ("float32", "float16", "bfloat16")  # half precision halves shipped checkpoints; they load as float32


@dataclass
class DataConfig:
    """What to learn from. Images: built-in ``shapes``, a ``folder`` of images, or a local Hugging Face ``hf``
    dataset, at ``image_size``. Audio: built-in ``tones`` or an ``audio_folder`` of WAV/FLAC files, as clips of
    ``clip_seconds`` at ``sample_rate``; ``detune`` (tones only) moves each clip's root by up to that many
    semitones, so a codec learns every pitch and not only the seven roots. Video: built-in ``moving_shapes`` or
    a ``video_folder`` of MP4/GIF files, as clips of ``num_frames`` frames of ``image_size``. 3D shapes: built-in
    ``primitives`` or a ``mesh_folder`` of OBJ/PLY/GLB/STL files, as occupancy grids of side ``resolution``.

    ``num_items`` caps how many are used (shapes, tones: how many are rendered); ``tokens`` names a folder written
    by ``mmgen tokenize`` that generator training reads instead of encoding the images itself.
    ``num_workers`` processes prepare the batches of the coming steps (0: the training process does); the
    batch of a step is the same either way. ``group_by_length`` (generators over sequences of their own lengths,
    octrees): a step draws that many batches' worth of random items and keeps one batch of similar lengths, so
    rows are padded less (0: off). ``class_mix`` (primitives only): one count per class, how often each comes
    in the cycle of items (see :class:`mmgen.data.PrimitivesDataset`); held-out evaluation stays balanced.
    """

    dataset: str = "shapes"
    path: str | None = None
    image_column: str = "image"
    label_column: str | None = None
    image_size: int = 32
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    detune: float = 0.0
    num_frames: int = 9
    resolution: int = 32
    num_items: int = 16384
    seed: int = 0
    num_workers: int = 0
    group_by_length: int = 0
    class_mix: list[int] | None = None
    tokens: str | None = None


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay to ``min_lr_ratio · lr`` (or constant).

    A step is one update on ``batch_size`` samples in all: split over the processes of a multi-process run,
    and within each into ``grad_accum_steps`` micro-batches, so the batch size must divide evenly.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    ema_decay: float = 0.0
    mixed_precision: str = "no"


@dataclass
class EvalConfig:
    """What the final (and periodic) evaluation runs. Generators: prompt adherence on the classes of the built-in
    set they learnt (shapes, tones), judged by code. Tokenizers: reconstruction of ``num_items`` held-out items;
    audio codecs on clips of ``clip_seconds`` (default: the training clips' ``data.clip_seconds``), so a codec
    trained on short crops is still measured on whole clips."""

    every: int = 0
    samples_per_class: int = 10
    batch_size: int = 42
    guidance_scale: float = 1.0
    guidance_kind: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    num_flow_steps: int | None = None
    num_items: int = 256
    clip_seconds: float | None = None


@dataclass
class CheckpointConfig:
    """Resumable state every ``every`` steps (0: only at the end), keeping the newest ``keep``."""

    every: int = 0
    keep: int = 2


@dataclass
class TrainConfig:
    """A whole run. ``tokenizer`` is a preset mapping (``class:`` + config fields) to train, or, for a
    generator, the folder of a trained tokenizer (relative paths are relative to the config file).

    ``tensorboard`` also writes the metrics to ``output_dir/tensorboard`` when the tensorboard package is
    installed (without it the run logs to ``metrics.jsonl`` only).
    """

    kind: str = "generator"
    tokenizer: Any = None
    pipeline: str = "NextTokenPipeline"
    pipeline_args: dict[str, Any] = field(default_factory=dict)
    condition: str = "class"
    conditioner: dict[str, Any] = field(default_factory=dict)
    gpt: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    cond_drop_prob: float = 0.1
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    threads: int | None = None
    log_every: int = 50
    tensorboard: bool = True
    output_dir: str = "outputs/run"
    export_dtype: str = "float32"

    def __post_init__(self) -> None:
        _choice("kind", self.kind, KINDS)
        _choice("data.dataset", self.data.dataset, DATASETS)
        _choice("optim.schedule", self.optim.schedule, SCHEDULES)
        _choice("optim.mixed_precision", self.optim.mixed_precision, PRECISIONS)
        _choice("export_dtype", self.export_dtype, EXPORT_DTYPES)
        if self.kind == "generator":
            _choice("pipeline", self.pipeline, PIPELINES)
            _choice("condition", self.condition, CONDITIONS)
            if not isinstance(self.tokenizer, str) and not (isinstance(self.tokenizer, dict) and "class" in self.tokenizer):
                raise ValueError("tokenizer: a generator config names the folder of a trained tokenizer (a string), or "
                                 "the preset of one with nothing to learn (a mapping with 'class', e.g. OctreeTokenizer)")
        elif not isinstance(self.tokenizer, dict) or "class" not in self.tokenizer:
            raise ValueError("tokenizer: a tokenizer config is a mapping with a 'class' key and the config fields")
        elif self.tokenizer.get("image_size", self.data.image_size) != self.data.image_size:
            raise ValueError(f"tokenizer.image_size={self.tokenizer['image_size']!r} differs from data.image_size="
                             f"{self.data.image_size}: a tokenizer learns and decodes the grid of its own image size")
        if isinstance(self.tokenizer, dict) and self.tokenizer.get("resolution", self.data.resolution) != self.data.resolution:
            raise ValueError(f"tokenizer.resolution={self.tokenizer['resolution']!r} differs from data.resolution="
                             f"{self.data.resolution}: a shape tokenizer reads grids of its own resolution")
        for name in ("data.sample_rate", "data.image_size", "data.num_frames", "data.resolution", "data.num_items", "optim.steps", "optim.batch_size", "optim.grad_accum_steps", "log_every", "eval.samples_per_class",
                     "eval.batch_size", "checkpoint.keep"):
            value = _lookup(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("optim.warmup_steps", "optim.grad_clip", "optim.weight_decay", "eval.every", "checkpoint.every",
                     "data.num_workers", "data.group_by_length"):
            value = _lookup(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("data.clip_seconds", "eval.clip_seconds"):
            value = _lookup(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.optim.lr}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or left out), got {self.threads}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.optim.ema_decay}")
        if self.optim.batch_size % self.optim.grad_accum_steps:
            raise ValueError(f"optim.batch_size={self.optim.batch_size} must be divisible by optim.grad_accum_steps={self.optim.grad_accum_steps}")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def config_from_mapping(cls: type, values: Any, *, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses and checking every value's type."""
    if not isinstance(values, dict):
        raise ValueError(f"{path or cls.__name__}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ValueError(f"unknown config key(s) {[where + k for k in unknown]}; {cls.__name__} takes {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{path}.{name}" if path else name
        kwargs[name] = _convert(hints[name], value, key)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return config_from_mapping(hint, value, path=key)
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return origin(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    raise ValueError(f"{key}: unsupported config type {hint}")


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` → ``("optim.lr", "1e-3")``: the value is read as YAML (``200`` an int, ``true`` a bool,
    ``[1, 2]`` a list), so a command-line override gets exactly the checks of the same value in the file."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set: expected KEY=VALUE such as optim.lr=1e-3, got {text!r}")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"--set {key}: the value {raw!r} is not valid YAML ({err})") from None


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each dotted key of ``overrides`` set; a key that names no config field fails with the
    closest field names, before anything is built."""
    fields = _field_paths(TrainConfig)
    merged = copy.deepcopy(values)
    for dotted, value in overrides.items():
        if dotted not in fields and not any(dotted.startswith(f"{name}.") for name in FREE_MAPPINGS):
            close = difflib.get_close_matches(dotted, sorted(fields), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"--set {dotted}: no such config key{hint}")
        *parents, leaf = dotted.split(".")
        node = merged
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:  # absent, or written as an empty mapping (``optim:``)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"--set {dotted}: {'.'.join(parents[:i + 1])} is {child!r} in the config, not a mapping")
            node = child
        node[leaf] = value
    return merged


def _field_paths(cls: type, prefix: str = "") -> set[str]:
    """Every settable dotted key of dataclass ``cls``: its fields and those of nested config dataclasses."""
    hints = typing.get_type_hints(cls)
    paths = set()
    for f in dataclasses.fields(cls):
        paths.add(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            paths |= _field_paths(hints[f.name], f"{prefix}{f.name}.")
    return paths


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML run config; ``overrides`` replace keys, dotted for nested ones (``{"optim.lr": 1e-3}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if values is None:
        raise ValueError(f"{path} is empty (or only comments): a run config is a mapping of keys such as kind, tokenizer, "
                         "data and optim (see configs/)")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping of config keys (kind: ..., tokenizer: ...), "
                         f"got a {type(values).__name__}")
    overrides = {key: str(Path(value).resolve()) if key in PATH_KEYS and isinstance(value, str) else value
                 for key, value in (overrides or {}).items()}  # paths typed on the command line are relative to the cwd
    values = apply_overrides(dict(values), overrides)
    if isinstance(values.get("tokenizer"), str) and not Path(values["tokenizer"]).is_absolute():
        values["tokenizer"] = str((path.parent / values["tokenizer"]).resolve())
    data = values.get("data")
    if isinstance(data, dict) and isinstance(data.get("tokens"), str) and not Path(data["tokens"]).is_absolute():
        values["data"] = {**data, "tokens": str((path.parent / data["tokens"]).resolve())}
    try:
        return config_from_mapping(TrainConfig, values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
