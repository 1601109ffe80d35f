"""diffusers-style pipelines: next-token, next-scale and next-X generation on the shared GPT."""

from .base import ARImagePipeline, ARImagePipelineOutput
from .evaluate import shapes_adherence
from .next_scale import NextScalePipeline
from .next_token import NextTokenPipeline
from .next_x import NextXPipeline

__all__ = ["ARImagePipeline", "ARImagePipelineOutput", "NextTokenPipeline", "NextScalePipeline", "NextXPipeline", "shapes_adherence"]
