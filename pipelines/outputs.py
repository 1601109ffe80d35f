"""Pipeline outputs, one class per modality, chosen by the tokenizer's ``modality``.

Every output has ``tokens`` (what the tokenizer decodes) next to the decoded samples; with
``output_type="tokens"`` the decoder is not run and the samples are None. ``output_type=None`` is the
modality's default ("pil" for images and video frames, "np" for audio, "mesh" for shapes). Adding a modality adds
its output class and converter here; the pipelines stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from mmgen.meshes import occupancy_to_mesh, sample_surface_points

__all__ = ["ARPipelineOutput", "ARImagePipelineOutput", "ARAudioPipelineOutput", "ARVideoPipelineOutput",
           "ARShapePipelineOutput", "OUTPUT_TYPES", "POINTS_PER_SHAPE", "check_output_type", "make_output",
           "to_output_images", "to_output_audios", "to_output_videos", "to_output_shapes"]

OUTPUT_TYPES = ("pil", "np", "pt", "tokens", "mesh", "points", "voxels")
POINTS_PER_SHAPE = 2048  # surface points per shape for output_type="points"
POINTS_SEED = 0  # the same occupancy always gives the same points


@dataclass
class ARPipelineOutput(BaseOutput):
    """``tokens`` only: ``output_type="tokens"`` for a modality without an output class of its own yet."""

    tokens: Any


@dataclass
class ARImagePipelineOutput(BaseOutput):
    """``images``: PIL list, ``[B, H, W, 3]`` array or ``[B, 3, H, W]`` tensor in [0, 1] (None for "tokens").

    ``tokens``: what the tokenizer decodes (ids or latents), one row per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    tokens: Any


@dataclass
class ARAudioPipelineOutput(BaseOutput):
    """``audios``: mono waveforms in [-1, 1], a ``[B, T]`` float32 array ("np") or tensor ("pt"); None for "tokens".

    ``sample_rate``: of the waveforms (the codec's), what ``soundfile.write(path, audios[i], sample_rate)`` needs.
    ``tokens``: what the codec decodes, one row per clip.
    """

    audios: np.ndarray | torch.Tensor | None
    sample_rate: int
    tokens: Any


@dataclass
class ARVideoPipelineOutput(BaseOutput):
    """``videos``: per clip a list of PIL frames ("pil"), ``[B, T, H, W, 3]`` array ("np") or ``[B, T, 3, H, W]``
    tensor ("pt"), in [0, 1]; None for "tokens". ``tokens``: what the tokenizer decodes, one row per clip.
    """

    videos: list[list[PIL.Image.Image]] | np.ndarray | torch.Tensor | None
    tokens: Any


@dataclass
class ARShapePipelineOutput(BaseOutput):
    """``shapes``: per shape a closed ``trimesh.Trimesh`` ("mesh"), float32 surface points ``[2048, 3]`` ("points")
    or a bool occupancy array ``[B, R, R, R]`` ("voxels"), in [-1, 1] coordinates (x, y, z), z up; None for "tokens".
    An empty shape is an empty Trimesh and ``[0, 3]`` points. ``tokens``: what the tokenizer decodes, one row per shape.
    """

    shapes: list[Any] | np.ndarray | None
    tokens: Any


