"""mmgen: autoregressive multimodal generation on one shared GPT backbone.

``import mmgen`` gives the public names of the core (token layout, GPT, sampling); the sibling
packages ``tokenizers_visual``, ``tokenizers_audio`` and ``pipelines`` hold the modality parts.
"""

from .gpt import GPT, GPTConfig, KVCache, split_guidance_batch
from .tokens import ContinuousContent, DiscreteContent, TokenContent, TokenLayout

__version__ = "0.1.0.dev0"

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "split_guidance_batch",
    "ContinuousContent",
    "DiscreteContent",
    "TokenContent",
    "TokenLayout",
]
