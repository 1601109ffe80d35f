"""What a folder on disk holds, read from its JSON files and safetensors headers only (``mmgen info``).

Nothing is unpickled and no weights are read: tensor names, shapes and dtypes come from the
safetensors headers, and the split between parameters and buffers from building the model class on
the ``meta`` device from its config (only classes of mmgen's own packages are imported). Pickle
files (``.bin``, ``.pt``, ``.pkl`` ...) are listed as such and never opened.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

from mmgen.hub import CONFIG_NAME as MODEL_CONFIG
from mmgen.hub import PICKLE_SUFFIXES

from .upgrade import is_old_pipeline

__all__ = ["describe", "file_kind", "format_description", "human_bytes", "safetensors_summary"]

PICKLE_KIND = "pickle (not loaded)"
TRUSTED_PACKAGES = ("mmgen", "tokenizers_visual", "tokenizers_audio")
PIPELINE_INDEX = "model_index.json"
TOKEN_INDEX = "tokens.json"
CHECKPOINT_STATE = "trainer_state.json"
LONG_TEXT = 80  # config strings longer than this are shortened in the text description
DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}


# ---- files -------------------------------------------------------------------------------------------
def file_kind(path: Path) -> str:
    """``safetensors``, ``pickle (not loaded)``, ``json`` or ``other``, from the file name alone."""
    if path.name.endswith(".safetensors"):
        return "safetensors"
    if path.suffix in PICKLE_SUFFIXES:
        return PICKLE_KIND
    if path.suffix == ".json":
        return "json"
    return "other"


def safetensors_summary(path: Path) -> dict[str, Any]:
    """Names, shapes and dtypes of a safetensors file's tensors, from its header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names, metadata = handle.keys(), handle.metadata() or {}
            views = {name: handle.get_slice(name) for name in names}
            tensors = {name: {"shape": list(view.get_shape()), "dtype": DTYPE_NAMES.get(view.get_dtype(), view.get_dtype())}
                       for name, view in views.items()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    return {"tensors": tensors, "metadata": metadata}


def _files(folder: Path) -> list[dict[str, Any]]:
    """Every file directly in ``folder``: name, kind and size."""
    return [{"name": p.name, "kind": file_kind(p), "bytes": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file()]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


# ---- parameters ----------------------------------------------------------------------------------------
def _trusted_class(module_name: str | None, class_name: str) -> type | None:
    """The mmgen model class ``class_name`` (from ``module_name``, or searched in mmgen's packages), else None."""
    from mmgen.hub import PretrainedModel

    modules = [module_name] if module_name else list(TRUSTED_PACKAGES)
    for name in modules:
        if name.split(".")[0] not in TRUSTED_PACKAGES:
            return None
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, PretrainedModel):
            return cls
    return None


def _parameter_names(cls: type | None, config: dict[str, Any]) -> set[str] | None:
    """Names of the parameters (not buffers) the class builds from ``config``, on the meta device; None if unknown."""
    if cls is None:
        return None
    import torch

    from mmgen.hub import config_from_dict

    try:
        with torch.device("meta"):
            model = cls(config_from_dict(cls.config_class, config, source=cls.__name__))
    except (TypeError, ValueError, KeyError, RuntimeError):  # a config the class cannot build: no parameter / buffer split
        return None
    return {name for name, _ in model.named_parameters()}


def _weights(folder: Path, parameter_names: set[str] | None) -> dict[str, Any]:
    """Element counts, dtypes and the name check of every safetensors file in ``folder``."""
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:  # a model that learns nothing (the octree tokenizer) has no parameters to count, not unknown ones
        return {"tensors": 0, "elements": 0, "dtypes": [], "parameters": 0 if parameter_names == set() else None}
    tensors: dict[str, dict[str, Any]] = {}
    for path in paths:
        tensors.update(safetensors_summary(path)["tensors"])
    counts = {name: math.prod(t["shape"]) for name, t in tensors.items()}
    result: dict[str, Any] = {"tensors": len(tensors), "elements": sum(counts.values()),
                              "dtypes": sorted({t["dtype"] for t in tensors.values()})}
    if parameter_names is None:
        result["parameters"] = None
        return result
    result["parameters"] = sum(n for name, n in counts.items() if name in parameter_names)
    result["buffer_elements"] = result["elements"] - result["parameters"]
    result["parameter_dtypes"] = sorted({tensors[name]["dtype"] for name in tensors if name in parameter_names})
    result["missing_parameters"] = sorted(parameter_names - set(tensors))
    return result


def _model(folder: Path, *, module_name: str | None = None, class_name: str | None = None) -> dict[str, Any]:
    """A model folder (config.json + safetensors): class, config, parameters, files."""
    config_file = folder / MODEL_CONFIG
    config = _read_json(config_file) if config_file.is_file() else {}
    name = class_name or config.get("_class_name")
    cls = _trusted_class(module_name, name) if isinstance(name, str) and config_file.is_file() else None
    values = {k: v for k, v in config.items() if not k.startswith("_")}
    files = _files(folder)
    return {"kind": "model", "path": str(folder), "class": name, "module": cls.__module__ if cls else module_name,
            "config": values, "files": files, "bytes": sum(f["bytes"] for f in files),
            "weights": _weights(folder, _parameter_names(cls, values))}


# ---- folder kinds --------------------------------------------------------------------------------------
def _pipeline(folder: Path) -> dict[str, Any]:
    """A saved pipeline: its class and config from model_index.json, and every component."""
    index = _read_json(folder / PIPELINE_INDEX)
    saved_class = index.get("_class_name")
    class_name = saved_class[-1] if isinstance(saved_class, list) else saved_class
    components, config = {}, {}
    for key, value in index.items():
        if key.startswith("_") or value == [None, None]:  # [null, null]: an optional component left out
            continue
        is_component = isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
        if is_component and (folder / key).is_dir():
            components[key] = _model(folder / key, module_name=value[0], class_name=value[1])
        elif is_component:
            components[key] = {"kind": "missing", "class": value[1], "module": value[0]}
        else:
            config[key] = value
    files = _files(folder)
    total = sum(f["bytes"] for f in files) + sum(c.get("bytes", 0) for c in components.values())
    counts = [c["weights"]["parameters"] if c["kind"] == "model" else None for c in components.values()]
    info = {"kind": "pipeline", "path": str(folder), "class": class_name, "config": config, "components": components,
            "parameters": None if None in counts else sum(counts), "files": files, "bytes": total}
    if is_old_pipeline(folder):
        info["upgrade"] = f"saved by an older mmgen; convert it with `mmgen upgrade {folder} NEW_FOLDER` to load it"
    return info


def _checkpoint(folder: Path) -> dict[str, Any]:
    """One resumable training checkpoint: its step and files (weights counted, pickles only listed)."""
    state_file = folder / CHECKPOINT_STATE
    step = _read_json(state_file).get("step") if state_file.is_file() else None
    files = _files(folder)
    return {"kind": "checkpoint", "path": str(folder), "step": step, "complete": state_file.is_file(),
            "files": files, "bytes": sum(f["bytes"] for f in files), "weights": _weights(folder, None)}


def _training_run(folder: Path) -> dict[str, Any]:
    """A training output folder: checkpoints, the final eval report, the last logged metrics, the exported model, tokens."""
    from mmgen.app.training.trainer import list_checkpoints

    checkpoint_dir = folder / "checkpoints"
    complete = list_checkpoints(checkpoint_dir)
    incomplete = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir() and p not in complete) if checkpoint_dir.is_dir() else []
    eval_file, metrics_file = folder / "eval.json", folder / "metrics.jsonl"
    markers = {"pipeline": PIPELINE_INDEX, "tokenizer": MODEL_CONFIG, "tokens": TOKEN_INDEX}
    exported = {name: describe(folder / name) for name, marker in markers.items() if (folder / name / marker).is_file()}
    return {"kind": "training_run", "path": str(folder), "checkpoints": [_checkpoint(p) for p in complete],
            "incomplete_checkpoints": incomplete, "eval": _read_json(eval_file) if eval_file.is_file() else None,
            "last_metrics": _last_record(metrics_file), "exported": exported}