def to_output_images(images_BCHW: torch.Tensor | None, output_type: str, tokenizer: Any = None) -> dict[str, Any]:
    """Images in [-1, 1] → ``output_type``: "pt" ``[B, 3, H, W]``, "np" ``[B, H, W, 3]`` (both in [0, 1]) or "pil"."""
    if images_BCHW is None:
        return {"images": None}
    pt = (images_BCHW.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type == "pt":
        return {"images": pt}
    arr = pt.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return {"images": arr}
    return {"images": [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]}


def to_output_audios(audio_B1T: torch.Tensor | None, output_type: str, tokenizer: Any) -> dict[str, Any]:
    """Waveforms ``[B, 1, T]`` → ``audios`` ``[B, T]`` in [-1, 1] ("pt" tensor or "np" array) and the codec's rate."""
    if audio_B1T is None:
        return {"audios": None, "sample_rate": int(tokenizer.sample_rate)}
    pt = audio_B1T.float().clamp(-1, 1)[:, 0].cpu()
    return {"audios": pt if output_type == "pt" else pt.numpy(), "sample_rate": int(tokenizer.sample_rate)}


def to_output_videos(videos_BTCHW: torch.Tensor | None, output_type: str, tokenizer: Any = None) -> dict[str, Any]:
    """Clips ``[B, T, 3, H, W]`` in [-1, 1] → ``output_type``, frame by frame as :func:`to_output_images` converts images."""
    if videos_BTCHW is None:
        return {"videos": None}
    B, T = videos_BTCHW.shape[:2]
    frames = to_output_images(videos_BTCHW.flatten(0, 1), output_type)["images"]
    if output_type == "pil":
        return {"videos": [frames[b * T:(b + 1) * T] for b in range(B)]}
    return {"videos": frames.reshape(B, T, *frames.shape[1:])}


def to_output_shapes(occupancy_BRRR: torch.Tensor | None, output_type: str, tokenizer: Any = None) -> dict[str, Any]:
    """Occupancy grids ``[B, R, R, R]`` in [0, 1] → ``output_type``: "voxels" (occupancy > 0.5), or per shape the
    marching-cubes mesh (:func:`mmgen.meshes.occupancy_to_mesh`) or points drawn on its surface with a fixed seed."""
    if occupancy_BRRR is None:
        return {"shapes": None}
    if occupancy_BRRR.ndim != 4 or len(set(occupancy_BRRR.shape[1:])) != 1:
        raise ValueError(f"decoded shapes must be occupancy grids [B, R, R, R], "
                         f"got shape {tuple(occupancy_BRRR.shape)}")
    grids = occupancy_BRRR.detach().float().cpu().numpy()
    if output_type == "voxels":
        return {"shapes": grids > 0.5}
    meshes = [occupancy_to_mesh(grid) for grid in grids]
    if output_type == "mesh":
        return {"shapes": meshes}
    return {"shapes": [sample_surface_points(mesh, count=POINTS_PER_SHAPE, seed=POINTS_SEED) for mesh in meshes]}


@dataclass(frozen=True)
class _Output:
    """How one modality's decoded samples become its pipeline output."""

    output_class: type
    convert: Callable[[torch.Tensor | None, str, Any], dict[str, Any]]  # (decoded or None, output_type, tokenizer)
    sample_field: str
    output_types: tuple[str, ...]
    default: str


_OUTPUTS: dict[str, _Output] = {
    "image": _Output(ARImagePipelineOutput, to_output_images, "images", ("pil", "np", "pt", "tokens"), "pil"),
    "audio": _Output(ARAudioPipelineOutput, to_output_audios, "audios", ("np", "pt", "tokens"), "np"),
    "video": _Output(ARVideoPipelineOutput, to_output_videos, "videos", ("pil", "np", "pt", "tokens"), "pil"),
    "shape": _Output(ARShapePipelineOutput, to_output_shapes, "shapes", ("mesh", "points", "voxels", "tokens"), "mesh"),
}


def check_output_type(modality: str, output_type: str | None) -> str:
    """The ``output_type`` to use (None: the modality's default); refuses one the modality has no converter for,
    before anything is generated."""
    if output_type is not None and output_type not in OUTPUT_TYPES:  # named with the types this modality has
        known = _OUTPUTS[modality].output_types if modality in _OUTPUTS else OUTPUT_TYPES
        raise ValueError(f"output_type must be one of {known} (or None for the default), got {output_type!r}")
    if modality not in _OUTPUTS:
        if output_type not in (None, "tokens"):
            raise ValueError(f"output_type={output_type!r}: no pipeline output is defined for modality {modality!r} "
                             f"(known: {sorted(_OUTPUTS)}); use output_type='tokens'")
        return "tokens"
    spec = _OUTPUTS[modality]
    if output_type is None:
        return spec.default
    if output_type not in spec.output_types:
        raise ValueError(f"output_type={output_type!r} is not defined for {modality}; choose one of {spec.output_types}")
    return output_type


def make_output(tokenizer: Any, decoded: torch.Tensor | None, tokens: Any, *, output_type: str | None, return_dict: bool) -> Any:
    """The output of the tokenizer's modality (or the ``(samples, tokens)`` tuple with ``return_dict=False``)."""
    modality = tokenizer.modality
    output_type = check_output_type(modality, output_type)
    if modality not in _OUTPUTS:
        return (None, tokens) if not return_dict else ARPipelineOutput(tokens)
    spec = _OUTPUTS[modality]
    fields = spec.convert(decoded, output_type, tokenizer)
    if not return_dict:
        return (fields[spec.sample_field], tokens)
    return spec.output_class(**fields, tokens=tokens)
