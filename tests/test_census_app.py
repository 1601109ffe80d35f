"""Bad input to the tokenizers, the pipelines and the CLI: every mistake a user can make is a clear error.

One table, one test. A row is a real mistake (a call with one bad argument), the exception it must raise and a
fragment of the message that names the argument and what was expected. CLI rows run ``mmgen.app.cli.main`` in
process: exit status 2, the fragment on stderr and no traceback. Components are tiny and built once; nothing
downloads.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from audio_fixtures import sines
from pipeline_fixtures import (
    GPT_SIZE,
    NUM_CLASSES,
    build,
    class_conditioner,
    flex_tokenizer,
    images,
    kl_tokenizer,
    multiscale_tokenizer,
    text_conditioner,
    vq_tokenizer,
)

from mmgen.app.cli import main
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import MeshFolder, PrimitivesDataset, TonesDataset
from mmgen.gpt import GPTConfig
from mmgen.heads import DepthHeadConfig
from pipelines import ARPipeline, NextScalePipeline, NextTokenPipeline, NextXPipeline, first_frame_prefill
from tokenizers_audio import MultiScaleAudioCodec, MultiScaleAudioConfig, RVQAudioCodec, RVQAudioConfig
from tokenizers_audio import SingleCodebookAudioCodec, SingleCodebookAudioConfig
from tokenizers_visual import (
    CausalVideoConfig,
    CausalVideoTokenizer,
    FlexImageTokenizer,
    KLImageTokenizer,
    MultiScaleVQTokenizer,
    OctreeConfig,
    OctreeTokenizer,
    VariationalShapeConfig,
    VariationalShapeTokenizer,
    VQImageTokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASS_NAMES = ["a red circle", "a blue square", "a green triangle", "a cyan circle", "a pink square"]
AUDIO = {"sample_rate": 16000, "clip_samples": 2000, "strides": [2, 4], "base_channels": 4, "dim": 8, "codebook_size": 16}
# images are 16x16: VQ and KL give a 4x4 grid (32 codes, 4 latent channels), the pyramid has scales 1, 2, 4 (21 ids),
# flex 8 ids of 16 codes; audio hops 8 samples, RVQ has 4 codebooks (the generator models 2), levels pool by 4, 2, 1


def _long(*shape: int, value: int = 0) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.long)


def _audio(batch: int = 2, samples: int = 400) -> torch.Tensor:
    return sines(batch, samples)


@pytest.fixture(scope="module")
def P(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny components, their saved folders and a scratch folder for the rows' own files."""
    root = tmp_path_factory.mktemp("census")
    torch.manual_seed(0)
    p = SimpleNamespace(root=root, vq=vq_tokenizer(), kl=kl_tokenizer(), ms=multiscale_tokenizer(), flex=flex_tokenizer(),
                        rvq=RVQAudioCodec(RVQAudioConfig(**AUDIO, num_quantizers=4, generator_quantizers=2)).eval(),
                        msa=MultiScaleAudioCodec(MultiScaleAudioConfig(**AUDIO, codebook_dim=4)).eval(),
                        single=SingleCodebookAudioCodec(SingleCodebookAudioConfig(**AUDIO, decoder_dim=16, decoder_layers=1)).eval())
    p.nt = build(NextTokenPipeline, p.vq)  # class-conditional, no class names, no null condition
    p.named = build(NextTokenPipeline, p.vq, class_names=CLASS_NAMES, null_condition_trained=True)
    p.text = build(NextTokenPipeline, p.vq, text_conditioner())
    p.flexp = build(NextTokenPipeline, p.flex)
    p.audio = build(NextTokenPipeline, p.rvq)
    p.ns = build(NextScalePipeline, p.ms)
    p.nx = build(NextXPipeline, p.kl, head={"width": 16, "depth": 1}, num_flow_steps=2)
    for name in ("vq", "kl", "ms", "flex", "rvq", "msa", "single", "nt"):
        getattr(p, name).save_pretrained(str(root / name))

    def write(name: str, text: str) -> Path:
        path = root / name
        path.write_text(text)
        return path

    def copy(source: str, name: str) -> Path:
        """A fresh copy of a saved folder, for a row to break."""
        target = root / f"{name}-{len(list(root.iterdir()))}"
        shutil.copytree(root / source, target)
        return target

    p.write, p.copy = write, copy
    return p


# ---- the table ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    call: Callable[[SimpleNamespace], Any]  # CLI rows: gives the argv
    error: type[Exception] | None  # None: a CLI row (exit 2)
    fragment: str


def api(id: str, call: Callable[[SimpleNamespace], Any], error: type[Exception], fragment: str) -> Row:
    return Row(id, call, error, fragment)


def cli(id: str, argv: Callable[[SimpleNamespace], list[str]], fragment: str) -> Row:
    return Row(id, argv, None, fragment)


def _published(p: SimpleNamespace, name: str, *files: str, config: bool = True) -> str:
    """A folder as another project publishes it: ``files`` (safetensors or a pickle of one tensor) and a config.json."""
    from safetensors.torch import save_file

    folder = p.root / name
    folder.mkdir(exist_ok=True)
    for file in files:
        if file.endswith(".safetensors"):
            save_file({"w": torch.zeros(1)}, str(folder / file))
        else:
            torch.save({"w": torch.zeros(1)}, folder / file)
    if config:
        (folder / "config.json").write_text("{}")
    return str(folder)


def _weights_of_another_size(p: SimpleNamespace) -> Path:
    folder = p.copy("vq", "vq_edited")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "codebook_size": 64}))
    return folder


def _pickle_only(p: SimpleNamespace) -> Path:
    folder = p.copy("vq", "vq_pickled")
    (folder / "diffusion_pytorch_model.safetensors").rename(folder / "pytorch_model.bin")
    return folder


def _unknown_config_key(p: SimpleNamespace) -> Path:
    folder = p.copy("kl", "kl_newer")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "latent_scale": 0.18}))
    return folder


def _truncated(p: SimpleNamespace, source: str, file: str) -> Path:
    folder = p.copy(source, f"{source}_truncated_{file.replace('/', '_')}")
    (folder / file).write_bytes((folder / file).read_bytes()[:20])
    return folder


def _without(p: SimpleNamespace, source: str, file: str) -> Path:
    folder = p.copy(source, f"{source}_without_{file.replace('/', '_')}")
    (folder / file).unlink()
    return folder


def _fitted_kl(p: SimpleNamespace) -> KLImageTokenizer:
    tok = kl_tokenizer()
    tok.fit_quantizer(tok.encode(images(2)))
    return tok


def _generator_config(p: SimpleNamespace, name: str, **keys: str) -> Path:
    """A tiny generator run config around a saved tokenizer (YAML flow mappings); ``keys`` add or replace keys."""
    values = {"kind": "generator", "pipeline": "NextTokenPipeline", "tokenizer": str(p.root / "vq"),
              "gpt": "{dim: 32, n_layers: 1, n_heads: 2}", "data": "{dataset: shapes, image_size: 16, num_items: 16}",
              "optim": "{steps: 1, batch_size: 8}", "output_dir": str(p.root / f"run_{name}"), **keys}
    return p.write(f"{name}.yaml", "".join(f"{k}: {v}\n" for k, v in values.items()))


