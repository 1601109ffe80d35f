"""``mmgen convert --from SOURCE SRC DST``: published weights of another project into an mmgen folder.

SRC is the folder the original publishes (``config.json`` next to ``model.safetensors``, as on the hub)
or a weights file with its ``config.json`` beside it; for a generator (LlamaGen, VAR), a folder with its
two checkpoints (GPT and tokenizer, told apart by their keys) and optionally a ``config.json`` of
``{"gpt": {...}, "tokenizer": {...}}`` with the original constructors' arguments where the weights
do not determine them. Safetensors are read as they are; a pickle
(``.bin``, ``.pt``, ``.pth``, ``.th``, ``.ckpt``) is loaded only with ``allow_pickle=True``
(``--allow-pickle``), and then with ``torch.load(weights_only=True)`` and a warning, since unpickling
runs code from the file. DST gets the converted model saved by ``save_pretrained`` and a model card
that names the source; it is written next to DST and renamed into place, so a failed conversion
leaves nothing half-written, and an existing DST is replaced only with ``overwrite``.
"""

from __future__ import annotations

import importlib
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

__all__ = ["SOURCES", "Source", "convert", "load_weights", "read_published"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".th", ".ckpt")
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class Source:
    """A project whose weights convert: what it is, what mmgen builds from it, and the function that does it.

    ``build(src, allow_pickle)`` reads the published folder or file and returns the mmgen model or pipeline.
    """

    title: str
    layout: str
    builds: str
    tags: tuple[str, ...]
    build: Callable[[Path, bool], Any]


def _one_file(module: str, function: str) -> Callable[[Path, bool], Any]:
    """A source whose folder holds one weights file and its config.json, converted by ``module.function(weights, config)``."""
    def build(src: Path, allow_pickle: bool) -> Any:
        return getattr(importlib.import_module(module), function)(*read_published(src, allow_pickle=allow_pickle))
    return build


def _llamagen(src: Path, allow_pickle: bool) -> Any:
    import math

    from mmgen.llamagen_weights import llamagen_generator
    from pipelines import NextTokenPipeline
    from tokenizers_visual.llamagen_weights import llamagen_vq_config, vq_tokenizer_from_llamagen

    parts, config = _generator_parts(src, allow_pickle, gpt_key="tok_embeddings.weight", source="LlamaGen")
    generator = llamagen_generator(parts["gpt"], config.get("gpt", {}))
    tokenizer_config = dict(config.get("tokenizer", {}))
    if "image_size" not in tokenizer_config:  # the image whose grid the GPT generates
        grid = math.isqrt(generator.gpt.cfg.max_seq_len)
        tokenizer_config["image_size"] = grid * llamagen_vq_config(tokenizer_config, parts["tokenizer"]).downsample
    tokenizer = vq_tokenizer_from_llamagen(parts["tokenizer"], tokenizer_config)
    return NextTokenPipeline(gpt=generator.gpt, tokenizer=tokenizer, head=generator.head, conditioner=generator.conditioner,
                             null_condition_trained=True, rotary_coords="input")


def _var(src: Path, allow_pickle: bool) -> Any:
    from mmgen.var_weights import var_generator
    from pipelines import NextScalePipeline
    from tokenizers_visual.var_weights import multiscale_vq_from_var

    parts, config = _generator_parts(src, allow_pickle, gpt_key="class_emb.weight", source="VAR")
    generator, patch_nums = var_generator(parts["gpt"], config.get("gpt", {}))
    tokenizer = multiscale_vq_from_var(parts["tokenizer"], {"v_patch_nums": list(patch_nums), **config.get("tokenizer", {})})
    return NextScalePipeline(gpt=generator.gpt, tokenizer=tokenizer, head=generator.head, conditioner=generator.conditioner,
                             null_condition_trained=True)


SOURCES: dict[str, Source] = {
    "encodec": Source(
        title="EnCodec (Défossez et al., 2022)",
        layout="transformers' EncodecModel (config.json + model.safetensors, e.g. facebook/encodec_24khz)",
        builds="RVQAudioCodec", tags=("audio-tokenizer",), build=_one_file("tokenizers_audio.encodec_weights", "rvq_codec_from_encodec")),
    "dac": Source(
        title="DAC, the Descript Audio Codec (Kumar et al., 2023)",
        layout="transformers' DacModel (config.json + model.safetensors, e.g. descript/dac_16khz)",
        builds="RVQAudioCodec", tags=("audio-tokenizer",), build=_one_file("tokenizers_audio.dac_weights", "rvq_codec_from_dac")),
    "snac": Source(
        title="SNAC, the Multi-Scale Neural Audio Codec (Siuzdak et al., 2024)",
        layout="the snac package's folder (config.json + pytorch_model.bin, e.g. hubertsiuzdak/snac_24khz)",
        builds="MultiScaleAudioCodec", tags=("audio-tokenizer",), build=_one_file("tokenizers_audio.snac_weights", "multiscale_codec_from_snac")),
    "titok": Source(
        title="TiTok, a 1D image tokenizer (Yu et al., 2024)",
        layout="the 1d-tokenizer hub folder (config.json + weights, e.g. yucornetto/tokenizer_titok_l32_imagenet)",
        builds="TiTokTokenizer", tags=("image-tokenizer",), build=_one_file("tokenizers_visual.titok_weights", "tokenizer_from_titok")),
    "llamagen": Source(
        title="LlamaGen (Sun et al., 2024), class-conditional",
        layout="a folder with the GPT checkpoint (c2i_*.pt) and the VQ checkpoint (vq_ds16_c2i.pt), optional config.json",
        builds="NextTokenPipeline", tags=("image-generation",), build=_llamagen),
    "var": Source(
        title="VAR (Tian et al., 2024)",
        layout="a folder with the VAR checkpoint (var_d*.pth) and the VQVAE checkpoint (vae_ch160v4096z32.pth), optional config.json",
        builds="NextScalePipeline", tags=("image-generation",), build=_var),
}