def _last_record(metrics_file: Path) -> dict[str, Any] | None:
    """The newest complete line of metrics.jsonl (a run killed mid-write leaves a partial last line)."""
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _token_shards(folder: Path) -> dict[str, Any]:
    """A folder written by ``mmgen tokenize``: its index, and the shards' tensor shapes."""
    index = _read_json(folder / TOKEN_INDEX)
    shards = index.get("shards") or []
    first = safetensors_summary(folder / shards[0])["tensors"] if shards else {}
    files = _files(folder)
    return {"kind": "token_shards", "path": str(folder), "index": index, "first_shard": first,
            "files": files, "bytes": sum(f["bytes"] for f in files)}


def describe(path: str | Path) -> dict[str, Any]:
    """What ``path`` holds: a pipeline, a model, a training run, a checkpoint or token shards (JSON-ready)."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; mmgen info reads a folder (a pipeline, a model or a training run)")
    if (folder / PIPELINE_INDEX).is_file():
        return _pipeline(folder)
    if (folder / MODEL_CONFIG).is_file() and any(file_kind(p) in ("safetensors", PICKLE_KIND) for p in folder.iterdir()):
        return _model(folder)
    if (folder / "checkpoints").is_dir() or (folder / "eval.json").is_file():
        return _training_run(folder)
    if (folder / CHECKPOINT_STATE).is_file():
        return _checkpoint(folder)
    if (folder / TOKEN_INDEX).is_file():
        return _token_shards(folder)
    raise ValueError(
        f"{str(folder)!r} is not a checkpoint: expected {PIPELINE_INDEX} (pipeline), {MODEL_CONFIG} with weights (model), "
        f"checkpoints/ or eval.json (training run), {CHECKPOINT_STATE} (checkpoint) or {TOKEN_INDEX} (token shards)"
    )


# ---- text ----------------------------------------------------------------------------------------------
def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    if n < 1024:
        return f"{n} B"
    size, unit = float(n), "B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            break
    return f"{size:.1f} {unit}"


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n:,}" if n < 1_000_000 else f"{n:,} ({n / 1e6:.1f}M)"


def _config_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} items ({', '.join(map(repr, value[:2]))}, ...)"
    if isinstance(value, dict) and len(value) > 4:  # e.g. a text encoder's whole transformers config
        return f"{len(value)} keys ({', '.join(f'{k!r}: {v!r}' for k, v in list(value.items())[:2])}, ...)"
    if isinstance(value, str) and len(value) > LONG_TEXT:  # e.g. a fast tokenizer's JSON
        return f"{len(value):,} characters ({value[:LONG_TEXT // 2]!r}...)"
    return repr(value)


def _pickle_lines(files: list[dict[str, Any]], indent: str) -> list[str]:
    return [f"{indent}{f['name']}: {PICKLE_KIND}, {human_bytes(f['bytes'])}" for f in files if f["kind"] == PICKLE_KIND]


def _weights_line(weights: dict[str, Any]) -> str:
    if not weights["tensors"]:
        return "no weights (it learns nothing)" if weights["parameters"] == 0 else "no safetensors weights (parameters not counted)"
    if weights["parameters"] is None:
        text = f"{_count(weights['elements'])} tensor elements in {weights['tensors']} tensors (class unknown: parameters and buffers together)"
    else:
        text = f"{_count(weights['parameters'])} parameters"
        if weights["buffer_elements"]:
            text += f" (+{_count(weights['buffer_elements'])} buffer elements)"
        if weights["missing_parameters"]:
            text += f", {len(weights['missing_parameters'])} parameters MISSING from the weights"
    dtypes = weights.get("parameter_dtypes") or weights["dtypes"]
    return f"{text}, {'/'.join(dtypes)}"


def _format_model(info: dict[str, Any], indent: str = "  ") -> list[str]:
    lines = [f"{indent}{_weights_line(info['weights'])}, {human_bytes(info['bytes'])} on disk"]
    lines += [f"{indent}{key}: {_config_value(value)}" for key, value in sorted(info["config"].items())]
    return lines + _pickle_lines(info["files"], indent)


def _format_pipeline(info: dict[str, Any]) -> list[str]:
    lines = [f"pipeline {info['class']} at {info['path']}: {_count(info['parameters'])} parameters, {human_bytes(info['bytes'])}"]
    if "upgrade" in info:
        lines.append(f"  {info['upgrade']}")
    lines += [f"  {key}: {_config_value(value)}" for key, value in sorted(info["config"].items())]
    lines.append("  components:")
    for name, comp in info["components"].items():
        if comp["kind"] == "missing":
            lines.append(f"    {name}: {comp['class']} (folder missing)")
            continue
        lines.append(f"    {name}: {comp['class']}, {_weights_line(comp['weights'])}, {human_bytes(comp['bytes'])}")
        lines += _pickle_lines(comp["files"], "      ")
    return lines


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in values.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _format_training_run(info: dict[str, Any]) -> list[str]:
    lines = [f"training run at {info['path']}"]
    steps = [c["step"] for c in info["checkpoints"]]
    lines.append(f"  checkpoints: {', '.join(f'step {s}' for s in steps) if steps else 'none'}")
    for ckpt in info["checkpoints"]:
        lines.append(f"    step {ckpt['step']}: {human_bytes(ckpt['bytes'])}, {_count(ckpt['weights']['elements'])} tensor elements in safetensors")
        lines += _pickle_lines(ckpt["files"], "      ")
    if info["incomplete_checkpoints"]:
        lines.append(f"  incomplete (interrupted saves, ignored on resume): {', '.join(info['incomplete_checkpoints'])}")
    if info["last_metrics"]:
        lines.append("  last logged: " + "  ".join(f"{k} {_config_value(v)}" for k, v in info["last_metrics"].items()))
    if info["eval"]:
        lines.append("  eval.json:")
        lines += [f"    {key}: {_config_value(value)}" for key, value in _flatten(info["eval"])]
    for exported in info["exported"].values():
        lines += ["  " + line for line in format_description(exported).splitlines()]
    return lines


def _format_checkpoint(info: dict[str, Any]) -> list[str]:
    state = "" if info["complete"] else " (incomplete)"
    lines = [f"training checkpoint at {info['path']}: step {info['step']}{state}, {human_bytes(info['bytes'])}"]
    lines += [f"  {f['name']}: {f['kind']}, {human_bytes(f['bytes'])}" for f in info["files"]]
    return lines


def _format_token_shards(info: dict[str, Any]) -> list[str]:
    index = info["index"]
    shards = len(index.get("shards", []))
    lines = [f"token shards at {info['path']}: {index.get('num_items')} items in {shards} shards, {human_bytes(info['bytes'])}"]
    lines += [f"  {key}: {_config_value(value)}" for key, value in sorted(index.items()) if key not in ("shards", "num_items")]
    lines += [f"  {name}: {t['dtype']} per item {t['shape'][1:]}" for name, t in info["first_shard"].items()]
    return lines


def format_description(info: dict[str, Any]) -> str:
    """Readable text for what :func:`describe` returned."""
    if info["kind"] == "pipeline":
        lines = _format_pipeline(info)
    elif info["kind"] == "model":
        lines = [f"model {info['class']} at {info['path']}"] + _format_model(info)
    elif info["kind"] == "training_run":
        lines = _format_training_run(info)
    elif info["kind"] == "checkpoint":
        lines = _format_checkpoint(info)
    else:
        lines = _format_token_shards(info)
    return "\n".join(lines)