def _non_empty(p: SimpleNamespace, name: str) -> Path:
    (p.root / name).mkdir()
    (p.root / name / "keep.txt").write_text("mine")
    return p.root / name


def _generate(p: SimpleNamespace, *args: str, pipeline: str | Path | None = None) -> list[str]:
    return ["generate", str(pipeline or p.root / "nt"), "--out", str(p.root / "samples"), "--device", "cpu", *args]


def _fresh(pipeline_class: type, tokenizer: Any, **config: Any) -> Any:
    """``pipeline_class.from_tokenizer`` with a class conditioner and a one-layer GPT."""
    return pipeline_class.from_tokenizer(tokenizer, conditioner=class_conditioner(), gpt=GPT_SIZE, **config)


VIDEO = {"image_size": 16, "num_frames": 5, "channels": 4, "fsq_levels": [4, 4], "latent_dim": 4}


def _video(bottleneck: str = "fsq") -> CausalVideoTokenizer:
    """A tiny causal video tokenizer: 5 frames of 16x16 -> 2 latent frames of 2x2."""
    torch.manual_seed(0)
    return CausalVideoTokenizer(CausalVideoConfig(**VIDEO, bottleneck=bottleneck)).eval()


def _clip(frames: int = 5, size: int = 16) -> torch.Tensor:
    return torch.rand(1, frames, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _octree() -> OctreeTokenizer:
    return OctreeTokenizer(OctreeConfig(resolution=8))


def _vat() -> VariationalShapeTokenizer:
    torch.manual_seed(0)
    return VariationalShapeTokenizer(VariationalShapeConfig(resolution=8, num_points=32, width=16, heads=2, num_queries=32)).eval()


def _open_mesh(p: SimpleNamespace) -> Path:
    """A folder with one mesh that has a face missing (not closed)."""
    import trimesh

    box = trimesh.creation.box()
    folder = p.root / "open_meshes"
    folder.mkdir(exist_ok=True)
    trimesh.Trimesh(box.vertices, box.faces[1:]).export(folder / "open.ply")
    return folder


def _replace_tokens(tokens: torch.Tensor) -> Callable[..., dict[str, torch.Tensor]]:
    return lambda pipe, step, timestep, kwargs: {"tokens": tokens}


ROWS = [
    # ---- VQImageTokenizer ----
    api("VQ.encode: uint8 images", lambda p: p.vq.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)),
        TypeError, "images must be a float tensor [B, 3, H, W] in [-1, 1], got torch.uint8"),
    api("VQ.encode: grey images (1 channel)", lambda p: p.vq.encode(torch.zeros(1, 1, 16, 16)),
        ValueError, "images must have shape [B, 3, H, W], got (1, 1, 16, 16)"),
    api("VQ.encode: pixels in [0, 255]", lambda p: p.vq.encode(torch.full((1, 3, 16, 16), 255.0)),
        ValueError, "images must hold values in [-1, 1]"),
    api("VQ.encode: size not a multiple of the downsampling", lambda p: p.vq.encode(torch.zeros(1, 3, 18, 18)),
        ValueError, "images size 18x18 must be divisible by the downsampling factor 4"),
    api("VQ.decode: float ids", lambda p: p.vq.decode(torch.zeros(1, 4, 4)),
        TypeError, "ids must be an integer tensor, got torch.float32"),
    api("VQ.decode: id beyond the codebook", lambda p: p.vq.decode(_long(1, 4, 4, value=32)),
        ValueError, "ids holds 32, outside the codebook [0, 32)"),
    api("VQ.decode: flat ids", lambda p: p.vq.decode(_long(1, 16)),
        ValueError, "ids must have shape [B, h, w]"),
    api("VQ.decode: a 3x3 grid of a 4x4 tokenizer", lambda p: p.vq.decode(_long(1, 3, 3)),
        ValueError, "ids: expected a 4x4 grid (the tokenizer's grid_shape for 16x16 images), got 3x3"),
    api("VQ.decode_latents: wrong channels", lambda p: p.vq.decode_latents(torch.zeros(1, 8, 4, 4)),
        ValueError, "latents must have shape [B, 4, h, w], got (1, 8, 4, 4)"),
    api("VQ.from_pretrained: missing folder", lambda p: VQImageTokenizer.from_pretrained(p.root / "nowhere"),
        ValueError, "is neither a local folder nor a hub repo id"),
    api("VQ.from_pretrained: a KL tokenizer's folder", lambda p: VQImageTokenizer.from_pretrained(p.root / "kl"),
        ValueError, "holds a KLImageTokenizer checkpoint, not a VQImageTokenizer"),
    api("VQ.from_pretrained: a pipeline folder", lambda p: VQImageTokenizer.from_pretrained(p.root / "nt"),
        ValueError, "is not a VQImageTokenizer checkpoint: expected config.json in it"),
    api("VQ.from_pretrained: pickled weights only", lambda p: VQImageTokenizer.from_pretrained(_pickle_only(p)),
        ValueError, "has only pickled weights (pytorch_model.bin)"),
    api("VQ.from_pretrained: config edited after saving", lambda p: VQImageTokenizer.from_pretrained(_weights_of_another_size(p)),
        ValueError, "has shape (32,), the config expects (64,)"),
    # ---- KLImageTokenizer ----
    api("KL.encode: numpy images", lambda p: p.kl.encode(np.zeros((1, 3, 16, 16), dtype=np.float32)),
        TypeError, "images must be a float tensor [B, 3, H, W] in [-1, 1], got ndarray"),
    api("KL.encode: a seed for generator", lambda p: p.kl.encode(images(1), sample=True, generator=3),
        TypeError, "generator must be a torch.Generator (or None), got int"),
    api("KL.decode: integer latents", lambda p: p.kl.decode(_long(1, 4, 4, 4)),
        TypeError, "latents must be a float tensor [B, 4, h, w], got torch.int64"),
    api("KL.decode: 8 channels for latent_dim 4", lambda p: p.kl.decode(torch.zeros(1, 8, 4, 4)),
        ValueError, "latents must have shape [B, 4, h, w], got (1, 8, 4, 4)"),
    api("KL.decode: a 3x3 grid of a 4x4 tokenizer", lambda p: p.kl.decode(torch.zeros(1, 4, 3, 3)),
        ValueError, "latents: expected a 4x4 grid (the tokenizer's grid_shape for 16x16 images), got 3x3"),
    api("KL.quantize: before fit_quantizer", lambda p: p.kl.quantize(torch.zeros(1, 4, 4, 4)),
        RuntimeError, "call fit_quantizer(tok.encode(images)) first"),
    api("KL.fit_quantizer: one latent position", lambda p: kl_tokenizer().fit_quantizer(torch.zeros(1, 4, 1, 1)),
        ValueError, "fit_quantizer needs at least two latent positions"),
    api("KL.fit_quantizer: constant latents", lambda p: kl_tokenizer().fit_quantizer(torch.zeros(2, 4, 4, 4)),
        ValueError, "a latent channel is constant over the sample"),
    api("KL.dequantize: 3 ids per position for 4 channels", lambda p: _fitted_kl(p).dequantize(_long(1, 4, 4, 3)),
        ValueError, "ids must have shape [B, h, w, 4] (one id per latent channel)"),
    api("KL.dequantize: id 64 of 64 levels", lambda p: _fitted_kl(p).dequantize(_long(1, 4, 4, 4, value=64)),
        ValueError, "ids holds 64, outside the codebook [0, 64)"),
    api("KL.from_pretrained: truncated config.json", lambda p: KLImageTokenizer.from_pretrained(_truncated(p, "kl", "config.json")),
        ValueError, "config.json is not valid JSON"),
    api("KL.from_pretrained: a config key this version lacks", lambda p: KLImageTokenizer.from_pretrained(_unknown_config_key(p)),
        ValueError, "unknown KLConfig key(s) ['latent_scale']"),
    # ---- MultiScaleVQTokenizer ----
    api("MultiScaleVQ.encode: 32x32 images for a 16x16 tokenizer", lambda p: p.ms.encode(torch.zeros(1, 3, 32, 32)),
        ValueError, "images must be 16x16 for this tokenizer (patch_nums end at 4), got 32x32"),
    api("MultiScaleVQ.encode: a bool mask", lambda p: p.ms.encode(torch.zeros(1, 3, 16, 16, dtype=torch.bool)),
        TypeError, "images must be a float tensor"),
    api("MultiScaleVQ.decode: 2 of 3 scales", lambda p: p.ms.decode([_long(1, 1, 1), _long(1, 2, 2)]),
        ValueError, "ids must be a [B, L] tensor or a list of 3 per-scale tensors (patch_nums (1, 2, 4)), got 2"),
    api("MultiScaleVQ.decode: flat ids of the wrong length", lambda p: p.ms.decode(_long(1, 20)),
        ValueError, "flat ids must have shape [B, 21]"),
    api("MultiScaleVQ.decode: the last scale 3x3", lambda p: p.ms.decode([_long(1, 1, 1), _long(1, 2, 2), _long(1, 3, 3)]),
        ValueError, "ids[2] must have shape [B, 4, 4] or [B, 16]"),
    api("MultiScaleVQ.decode: id beyond the codebook",
        lambda p: p.ms.decode([_long(1, 1, 1), _long(1, 2, 2, value=32), _long(1, 4, 4)]),
        ValueError, "ids[1] holds 32, outside the codebook [0, 32)"),
    api("MultiScaleVQ.decode: a numpy array", lambda p: p.ms.decode(np.zeros((1, 21), dtype=np.int64)),
        ValueError, "got ndarray"),
    api("MultiScaleVQ.ids_to_codes: scale 3 of 3", lambda p: p.ms.ids_to_codes(_long(1, 16), scale_index=3),
        ValueError, "scale_index must be an int in [0, 3), got 3"),
    api("MultiScaleVQ.ids_to_codes: ids of another scale", lambda p: p.ms.ids_to_codes(_long(1, 4), scale_index=2),
        ValueError, "ids of scale 2 must have shape [B, 4, 4] or [B, 16], got (1, 4)"),
    api("MultiScaleVQ.next_scale_input: codes of another scale", lambda p: p.ms.next_scale_input(
        scale_index=1, f_hat=None, codes_BChw=torch.zeros(1, 4, 4, 4)),
        ValueError, "codes of scale 1 must have shape [B, 4, 2, 2]"),
    api("MultiScaleVQ.decode_f_hat: pixel-space channels", lambda p: p.ms.decode_f_hat(torch.zeros(1, 3, 4, 4)),
        ValueError, "f_hat must have shape [B, 4, 4, 4] (codebook_dim, the finest scale), got (1, 3, 4, 4)"),
    api("MultiScaleVQ.from_pretrained: truncated weights", lambda p: MultiScaleVQTokenizer.from_pretrained(
        _truncated(p, "ms", "diffusion_pytorch_model.safetensors")), ValueError, "is not a readable safetensors file"),
    # ---- FlexImageTokenizer ----
    api("Flex.encode: num_tokens=0", lambda p: p.flex.encode(images(1), num_tokens=0),
        ValueError, "num_tokens must be an int in [1, 8] (the tokenizer's max_tokens), got 0"),
    api("Flex.encode: 32x32 images for a 16x16 tokenizer", lambda p: p.flex.encode(torch.zeros(1, 3, 32, 32)),
        ValueError, "images must be 16x16 for this tokenizer, got 32x32"),
    api("Flex.decode: 9 ids of at most 8", lambda p: p.flex.decode(_long(1, 9)),
        ValueError, "ids length k must be an int in [1, 8]"),
    api("Flex.decode: ids [B, k, 1]", lambda p: p.flex.decode(_long(1, 8, 1)),
        ValueError, "ids must have shape [B, k] with 1 <= k <= 8, got (1, 8, 1)"),
    api("Flex.decode: id beyond the codebook", lambda p: p.flex.decode(_long(1, 8, value=16)),
        ValueError, "ids holds 16, outside the codebook [0, 16)"),
    api("Flex.from_pretrained: no weights", lambda p: FlexImageTokenizer.from_pretrained(
        _without(p, "flex", "diffusion_pytorch_model.safetensors")),
        ValueError, "has no weights: expected diffusion_pytorch_model.safetensors"),
    # ---- RVQAudioCodec ----
    api("RVQ.encode: stereo", lambda p: p.rvq.encode(_audio().repeat(1, 2, 1)),
        ValueError, "audio has 2 channels, but this codec is mono"),
    api("RVQ.encode: int16 samples", lambda p: p.rvq.encode((_audio() * 32767).to(torch.int16)),
        TypeError, "audio must be a float waveform tensor [B, 1, T] in [-1, 1], got torch.int16"),
    api("RVQ.encode: int16 range as floats", lambda p: p.rvq.encode(_audio() * 32767),
        ValueError, "audio must hold samples in [-1, 1]"),
    api("RVQ.encode: 44.1 kHz audio", lambda p: p.rvq.encode(_audio(), sample_rate=44100),
        ValueError, "sample_rate=44100, but this codec works at 16000 Hz"),
    api("RVQ.encode: more quantizers than trained", lambda p: p.rvq.encode(_audio(), num_quantizers=5),
        ValueError, "num_quantizers must be an int in [1, 4] (the codebooks trained), got 5"),
    api("RVQ.encode: 3 lengths for 2 clips", lambda p: p.rvq.encode(_audio(), lengths=torch.tensor([100, 200, 300])),
        ValueError, "lengths must be 2 integer sample counts (one per item)"),
    api("RVQ.encode: a length beyond the padded clip", lambda p: p.rvq.encode(_audio(), lengths=torch.tensor([100, 500])),
        ValueError, "lengths must lie in [1, 400] (the padded length), got [100, 500]"),
    api("RVQ.encode: a length under one frame", lambda p: p.rvq.encode(_audio(), lengths=torch.tensor([4, 400])),
        ValueError, "lengths must be at least one frame (8 samples)"),
    api("RVQ.encode: lengths as text", lambda p: p.rvq.encode(_audio(), lengths="400"),
        TypeError, "lengths must be 2 integer sample counts (one per item), got '400'"),
    api("RVQ.encode: a clip shorter than a frame", lambda p: p.rvq.encode(_audio(samples=4)),
        ValueError, "audio holds 4 samples, shorter than one frame of this codec (8 samples)"),
    api("RVQ.encode: a silent clip", lambda p: p.rvq.encode(torch.cat([_audio(1), torch.zeros(1, 1, 400)])),
        ValueError, "audio items [1] are silent"),
    api("RVQ.encode: NaN samples", lambda p: p.rvq.encode(_audio().index_fill(2, torch.tensor([7]), float("nan"))),
        ValueError, "audio holds NaN or infinite samples"),
    api("RVQ.encode: [B, T] without the channel", lambda p: p.rvq.encode(_audio()[:, 0]),
        ValueError, "audio must have shape [B, 1, T] (batch, mono channel, samples), got (2, 400)"),
    api("RVQ.decode: 5 codebooks of 4", lambda p: p.rvq.decode(_long(1, 10, 5)),
        ValueError, "ids holds 5 codebooks, but this codec was trained with 4"),
    api("RVQ.decode: ids [B, t]", lambda p: p.rvq.decode(_long(1, 10)),
        ValueError, "ids must have shape [B, t, K] (frames × codebooks), got (1, 10)"),
    api("RVQ.decode: id beyond the codebook", lambda p: p.rvq.decode(_long(1, 10, 2, value=16)),
        ValueError, "ids holds 16, outside the codebook [0, 16)"),
    api("RVQ.streaming_encoder: a non-causal codec", lambda p: p.rvq.streaming_encoder(),
        ValueError, "streaming needs a codec built with causal=True"),
    api("RVQ.streaming_decoder: a non-causal codec", lambda p: p.rvq.streaming_decoder(),
        ValueError, "streaming needs a codec built with causal=True"),
    api("RVQ.to_positions: fewer codebooks than the generator models", lambda p: p.rvq.to_positions(_long(1, 10, 1)),
        ValueError, "ids has 1 codebooks; the generator models 2"),
    api("RVQ.discriminator_loss: no discriminator", lambda p: p.rvq.discriminator_loss(_audio()),
        ValueError, "discriminator_loss needs a codec built with use_discriminator=True"),
    api("RVQ.from_pretrained: a multi-scale codec's folder", lambda p: RVQAudioCodec.from_pretrained(p.root / "msa"),
        ValueError, "holds a MultiScaleAudioCodec checkpoint, not a RVQAudioCodec"),
    # ---- MultiScaleAudioCodec ----
    api("MultiScaleAudio.encode: an empty batch", lambda p: p.msa.encode(torch.zeros(0, 1, 400)),
        ValueError, "audio is an empty batch"),
    api("MultiScaleAudio.decode: 2 of 3 levels", lambda p: p.msa.decode([_long(1, 13), _long(1, 25)]),
        ValueError, "ids must be a [B, L] tensor or a list of 3 per-level tensors (vq_strides (4, 2, 1)), got 2 levels"),
    api("MultiScaleAudio.decode: a coarse level one token short", lambda p: p.msa.decode([_long(1, 12), _long(1, 25), _long(1, 50)]),
        ValueError, "ids[0] must have shape [1, 13] (ceil(50 / 4) for the finest level's 50 frames), got (1, 12)"),
    api("MultiScaleAudio.decode: flat ids of the wrong length", lambda p: p.msa.decode(_long(1, 400)),
        ValueError, "flat ids must have shape [B, 438]"),
    api("MultiScaleAudio.decode: the finest level without a batch", lambda p: p.msa.decode([_long(13), _long(25), _long(50)]),
        ValueError, "ids[2] (the finest level) must have shape [B, t], got (50,)"),
    api("MultiScaleAudio.decode: id beyond the codebook", lambda p: p.msa.decode([_long(1, 13), _long(1, 25, value=16), _long(1, 50)]),
        ValueError, "ids[1] holds 16, outside the codebook [0, 16)"),
    api("MultiScaleAudio.context_step: level 3 of 3", lambda p: p.msa.context_step(None, 3, _long(1, 63)),
        ValueError, "scale_index must be an int in [0, 3), got 3"),
    api("MultiScaleAudio.context_step: ids of another level", lambda p: p.msa.context_step(None, 0, _long(1, 125)),
        ValueError, "ids_Bn of level 0 must have shape [B, 63], got (1, 125)"),
    api("MultiScaleAudio.from_pretrained: a single-codebook codec's folder",
        lambda p: MultiScaleAudioCodec.from_pretrained(p.root / "single"),
        ValueError, "holds a SingleCodebookAudioCodec checkpoint, not a MultiScaleAudioCodec"),
    # ---- SingleCodebookAudioCodec ----
    api("SingleCodebook.encode: a bare waveform [T]", lambda p: p.single.encode(_audio()[0, 0]),
        ValueError, "audio must have shape [B, 1, T]"),
    api("SingleCodebook.decode: ids [B, t, 1]", lambda p: p.single.decode(_long(1, 10, 1)),
        ValueError, "ids must have shape [B, t] (one id per latent frame), got (1, 10, 1)"),
    api("SingleCodebook.decode: id beyond the codebook", lambda p: p.single.decode(_long(1, 10, value=16)),
        ValueError, "ids holds 16, outside the codebook [0, 16)"),
    api("SingleCodebook.decode_latents: wrong channels", lambda p: p.single.decode_latents(torch.zeros(1, 3, 10)),
        ValueError, "latents must have shape [B, 8, t] (dim channels per frame), got (1, 3, 10)"),
    api("SingleCodebook.from_pretrained: a file",
        lambda p: SingleCodebookAudioCodec.from_pretrained(p.root / "single" / "config.json"),
        ValueError, "is neither a local folder nor a hub repo id"),
    # ---- CausalVideoTokenizer ----
    api("Video.encode: frames of different sizes", lambda p: _video().encode([_clip()[0, 0], _clip(size=8)[0, 0]]),
        ValueError, "videos: all clips / frames must have one size, got sizes [(3, 8, 8), (3, 16, 16)]"),
    api("Video.encode: channels last", lambda p: _video().encode(_clip().permute(0, 1, 3, 4, 2)),
        ValueError, "videos must have 3 colour channels at dim 2, [B, T, 3, H, W], got (1, 5, 16, 16, 3) — channels last?"),
    api("Video.encode: a frame count it cannot take", lambda p: _video().encode(_clip(frames=7)),
        ValueError, "videos: this tokenizer takes 1 + k*4 frames (1, 5, 9, ...), got 7; the nearest are 5 or 9"),
    api("Video.encode: NaN pixels", lambda p: _video().encode(torch.where(_clip() > 0.9, float("nan"), _clip())),
        ValueError, "videos holds NaN pixels"),
    api("Video.encode: pixels in [0, 255]", lambda p: _video().encode((_clip() + 1) * 127.5),
        ValueError, "videos must hold values in [-1, 1]; found |value| = 255"),
    api("Video.encode: frames of another size than configured", lambda p: _video().encode(_clip(size=32)),
        ValueError, "videos: frames must be 16x16 for this tokenizer, got 32x32"),
    api("Video.decode: id beyond the codebook", lambda p: _video().decode(_long(1, 2, 2, 2, value=16)),
        ValueError, "ids holds 16, outside the codebook [0, 16)"),
    api("Video.decode: latents of the wrong channels", lambda p: _video("kl").decode(torch.zeros(1, 3, 2, 2, 2)),
        ValueError, "latents must have shape [B, 4, t >= 1, 2, 2], got (1, 3, 2, 2, 2)"),
    api("CausalVideoConfig: a clip length the time stride cannot take", lambda p: CausalVideoConfig(**{**VIDEO, "num_frames": 6}),
        ValueError, "num_frames must be 1 + k * temporal_downsample (4), got 6"),
    api("NextX.from_tokenizer: cells on a video grid", lambda p: _fresh(NextXPipeline, _video("kl"), entity="cell"),
        ValueError, "a (t, h, w) token grid (video) takes entity 'frame', 'token', 'image' or 'scale'; got entity='cell'"),
    api("NextX.from_tokenizer: a space-time pyramid that ends short of the grid",
        lambda p: _fresh(NextXPipeline, _video("kl"), entity="scale", patch_nums=[[1, 1, 1], [2, 1, 1]]),
        ValueError, "patch_nums must end at the latent grid (2, 2, 2), got (2, 1, 1)"),
    api("NextX.from_tokenizer: a space-time pyramid over ids", lambda p: _fresh(NextXPipeline, _video("fsq"), entity="scale"),
        ValueError, "entity='scale' needs continuous latents (and a FlowHead); a grid of ids has no coarse scales"),
    api("first_frame_prefill: a space-time pyramid has no first frame to give",
        lambda p: first_frame_prefill(_fresh(NextXPipeline, _video("kl"), entity="scale"), _clip()[:, 0]),
        ValueError, "first_frame_prefill needs a pattern that puts the first latent frame first; this pipeline's Scales order"),
    api("DepthHeadConfig: tied over codebooks of different sizes",
        lambda p: DepthHeadConfig(dim=8, codebook_sizes=[4, 8], tied=True),
        ValueError, "tied=True needs codebooks of one size (one shared table), got codebook_sizes=[4, 8]"),
    api("GPTConfig: a shared codebook table for one codebook", lambda p: GPTConfig(vocab_size=16, codebook_embed_dim=8),
        ValueError, "codebook_embed_dim shares one table among codebooks of one size; it needs at least two codebooks"),
    # ---- OctreeTokenizer and 3D data ----
    api("Octree.encode: a non-cubic grid", lambda p: _octree().encode(torch.ones(1, 8, 8, 4)),
        ValueError, "shapes must be occupancy grids [B, 8, 8, 8] (this tokenizer's resolution) or point clouds [B, N, 3]"),
    api("OctreeConfig: a side that is not a power of two", lambda p: OctreeConfig(resolution=12),
        ValueError, "resolution must be a power of two >= 2"),
    api("Octree.encode: an empty shape", lambda p: _octree().encode(torch.zeros(2, 8, 8, 8)),
        ValueError, "shape 0: occupancy is empty (no voxel is occupied): an empty shape has no octree"),
    api("Octree.encode: a point cloud with NaN", lambda p: _octree().encode(torch.full((1, 5, 3), float("nan"))),
        ValueError, "points hold NaN"),
    api("Octree.decode: an id beyond 8 bits", lambda p: _octree().decode(_long(1, 3, value=256)),
        ValueError, "ids holds id 256 outside codebook 0's vocabulary [0, 256)"),
    api("Octree.decode: a tree cut short", lambda p: _octree().decode(_long(1, 2, value=255)),
        ValueError, "ids row 0: ids end before the octree does"),
    api("VAT.encode: a point cloud with NaN", lambda p: _vat().encode(torch.full((1, 5, 3), float("nan"))),
        ValueError, "holds NaN or infinite coordinates (15 of them)"),
    api("VAT.encode: a grid of another resolution", lambda p: _vat().encode(torch.ones(1, 16, 16, 16)),
        ValueError, "must have resolution 8 (this tokenizer's config.resolution), got 16"),
    api("VAT.encode: an empty shape", lambda p: _vat().encode(torch.zeros(2, 8, 8, 8)),
        ValueError, "is an empty shape"),
    api("VariationalShapeConfig: a finest scale that is not num_latents",
        lambda p: VariationalShapeConfig(num_latents=16, scales=(1, 2, 4, 8)),
        ValueError, "scales[-1]=8 must equal num_latents=16"),
    api("PrimitivesDataset: a side that is not a power of two", lambda p: PrimitivesDataset(size=2, resolution=12),
        ValueError, "resolution must be a power of two in [8, 128]"),
    api("MeshFolder: a mesh that is not closed", lambda p: MeshFolder(_open_mesh(p), resolution=8)[0],
        ValueError, "is not closed (not watertight)"),
    api("PrimitivesDataset: a class_mix without one count per class", lambda p: PrimitivesDataset(size=2, class_mix=[1, 4]),
        ValueError, "class_mix must be 5 counts >= 0 (one per class of"),
    api("VariationalShapeConfig: a negative quantizer warm-up", lambda p: VariationalShapeConfig(quantizer_warmup_steps=-1),
        ValueError, "quantizer_warmup_steps must be an int >= 0, got -1"),
    # ---- audio codec encoder and decoder kinds (tokenizers_audio.frontends) ----
    api("RVQAudioConfig: an unknown encoder_type", lambda p: RVQAudioConfig(**AUDIO, encoder_type="mel"),
        ValueError, "encoder_type must be one of ('seanet', 'stft'), got 'mel'"),
    api("MultiScaleAudioConfig: an unknown decoder_type", lambda p: MultiScaleAudioConfig(**AUDIO, decoder_type="hifigan"),
        ValueError, "decoder_type must be one of ('seanet', 'vocos', 'vocos-if'), got 'hifigan'"),
    api("RVQAudioConfig: frame_weight with a seanet decoder", lambda p: RVQAudioConfig(**AUDIO, frame_weight=1.0),
        ValueError, "frame_weight=1.0 trains the 'vocos-if' decoder's frames; decoder_type is 'seanet'"),
    api("RVQAudioConfig: causal=True with an STFT encoder", lambda p: RVQAudioConfig(**AUDIO, causal=True, encoder_type="stft"),
        ValueError, "causal=True needs encoder_type='seanet' and decoder_type='seanet' (they stream); got encoder_type='stft'"),
    api("SingleCodebookAudioConfig: a seanet decoder", lambda p: SingleCodebookAudioConfig(**AUDIO, decoder_type="seanet"),
        ValueError, "decoder_type must be one of ('vocos', 'vocos-if') (an inverse-STFT decoder), got 'seanet'"),
    api("MultiScaleAudioConfig: an odd hop with an STFT encoder",
        lambda p: MultiScaleAudioConfig(**{**AUDIO, "strides": [3, 3]}, encoder_type="stft"),
        ValueError, "hop_length=9 (the product of strides) must be even for an STFT encoder or vocos decoder"),
    # ---- TonesDataset ----
    api("TonesDataset: a negative detune", lambda p: TonesDataset(length=4, detune=-1),
        ValueError, "detune must be a number of semitones in [0, 24], got -1"),
    api("TonesDataset: detune as text", lambda p: TonesDataset(length=4, detune="x"),
        ValueError, "detune must be a number of semitones in [0, 24], got 'x'"),
    # ---- NextTokenPipeline.__call__ ----
    api("NextToken(): class 7 of 5", lambda p: p.nt(class_labels=[7]),
        ValueError, "unknown class id 7: class_labels must lie in [0, 5)"),
    api("NextToken(): a fractional class label", lambda p: p.nt(class_labels=[1.5]),
        TypeError, "class_labels must hold ints, got 1.5"),
    api("NextToken(): a class name as class_labels", lambda p: p.named(class_labels="a red circle"),
        TypeError, "class_labels must be an int, a list of ints or a 1-D integer tensor, got str"),
    api("NextToken(): no class labels", lambda p: p.nt(class_labels=[]),
        ValueError, "class_labels must not be empty"),
    api("NextToken(): a 2-D label tensor", lambda p: p.nt(class_labels=_long(2, 2)),
        TypeError, "class_labels must be an int, a list of ints or a 1-D integer tensor"),
    api("NextToken(): a prompt for a model without class names", lambda p: p.nt(prompt="a red circle"),
        ValueError, "prompt given, but a ClassConditioner needs class_names to match it to a class"),
    api("NextToken(): a prompt that names no class", lambda p: p.named(prompt=["a purple dog"]),
        ValueError, "prompt 'a purple dog' is not one of the class names this model knows"),
    api("NextToken(): prompt and class_labels", lambda p: p.named(prompt="a red circle", class_labels=[0]),
        ValueError, "pass prompt or class_labels, not both"),
    api("NextToken(): zero samples per prompt", lambda p: p.nt(class_labels=[0], num_samples_per_prompt=0),
        ValueError, "num_samples_per_prompt must be a positive int, got 0"),
    api("NextToken(): guidance_scale as text", lambda p: p.named(class_labels=[0], guidance_scale="3"),
        TypeError, "guidance_scale must be a number or an mmgen.GuidanceSchedule, got '3'"),
    api("NextToken(): guidance without a null condition", lambda p: p.nt(class_labels=[0], guidance_scale=3.0),
        ValueError, "this pipeline's null_condition_trained is False, so use guidance_scale=1"),
    api("NextToken(): infinite guidance", lambda p: p.named(class_labels=[0], guidance_scale=float("inf")),
        ValueError, "guidance_scale must be a finite value, got inf"),
    api("NextToken(): negative temperature", lambda p: p.nt(class_labels=[0], temperature=-1.0),
        ValueError, "temperature must be a finite value >= 0, got -1.0"),
    api("NextToken(): temperature as text", lambda p: p.nt(class_labels=[0], temperature="hot"),
        TypeError, "temperature must be a number or a float tensor [N], got str"),
    api("NextToken(): negative top_k", lambda p: p.nt(class_labels=[0], top_k=-1),
        ValueError, "top_k must be an integer >= 0 (0 = off), got -1"),
    api("NextToken(): fractional top_k", lambda p: p.nt(class_labels=[0], top_k=1.5),
        TypeError, "top_k must be an int or an integer tensor [N], got float"),
    api("NextToken(): top_k beyond the vocabulary", lambda p: p.nt(class_labels=[0], top_k=999),
        ValueError, "top_k must be an integer in [0, V] = [0, 32] (0 = off), got 999"),
    api("NextToken(): top_p=0", lambda p: p.nt(class_labels=[0], top_p=0.0),
        ValueError, "top_p must be a value in (0, 1], got 0.0"),
    api("NextToken(): min_p=2", lambda p: p.nt(class_labels=[0], min_p=2.0),
        ValueError, "min_p must be a value in [0, 1], got 2.0"),
    api("NextToken(): one generator for 2 samples", lambda p: p.nt(class_labels=[0, 1], generator=[torch.Generator()]),
        ValueError, "generator is a list of 1, but 2 samples are generated; pass one per sample"),
    api("NextToken(): a seed for generator", lambda p: p.nt(class_labels=[0], generator=0),
        TypeError, "generator must be a torch.Generator or a list of them, got int"),
    api("NextToken(): a list of seeds for generator", lambda p: p.nt(class_labels=[0], generator=[0]),
        TypeError, "generator must be a torch.Generator or a list of them, got a list holding int"),
    api("NextToken(): output_type='latent'", lambda p: p.nt(class_labels=[0], output_type="latent"),
        ValueError, "output_type must be one of ('pil', 'np', 'pt', 'tokens') (or None for the default), got 'latent'"),
    api("NextToken(): num_tokens on a grid tokenizer", lambda p: p.nt(class_labels=[0], num_tokens=4),
        ValueError, "num_tokens is for tokenizers whose 1D sequence decodes from any prefix"),
    api("NextToken(): num_tokens beyond the flex tokenizer's 8", lambda p: p.flexp(class_labels=[0], num_tokens=9),
        ValueError, "num_tokens must be an int in 1..8 (the tokenizer's N), got 9"),
    api("NextToken(): a prefill longer than a sample", lambda p: p.nt(class_labels=[0], prefill=_long(1, 17)),
        ValueError, "prefill holds 17 positions"),
    api("NextToken(): a prefill for 3 samples of 1", lambda p: p.nt(class_labels=[0], prefill=_long(3, 4)),
        ValueError, "prefill must be a tensor [B=1, m, ...] of known tokens, got (3, 4)"),
    api("NextToken(): float prefill", lambda p: p.nt(class_labels=[0], prefill=torch.zeros(1, 4)),
        TypeError, "prefill must be an integer tensor (torch.long), got torch.float32"),
    api("NextToken(): a prefill id beyond the codebook", lambda p: p.nt(class_labels=[0], prefill=_long(1, 4, value=99)),
        ValueError, "prefill holds id 99 outside codebook 0's vocabulary [0, 32)"),
    api("log_likelihood: a flow head's latents", lambda p: p.nx.log_likelihood(torch.zeros(1, 1, 4), class_labels=[0]),
        ValueError, "log_likelihood scores ids; this pipeline's FlowHead draws continuous latents"),
    api("log_likelihood: more positions than a sequence", lambda p: p.nt.log_likelihood(_long(1, 17), class_labels=[0]),
        ValueError, "seq holds 17 positions; this pipeline's sequences have 16"),
    api("log_likelihood: one flat row", lambda p: p.nt.log_likelihood(_long(4), class_labels=[0]),
        ValueError, "seq must be a tensor [B, m, ...] of known tokens from the start of a sequence, got (4,)"),
    api("log_likelihood: an id beyond the codebook", lambda p: p.nt.log_likelihood(_long(1, 4, value=99), class_labels=[0]),
        ValueError, "seq holds id 99 outside codebook 0's vocabulary [0, 32)"),
    api("log_likelihood: no condition", lambda p: p.nt.log_likelihood(_long(1, 4)),
        ValueError, "log_likelihood needs one condition per row: pass class_labels"),
    api("class_posterior: a text pipeline without candidates", lambda p: p.text.class_posterior(_long(1, 4)),
        ValueError, "candidates must list the prompts to weigh: this pipeline's ByteTextConditioner has no fixed set of classes"),
    api("class_posterior: class ids and prompts mixed", lambda p: p.nt.class_posterior(_long(1, 4), candidates=[0, "a"]),
        ValueError, "candidates must be a non-empty list of class ids or of prompts, got [0, 'a']"),
    api("class_posterior: a list for seq", lambda p: p.nt.class_posterior([[0, 1]]),
        ValueError, "seq must be a tensor [B, m, ...] of known tokens from the start of a sequence, got list"),
    api("class_posterior: batch_size 0", lambda p: p.nt.class_posterior(_long(1, 4), batch_size=0),
        ValueError, "batch_size must be a positive int, got 0"),
    api("NextToken(): a callback that is not callable", lambda p: p.nt(class_labels=[0], callback_on_step_end=5),
        TypeError, "callback_on_step_end must be None or a callable, got int"),
    api("NextToken(): a callback returning tokens of another shape", lambda p: p.nt(
        class_labels=[0], callback_on_step_end=_replace_tokens(_long(1, 2))),
        ValueError, "callback_on_step_end returned tokens of shape (1, 2); they replace the drawn ones, of shape (1, 1)"),
    api("NextToken(): a callback returning ids beyond the codebook", lambda p: p.nt(
        class_labels=[0], callback_on_step_end=_replace_tokens(_long(1, 1, value=99))),
        ValueError, "the tokens callback_on_step_end returned holds id 99 outside codebook 0's vocabulary [0, 32)"),
    api("NextToken(): sampling as a name", lambda p: p.nt(class_labels=[0], sampling="greedy"),
        TypeError, "sampling must be an mmgen.SamplingConfig, got str"),
    api("NextToken(): a text prompt beyond max_len", lambda p: p.text(prompt="a" * 17),
        ValueError, "is 17 bytes; the conditioner takes at most max_len=16"),
    api("NextToken(): class labels for a text model", lambda p: p.text(class_labels=[0]),
        ValueError, "class_labels given, but a ByteTextConditioner takes prompts"),
    api("NextToken(): a number as prompt", lambda p: p.text(prompt=5),
        TypeError, "prompt must be a non-empty str or a non-empty list of str, got int"),
    api("NextToken(): an empty prompt", lambda p: p.text(prompt=""),
        ValueError, "prompt must not be empty; for unconditional samples pass neither prompt nor class_labels"),
    api("NextToken(): PIL output from an audio model", lambda p: p.audio(class_labels=[0], output_type="pil"),
        ValueError, "output_type='pil' is not defined for audio; choose one of ('np', 'pt', 'tokens')"),
    # ---- NextTokenPipeline construction ----
    api("NextToken.from_tokenizer: a multi-scale tokenizer", lambda p: _fresh(NextTokenPipeline, p.ms),
        ValueError, "a multi-scale pyramid goes to NextScalePipeline"),
    api("NextToken.from_tokenizer: an unknown codebook pattern",
        lambda p: _fresh(NextTokenPipeline, p.rvq, codebook_pattern="interleave"),
        ValueError, "codebook_pattern must be one of ('delay', 'flatten', 'parallel'), got 'interleave'"),
    api("NextToken.from_tokenizer: a GPT vocabulary of its own", lambda p: NextTokenPipeline.from_tokenizer(
        p.vq, conditioner=class_conditioner(), gpt={**GPT_SIZE, "vocab_size": 7}),
        ValueError, "gpt: ['vocab_size'] are fixed by the tokenizer and pipeline"),
    api("NextToken.from_tokenizer: 1 class name for 5 classes",
        lambda p: _fresh(NextTokenPipeline, p.vq, class_names=["a red circle"]),
        ValueError, f"class_names has 1 names, the conditioner has num_classes={NUM_CLASSES}"),
    api("NextToken.from_tokenizer: a flow head over ids", lambda p: _fresh(NextTokenPipeline, p.vq, head={"class": "FlowHead"}),
        ValueError, "head.class: FlowHead does not model DiscreteContent"),
    api("NextToken.from_tokenizer: a tokenizer's name", lambda p: _fresh(NextTokenPipeline, "VQImageTokenizer"),
        TypeError, "tokenizer must implement mmgen.protocol.Tokenizer; str lacks methods"),
    # ---- NextScalePipeline ----
    api("NextScale(): class -1", lambda p: p.ns(class_labels=[-1]),
        ValueError, "unknown class id -1: class_labels must lie in [0, 5)"),
    api("NextScale(): diffusers' num_inference_steps", lambda p: p.ns(class_labels=[0], num_inference_steps=10),
        TypeError, "unexpected keyword argument 'num_inference_steps'"),
    api("NextScale.from_tokenizer: a grid tokenizer", lambda p: _fresh(NextScalePipeline, p.vq),
        TypeError, "NextScalePipeline needs a multi-scale tokenizer with a ScaleContext"),
    api("NextScale.from_pretrained: a NextTokenPipeline folder", lambda p: NextScalePipeline.from_pretrained(p.root / "nt"),
        ValueError, "holds a NextTokenPipeline, not a NextScalePipeline"),
    # ---- NextXPipeline ----
    api("NextX(): zero flow steps", lambda p: p.nx(class_labels=[0], num_flow_steps=0),
        ValueError, "num_flow_steps must be a positive int, got 0"),
    api("NextX(): top_k for a flow head", lambda p: p.nx(class_labels=[0], top_k=5),
        ValueError, "top_k / top_p / min_p filter the ids of a categorical head; this pipeline's FlowHead draws continuous latents"),
    api("NextX.from_tokenizer: a 1D tokenizer", lambda p: _fresh(NextXPipeline, p.flex),
        ValueError, "NextXPipeline needs a 2D token grid (or a (t, h, w) video grid), the tokenizer's tokens are (8,)"),
    api("NextX.from_tokenizer: an unknown entity", lambda p: _fresh(NextXPipeline, p.kl, entity="pixel"),
        ValueError, "entity must be one of ('token', 'cell', 'subsample', 'scale', 'image', 'frame'), got 'pixel'"),
    api("NextX.from_tokenizer: cells that do not tile the grid", lambda p: _fresh(NextXPipeline, p.kl, cell_size=3),
        ValueError, "cell_size=3 must divide the token grid 4x4 (entity='cell')"),
    api("NextX.from_tokenizer: patch_nums without entity='scale'",
        lambda p: _fresh(NextXPipeline, p.kl, entity="cell", patch_nums=[1, 2, 4]),
        ValueError, "patch_nums is for entity='scale', got it with entity='cell'"),
    api("NextX.from_tokenizer: scales of ids", lambda p: _fresh(NextXPipeline, p.vq, entity="scale"),
        ValueError, "entity='scale' needs continuous latents"),
    api("NextX.from_tokenizer: scales that stop short of the grid",
        lambda p: _fresh(NextXPipeline, p.kl, entity="scale", patch_nums=[1, 2]),
        ValueError, "patch_nums must end at the latent grid size 4, got [1, 2]"),
    # ---- ARPipeline.from_pretrained ----
    api("ARPipeline.from_pretrained: a tokenizer folder", lambda p: ARPipeline.from_pretrained(p.root / "vq"),
        ValueError, "is not a saved pipeline: expected model_index.json in it"),
    api("ARPipeline.from_pretrained: missing folder", lambda p: ARPipeline.from_pretrained(p.root / "nowhere"),
        ValueError, "is neither a local folder nor a hub repo id"),
    api("ARPipeline.from_pretrained: truncated model_index.json", lambda p: ARPipeline.from_pretrained(
        _truncated(p, "nt", "model_index.json")), ValueError, "model_index.json is not valid JSON"),
    api("ARPipeline.from_pretrained: a component without its config.json", lambda p: ARPipeline.from_pretrained(
        _without(p, "nt", "gpt/config.json")), ValueError, "is not a GPT checkpoint: expected config.json in it"),
    # ---- mmgen demo ----
    cli("demo: --out is a file", lambda p: ["demo", "--out", str(p.write("demo_out", "x"))],
        "is a file; choose another --out"),
    cli("demo: --out holds files", lambda p: ["demo", "--out", str(_non_empty(p, "demo_full"))],
        "is not empty; pass --overwrite or choose another --out"),
    cli("demo: an unknown paradigm", lambda p: ["demo", "--paradigm", "next-pixel"],
        "argument --paradigm: invalid choice: 'next-pixel'"),
    cli("demo: zero samples per prompt", lambda p: ["demo", "--samples-per-prompt", "0"],
        "argument --samples-per-prompt: expected a positive integer, got 0"),
    # ---- mmgen tokenize ----
    cli("tokenize: a tokenizer folder that does not exist", lambda p: ["tokenize", str(_generator_config(
        p, "no_tokenizer", tokenizer=str(p.root / "nowhere")))], "is not a saved tokenizer (no config.json)"),
    cli("tokenize: zero items per shard", lambda p: ["tokenize", "x.yaml", "--shard-size", "0"],
        "argument --shard-size: expected a positive integer, got 0"),
    # ---- mmgen generate ----
    cli("generate: top_k beyond the vocabulary", lambda p: _generate(p, "--top-k", "999"),
        "top_k must be an integer in [0, V] = [0, 32]"),
    cli("generate: a file as the pipeline", lambda p: _generate(p, pipeline=p.root / "nt" / "model_index.json"),
        "is a file; expected a saved pipeline folder or a hub repo id"),
    cli("generate: truncated model_index.json", lambda p: _generate(p, pipeline=_truncated(p, "nt", "model_index.json")),
        "model_index.json is not valid JSON"),
    cli("generate: an unknown device", lambda p: _generate(p, "--device", "tpu9"),
        "argument --device: expected a torch device such as cpu, cuda or cuda:1, got 'tpu9'"),
    cli("generate: zero samples", lambda p: _generate(p, "--num-samples", "0"),
        "argument --num-samples: expected a positive integer, got 0"),
    cli("generate: guidance as a word", lambda p: _generate(p, "--guidance-scale", "strong"),
        "argument --guidance-scale: invalid float value: 'strong'"),
    # ---- mmgen info ----
    cli("info: no folder given", lambda p: ["info"], "the following arguments are required: path"),
    cli("info: a model folder with a truncated config", lambda p: ["info", str(_truncated(p, "vq", "config.json"))],
        "config.json is not valid JSON"),
    # ---- mmgen upgrade ----
    cli("upgrade: no NEW folder", lambda p: ["upgrade", str(p.root / "nt")], "the following arguments are required: new"),
    cli("upgrade: a file as OLD", lambda p: ["upgrade", str(p.root / "nt" / "model_index.json"), str(p.root / "upgraded")],
        "is not a pipeline folder of the old format"),
    # ---- mmgen convert ----
    cli("convert: an unknown source", lambda p: ["convert", "--from", "titan", "src", "dst"],
        "argument --from: invalid choice: 'titan'"),
    cli("convert: a folder without weights", lambda p: ["convert", "--from", "encodec", _published(p, "bare"), str(p.root / "c1")],
        "holds no single weights file"),
    cli("convert: a pickle without --allow-pickle", lambda p: [
        "convert", "--from", "encodec", _published(p, "pickled", "pytorch_model.bin"), str(p.root / "c2")],
        "is a pickle; unpickling can run code from the file, so it is loaded only with --allow-pickle"),
    cli("convert: no config.json beside the weights", lambda p: [
        "convert", "--from", "dac", _published(p, "no_config", "model.safetensors", config=False), str(p.root / "c3")],
        "no config.json next to"),
    cli("convert: a generator folder with one checkpoint", lambda p: [
        "convert", "--from", "llamagen", _published(p, "one_ckpt", "gpt.safetensors"), str(p.root / "c4")],
        "must hold exactly two weights files (the LlamaGen GPT and its tokenizer)"),
    cli("convert: weights that are no EnCodec", lambda p: [
        "convert", "--from", "encodec", _published(p, "not_encodec", "model.safetensors"), str(p.root / "c5")],
        "the EnCodec weights hold no key quantizer.layers.<k>.codebook.embed"),
    cli("convert: an existing destination", lambda p: [
        "convert", "--from", "encodec", _published(p, "any", "model.safetensors"), str(p.root / "nt")],
        "exists; pass --overwrite"),
    # ---- mmgen train ----
    cli("train: missing config", lambda p: ["train", str(p.root / "nowhere.yaml")], "nowhere.yaml' does not exist"),
    cli("train: a YAML list", lambda p: ["train", str(p.write("list.yaml", "- kind: generator\n- tokenizer: vq\n"))],
        "the top level must be a mapping of config keys (kind: ..., tokenizer: ...), got a list"),
    cli("train: an empty file", lambda p: ["train", str(p.write("empty.yaml", "# nothing yet\n"))],
        "is empty (or only comments)"),
    cli("train: unknown keys", lambda p: ["train", str(_generator_config(p, "typo", optimm="{steps: 2}"))],
        "unknown config key(s) ['optimm']"),
    cli("train: invalid YAML", lambda p: ["train", str(p.write("broken.yaml", "kind: [generator\n"))], "is not valid YAML"),
    cli("train: a word for an integer", lambda p: ["train", str(_generator_config(p, "word", optim="{steps: ten}"))],
        "optim.steps: expected an integer, got 'ten'"),
    cli("train: an unknown pipeline", lambda p: ["train", str(_generator_config(p, "pixel", pipeline="NextPixelPipeline"))],
        "pipeline must be one of ('NextTokenPipeline', 'NextScalePipeline', 'NextXPipeline'), got 'NextPixelPipeline'"),
    cli("train: next-token over a multi-scale tokenizer", lambda p: ["train", str(_generator_config(
        p, "pyramid", tokenizer=str(p.root / "ms")))], "a multi-scale pyramid goes to NextScalePipeline"),
    cli("train: a tokenizer preset for another image size", lambda p: ["train", str(p.write(
        "sizes.yaml", "kind: tokenizer\ntokenizer: {class: VQImageTokenizer, image_size: 16}\ndata: {image_size: 32}\n"))],
        "tokenizer.image_size=16 differs from data.image_size=32"),
]


