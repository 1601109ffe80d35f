"""diffusers-style pipelines: next-token, next-scale and next-X generation on the shared GPT."""

from .base import ARImagePipeline, ARImagePipelineOutput
from .next_token import NextTokenPipeline

__all__ = ["ARImagePipeline", "ARImagePipelineOutput", "NextTokenPipeline"]
