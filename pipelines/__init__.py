"""diffusers-style pipelines: next-token, next-scale and next-X generation on the shared GPT, for any modality."""

from .base import ARPipeline
from .evaluate import shapes_adherence, tones_adherence
from .next_scale import NextScalePipeline
from .next_token import NextTokenPipeline
from .next_x import NextXPipeline
from .outputs import ARAudioPipelineOutput, ARImagePipelineOutput

__all__ = ["ARPipeline", "ARImagePipelineOutput", "ARAudioPipelineOutput", "NextTokenPipeline", "NextScalePipeline",
           "NextXPipeline", "shapes_adherence", "tones_adherence"]