def test_rows_are_distinct_and_cover_the_entry_points():
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert len(ROWS) >= 90


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_a_clear_error(row: Row, P: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    if row.error is not None:
        with pytest.raises(row.error) as caught:
            row.call(P)
        assert row.fragment in str(caught.value)
        return
    argv = row.call(P)
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert row.fragment in err and "Traceback" not in err
    assert f"mmgen {argv[0]}: error: " in err


def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    """`mmgen info DIR --json | head -1`: the reader leaves after one line of a long output; no error, no traceback."""
    torch.manual_seed(0)
    names = [f"class {i:05d} of a large label set" for i in range(5000)]  # 200 kB of JSON: more than a pipe holds
    conditioner = ClassConditioner(ClassConditionerConfig(dim=GPT_SIZE["dim"], num_classes=len(names)))
    build(NextTokenPipeline, vq_tokenizer(), conditioner, class_names=names).save_pretrained(str(tmp_path / "pipe"))
    command = f"{sys.executable} -m mmgen.app.cli info {tmp_path / 'pipe'} --json | head -1"
    done = subprocess.run(["bash", "-c", f"{command}; exit ${{PIPESTATUS[0]}}"], capture_output=True, text=True, timeout=120)
    assert done.stdout == "{\n"
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr and "error" not in done.stderr
    assert done.returncode == 1
