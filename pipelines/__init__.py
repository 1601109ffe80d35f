"""diffusers-style pipelines: next-token, next-scale and next-X generation on the shared GPT, for any modality.

Each name imports its module on first use (:mod:`mmgen.lazy`), diffusers with it: ``import pipelines`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmgen.lazy import attach

if TYPE_CHECKING:
    from .base import ARPipeline
    from .evaluate import (
        generation_quality,
        shapes_adherence,
        tones_adherence,
        tones_continuation,
    )
    from .next_scale import NextScalePipeline
    from .next_token import NextTokenPipeline
    from .next_x import NextXPipeline
    from .outputs import ARAudioPipelineOutput, ARImagePipelineOutput

__getattr__, __dir__ = attach(__name__, {
    "base": ("ARPipeline",),
    "evaluate": ("generation_quality", "shapes_adherence", "tones_adherence", "tones_continuation"),
    "next_scale": ("NextScalePipeline",),
    "next_token": ("NextTokenPipeline",),
    "next_x": ("NextXPipeline",),
    "outputs": ("ARAudioPipelineOutput", "ARImagePipelineOutput"),
})

__all__ = ["ARPipeline", "ARImagePipelineOutput", "ARAudioPipelineOutput", "NextTokenPipeline", "NextScalePipeline",
           "NextXPipeline", "generation_quality", "shapes_adherence", "tones_adherence",
           "tones_continuation"]
