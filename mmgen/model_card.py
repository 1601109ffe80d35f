"""Model cards: the README.md a hub repo shows, written from what a run actually recorded.

A card says what the checkpoint is, the exact code that loads it, its config, the data and training
settings, the measured metrics and the command that reproduces it. Every number in it comes from the
caller; nothing is filled in. The YAML front matter is what the hub indexes (``library_name``, ``tags``,
``license``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .files import write_text_atomically

__all__ = ["CARD_NAME", "PACKAGE_LICENSE", "TASK_TAGS", "loading_code", "render_model_card", "set_model_card_section", "write_model_card"]

CARD_NAME = "README.md"
BASE_TAGS = ("mmgen", "autoregressive")
# the hub's task tag of a generator by what it makes (a tokenizer gets "<modality>-tokenizer")
TASK_TAGS = {"image": "image-generation", "audio": "text-to-audio", "video": "text-to-video", "shape": "text-to-3d"}
BULKY_CONFIG_KEYS = ("tokenizer_json",)  # a TextEncoderConditioner's whole tokenizer: config.json keeps it, the card names it
HUB_LICENSE_IDS = {"apache-2.0": "apache-2.0", "apache 2.0": "apache-2.0", "apache license 2.0": "apache-2.0"}


def _package_license() -> str | None:
    """The hub id of mmgen's own license when the installed package declares one we recognise, else None."""
    try:
        declared = metadata.metadata("mmgen").get("License") or ""
    except metadata.PackageNotFoundError:
        return None
    return HUB_LICENSE_IDS.get(declared.strip().lower())


PACKAGE_LICENSE = _package_license()


def loading_code(class_name: str, location: str, *, module: str = "mmgen") -> str:
    """The two lines that load a checkpoint of ``class_name`` from a hub repo id or a folder."""
    if not class_name.isidentifier():
        raise ValueError(f"class_name must be a Python class name, got {class_name!r}")
    variable = "pipe" if class_name.endswith("Pipeline") else "model"
    return f"from {module} import {class_name}\n\n{variable} = {class_name}.from_pretrained({location!r})\n"


def write_model_card(
    folder: str | Path,
    *,
    title: str,
    config: Mapping[str, Any],
    data: str,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    usage: str,
    reproduce: str | None = None,
    summary: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = PACKAGE_LICENSE,
    overwrite: bool = False,
) -> Path:
    """Write ``folder/README.md`` (see :func:`render_model_card`); an existing card is kept unless ``overwrite``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a directory: save the model there first")
    card = folder / CARD_NAME
    if card.exists() and not overwrite:
        raise FileExistsError(f"{card} already exists; pass overwrite=True to replace it")
    text = render_model_card(title=title, config=config, data=data, training=training, metrics=metrics,
                             usage=usage, reproduce=reproduce, summary=summary, tags=tags, license=license)
    write_text_atomically(card, text)
    return card


def set_model_card_section(folder: str | Path, heading: str, body: str) -> Path:
    """Put ``## heading`` with ``body`` into ``folder/README.md``: an existing section of that heading is replaced
    (up to the next ``## ``), else the section is appended; the rest of the card is kept as it is."""
    _require_text("heading", heading)
    _require_text("body", body)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a directory")
    card = folder / CARD_NAME
    text = card.read_text() if card.is_file() else f"# {folder.name}\n"
    section = f"## {heading.strip()}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == f"## {heading.strip()}"), None)
    if start is None:
        text = text.rstrip() + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    write_text_atomically(card, text)
    return card


def render_model_card(
    *,
    title: str,
    config: Mapping[str, Any],
    data: str,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    usage: str,
    reproduce: str | None = None,
    summary: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = PACKAGE_LICENSE,
) -> str:
    """The card's text: front matter, then what it is, loading, config, training, metrics, reproduction."""
    _require_text("title", title)
    for name, value in (("config", config), ("training", training), ("metrics", metrics)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{name} must be a mapping (dict), got {type(value).__name__}")
    _require_text("data", data)
    _require_text("usage", usage)
    if reproduce is not None:
        _require_text("reproduce", reproduce)
    sections = [
        _front_matter(tags, license),
        f"# {title.strip()}\n",
        _what_it_is(config, summary),
        "## How to load\n\n" + _code_block("python", usage),
        _config_section(config),
        _training_section(data, training),
        "## Measured metrics\n\n" + _metrics_table(metrics),
    ]
    if reproduce is not None:
        sections.append("## How to reproduce\n\n" + _code_block("bash", reproduce))
    return "\n".join(sections)


def _require_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _front_matter(tags: Sequence[str], license: str | None) -> str:
    if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ValueError(f"tags must be a list of non-empty strings, got {tags!r}")
    header: dict[str, Any] = {"library_name": "mmgen", "tags": list(dict.fromkeys([*BASE_TAGS, *tags]))}
    if license is not None:
        _require_text("license", license)
        header["license"] = license
    return f"---\n{_yaml(header)}---\n"


def _what_it_is(config: Mapping[str, Any], summary: str | None) -> str:
    class_name = config.get("_class_name")
    kind = f"an mmgen `{class_name}`" if class_name else "an mmgen model"
    text = f"## What it is\n\nThis repository holds {kind}: weights in safetensors, configuration in JSON.\n"
    if summary is not None:
        _require_text("summary", summary)
        text += f"\n{summary.strip()}\n"
    return text


def _config_section(config: Mapping[str, Any]) -> str:
    """The config as YAML, without the values too long to read (:data:`BULKY_CONFIG_KEYS`), which are named instead."""
    shown = {k: v for k, v in config.items() if k not in BULKY_CONFIG_KEYS}
    text = "## Config\n\n" + _code_block("yaml", _yaml(_plain(shown, "config")))
    for key in (k for k in BULKY_CONFIG_KEYS if k in config):
        size = f" ({len(config[key]):,} characters)" if isinstance(config[key], str) else ""
        text += f"\n`{key}`{size} is left out here; the config.json beside the weights holds it.\n"
    return text


def _training_section(data: str, training: Mapping[str, Any]) -> str:
    text = f"## Training data and steps\n\n{data.strip()}\n"
    settings = _plain(training, "training")
    if settings:
        text += "\n" + _code_block("yaml", _yaml(settings))
    return text


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = _flat_numbers(metrics, "metrics")
    if not rows:
        return "No metrics were measured for this checkpoint.\n"
    lines = ["| Metric | Value |", "| --- | --- |"]
    lines += [f"| {name.replace('|', chr(92) + '|')} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def _flat_numbers(values: Mapping[str, Any], path: str) -> list[tuple[str, str]]:
    """``(dotted.name, number as written)`` for every leaf of a nested mapping; a non-number leaf is an error."""
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{path}.{key}"
        if isinstance(value, Mapping):
            rows += [(f"{key}.{sub}", text) for sub, text in _flat_numbers(value, name)]
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            rows.append((str(key), str(value)))
        else:
            raise ValueError(f"{name} must be a number (a measured value), got {value!r}")
    return rows


def _plain(value: Any, path: str) -> Any:
    """JSON-like copy (dicts, lists, scalars) of a config so YAML can write it; other types fail with their key path."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{path} holds a {type(value).__name__}; a model card takes only numbers, strings, lists and mappings")


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _code_block(language: str, code: str) -> str:
    fence = "```"
    while fence in code:
        fence += "`"
    return f"{fence}{language}\n{code.rstrip()}\n{fence}\n"
