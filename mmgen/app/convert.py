"""``mmgen convert --from SOURCE SRC DST``: published weights of another project into an mmgen folder.

SRC is the folder the original publishes (``config.json`` next to ``model.safetensors``, as on the hub)
or a weights file with its ``config.json`` beside it. Safetensors are read as they are; a pickle
(``.bin``, ``.pt``, ``.pth``, ``.th``, ``.ckpt``) is loaded only with ``allow_pickle=True``
(``--allow-pickle``), and then with ``torch.load(weights_only=True)`` and a warning, since unpickling
runs code from the file. DST gets the converted model saved by ``save_pretrained`` and a model card
that names the source; it is written next to DST and renamed into place, so a failed conversion
leaves nothing half-written, and an existing DST is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgen.model_card import loading_code, write_model_card

if TYPE_CHECKING:
    import torch

__all__ = ["SOURCES", "Source", "convert", "read_published"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".th", ".ckpt")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Source:
    """A project whose weights convert: what it is, what mmgen builds from it, and the function that does it."""

    title: str
    layout: str
    builds: str
    tags: tuple[str, ...]
    build: Callable[[Mapping[str, "torch.Tensor"], Mapping[str, Any]], Any]


def _encodec(weights: Mapping[str, "torch.Tensor"], config: Mapping[str, Any]) -> Any:
    from tokenizers_audio.encodec_weights import rvq_codec_from_encodec

    return rvq_codec_from_encodec(weights, config)


def _dac(weights: Mapping[str, "torch.Tensor"], config: Mapping[str, Any]) -> Any:
    from tokenizers_audio.dac_weights import rvq_codec_from_dac

    return rvq_codec_from_dac(weights, config)


SOURCES: dict[str, Source] = {
    "encodec": Source(
        title="EnCodec (Défossez et al., 2022)",
        layout="transformers' EncodecModel (config.json + model.safetensors, e.g. facebook/encodec_24khz)",
        builds="RVQAudioCodec", tags=("audio-tokenizer",), build=_encodec),
    "dac": Source(
        title="DAC, the Descript Audio Codec (Kumar et al., 2023)",
        layout="transformers' DacModel (config.json + model.safetensors, e.g. descript/dac_16khz)",
        builds="RVQAudioCodec", tags=("audio-tokenizer",), build=_dac),
}


def _weights_file(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"src: {src} is neither a folder nor a weights file")
    for name in WEIGHT_NAMES:
        if (src / name).is_file():
            return src / name
    found = sorted(p.name for p in src.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES))
    if len(found) == 1:
        return src / found[0]
    raise FileNotFoundError(f"src: {src} holds no single weights file (looked for {', '.join(WEIGHT_NAMES)}; found {found or 'none'})")


def _state_dict(loaded: Any, path: Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a loaded checkpoint; training checkpoints nest them under ``state_dict`` / ``model``."""
    import torch

    for key in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return dict(loaded)


def read_published(src: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """``(weights, config)`` of a published checkpoint: a safetensors or (with ``allow_pickle``) pickle file and its config.json."""
    src = Path(src)
    path = _weights_file(src)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"src: {path} is a pickle; unpickling can run code from the file, so it is loaded only with "
                             "--allow-pickle (allow_pickle=True). Prefer the project's safetensors file if it has one.")
        import torch

        print(f"mmgen convert: WARNING: unpickling {path} (--allow-pickle); only do this with files you trust", file=sys.stderr)
        weights = _state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    else:
        raise ValueError(f"src: {path} is not a weights file (.safetensors, or a pickle {', '.join(PICKLE_SUFFIXES)})")
    config_path = (src if src.is_dir() else src.parent) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"src: no config.json next to {path}; the conversion reads the model's sizes from it")
    return weights, json.loads(config_path.read_text())


def convert(source: str, src: str | Path, dst: str | Path, *, allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Convert the ``source`` project's checkpoint at ``src`` into an mmgen folder ``dst``; returns ``dst``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"dst: {dst} exists; pass --overwrite (overwrite=True) to replace it")
    spec = SOURCES[source]
    weights, config = read_published(src, allow_pickle=allow_pickle)
    model = spec.build(weights, config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        write_model_card(
            staging, title=f"{spec.title}, converted to mmgen", config=dict(model.config),
            data=f"Not trained by mmgen: the published weights of {spec.title}, read from {Path(src).name} "
                 f"({spec.layout}) by `mmgen convert --from {source}`. The weights keep their source's license; "
                 f"check it before you share this folder.",
            training={"source": source, "source_layout": spec.layout, "parameters": sum(p.numel() for p in model.parameters())},
            metrics={}, usage=loading_code(spec.builds, str(dst)),
            summary=f"{spec.title}'s weights as an mmgen `{spec.builds}`; its outputs equal the original's (see the "
                    f"README's 'Bring your own weights').",
            tags=("converted", source, *spec.tags), license=None)
        if dst.exists():
            shutil.rmtree(dst)
        staging.rename(dst)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dst
