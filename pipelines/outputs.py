"""Pipeline outputs, one class per modality, chosen by the tokenizer's ``modality``.

Every output has ``tokens`` (what the tokenizer decodes) next to the decoded samples; with
``output_type="tokens"`` the decoder is not run and the samples are None. Adding a modality adds
its output class and converter here; the pipelines stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

__all__ = ["ARPipelineOutput", "ARImagePipelineOutput", "OUTPUT_TYPES", "check_output_type", "make_output", "to_output_images"]

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")


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


def to_output_images(images_BCHW: torch.Tensor, output_type: str) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Images in [-1, 1] → ``output_type``: "pt" ``[B, 3, H, W]``, "np" ``[B, H, W, 3]`` (both in [0, 1]) or "pil"."""
    pt = (images_BCHW.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type == "pt":
        return pt
    arr = pt.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


_OUTPUTS: dict[str, tuple[type, Callable[[torch.Tensor, str], Any]]] = {
    "image": (ARImagePipelineOutput, to_output_images),
}


def check_output_type(modality: str, output_type: str) -> None:
    """Refuse an ``output_type`` the modality has no converter for, before anything is generated."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if modality not in _OUTPUTS and output_type != "tokens":
        raise ValueError(f"output_type={output_type!r}: no pipeline output is defined for modality {modality!r} "
                         f"(known: {sorted(_OUTPUTS)}); use output_type='tokens'")


def make_output(tokenizer: Any, decoded: torch.Tensor | None, tokens: Any, *, output_type: str, return_dict: bool) -> Any:
    """The output of the tokenizer's modality (or the ``(samples, tokens)`` tuple with ``return_dict=False``)."""
    modality = tokenizer.modality
    check_output_type(modality, output_type)
    if modality not in _OUTPUTS:
        return (None, tokens) if not return_dict else ARPipelineOutput(tokens)
    output_class, convert = _OUTPUTS[modality]
    samples = None if decoded is None else convert(decoded, output_type)
    if not return_dict:
        return (samples, tokens)
    return output_class(samples, tokens)