def _weights_file(src: Path) -> Path:
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"src: {src} is neither a folder nor a weights file")
    for name in WEIGHT_NAMES:
        if (src / name).is_file():
            return src / name
    found = _weight_files(src)
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"src: {src} holds no single weights file (looked for {', '.join(WEIGHT_NAMES)}; "
                            f"found {[p.name for p in found] or 'none'})")


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES))


def _state_dict(loaded: Any, path: Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a loaded checkpoint; training checkpoints nest them under ``state_dict`` / ``model``."""
    import torch

    for key in ("state_dict", "model", "module"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return dict(loaded)


def load_weights(path: Path, *, allow_pickle: bool) -> dict[str, "torch.Tensor"]:
    """One weights file: safetensors as it is, a pickle only when allowed (tensors only, ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"src: {path} is not a weights file (.safetensors, or a pickle {', '.join(PICKLE_SUFFIXES)})")
    if not allow_pickle:
        raise ValueError(f"src: {path} is a pickle; unpickling can run code from the file, so it is loaded only with "
                         "--allow-pickle (allow_pickle=True). Prefer the project's safetensors file if it has one.")
    import pickle

    import torch

    print(f"mmgen convert: WARNING: unpickling {path} (--allow-pickle); only do this with files you trust", file=sys.stderr)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"src: {path} holds Python objects besides tensors (a training checkpoint's arguments or "
                         f"optimizer), which mmgen does not unpickle; save its state dict alone with "
                         f"torch.save(torch.load(path, weights_only=False)['model'], 'weights.pt') where you trust it") from error
    return _state_dict(loaded, path)


def read_published(src: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """``(weights, config)`` of a published checkpoint: a safetensors or (with ``allow_pickle``) pickle file and its config.json."""
    src = Path(src)
    path = _weights_file(src)
    weights = load_weights(path, allow_pickle=allow_pickle)
    config_path = (src if src.is_dir() else src.parent) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"src: no config.json next to {path}; the conversion reads the model's sizes from it")
    return weights, json.loads(config_path.read_text())


def _generator_parts(src: Path, allow_pickle: bool, *, gpt_key: str,
                     source: str) -> tuple[dict[str, dict[str, "torch.Tensor"]], dict[str, Any]]:
    """A generator's two checkpoints in one folder, told apart by their keys (the GPT's holds ``gpt_key``), and the
    optional ``config.json`` (``{"gpt": {...}, "tokenizer": {...}}``: the original constructors' arguments)."""
    if not src.is_dir():
        raise FileNotFoundError(f"src: {src} must be a folder holding the {source} GPT and tokenizer checkpoints")
    files = _weight_files(src)
    if len(files) != 2:
        raise FileNotFoundError(f"src: {src} must hold exactly two weights files (the {source} GPT and its tokenizer), "
                                f"found {[p.name for p in files] or 'none'}")
    loaded = [load_weights(path, allow_pickle=allow_pickle) for path in files]
    gpt = [i for i, weights in enumerate(loaded) if gpt_key in weights]
    if len(gpt) != 1:
        raise ValueError(f"src: exactly one of {[p.name for p in files]} must be the {source} GPT (holding {gpt_key!r}); "
                         f"{len(gpt)} are")
    config_path = src / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    unknown = sorted(set(config) - {"gpt", "tokenizer"})
    if unknown:
        raise ValueError(f"src: config.json may hold 'gpt' and 'tokenizer' entries, got {unknown}")
    return {"gpt": loaded[gpt[0]], "tokenizer": loaded[1 - gpt[0]]}, config


def convert(source: str, src: str | Path, dst: str | Path, *, allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Convert the ``source`` project's checkpoint at ``src`` into an mmgen folder ``dst``; returns ``dst``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"dst: {dst} exists; pass --overwrite (overwrite=True) to replace it")
    spec = SOURCES[source]
    model = spec.build(Path(src), allow_pickle)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging)
        write_model_card(
            staging, title=f"{spec.title}, converted to mmgen", config=dict(model.config),
            data=f"Not trained by mmgen: the published weights of {spec.title}, read from {Path(src).name} "
                 f"({spec.layout}) by `mmgen convert --from {source}`. The weights keep their source's license; "
                 f"check it before you share this folder.",
            training={"source": source, "source_layout": spec.layout, "parameters": _parameter_count(model)},
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


def _parameter_count(model: Any) -> int:
    """Parameters of a model, or of every module component of a pipeline."""
    import torch

    modules = [c for c in getattr(model, "components", {}).values() if isinstance(c, torch.nn.Module)] or [model]
    return sum(p.numel() for module in modules for p in module.parameters())
