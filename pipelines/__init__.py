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
        moving_shapes_adherence,
        moving_shapes_image_to_video,
        moving_shapes_long_video,
        primitives_adherence,
        shapes_adherence,
        tones_adherence,
        tones_continuation,
    )
    from .long_video import first_frame_prefill, generate_long_video, starts_with_the_first_frame
    from .next_scale import NextScalePipeline
    from .next_token import NextTokenPipeline
    from .next_x import NextXPipeline
    from .outputs import ARAudioPipelineOutput, ARImagePipelineOutput, ARShapePipelineOutput, ARVideoPipelineOutput

__getattr__, __dir__ = attach(__name__, {
    "base": ("ARPipeline",),
    "evaluate": ("generation_quality", "shapes_adherence", "tones_adherence", "tones_continuation", "moving_shapes_adherence",
                 "moving_shapes_image_to_video", "moving_shapes_long_video", "primitives_adherence"),
    "long_video": ("generate_long_video", "first_frame_prefill", "starts_with_the_first_frame"),
    "next_scale": ("NextScalePipeline",),
    "next_token": ("NextTokenPipeline",),
    "next_x": ("NextXPipeline",),
    "outputs": ("ARAudioPipelineOutput", "ARImagePipelineOutput", "ARShapePipelineOutput", "ARVideoPipelineOutput"),
})

__all__ = ["ARPipeline", "ARImagePipelineOutput", "ARAudioPipelineOutput", "ARVideoPipelineOutput", "ARShapePipelineOutput",
           "NextTokenPipeline", "NextScalePipeline", "NextXPipeline", "generation_quality", "shapes_adherence",
           "tones_adherence", "tones_continuation", "moving_shapes_adherence", "moving_shapes_image_to_video",
           "moving_shapes_long_video", "primitives_adherence", "generate_long_video", "first_frame_prefill",
           "starts_with_the_first_frame"]
