"""mmgen: autoregressive multimodal generation on one shared GPT backbone.

``import mmgen`` gives the public names of the core (token layout, GPT, sampling, data, metrics)
and, on first use, those of the sibling packages ``tokenizers_visual``, ``tokenizers_audio`` and
``pipelines`` (loaded lazily: they import this core, so an eager import would be circular).
"""

from importlib import import_module
from typing import Any

from . import data, metrics, patterns, sampling
from .conditioning import (
    ByteTextConditioner,
    ClassConditioner,
    Conditioner,
    Conditioning,
    TextEncoderConditioner,
)
from .flow_head import FlowHead, FlowHeadConfig
from .generation import Decoder, GroupRequest, generate
from .gpt import GPT, GPTConfig, KVCache, split_guidance_batch
from .heads import CategoricalHead, CategoricalHeadConfig, DepthHead, DepthHeadConfig, Head
from .protocol import ScaleContext, Tokenizer, TokenSpec
from .sampling import GuidanceSchedule, SamplingConfig, apply_guidance, filtered_probs, sample
from .tokens import ContinuousContent, DiscreteContent, TokenContent, TokenLayout

__version__ = "0.1.0.dev0"

_SIBLING_PACKAGES = ("tokenizers_visual", "tokenizers_audio", "pipelines")


def __getattr__(name: str) -> Any:
    for package in _SIBLING_PACKAGES:
        module = import_module(package)
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module 'mmgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    siblings = [name for package in _SIBLING_PACKAGES for name in getattr(import_module(package), "__all__", ())]
    return sorted(set(globals()) | set(siblings))


__all__ = [
    "ByteTextConditioner",
    "CategoricalHead",
    "CategoricalHeadConfig",
    "ClassConditioner",
    "Conditioner",
    "Conditioning",
    "Decoder",
    "DepthHead",
    "DepthHeadConfig",
    "GroupRequest",
    "Head",
    "ScaleContext",
    "TextEncoderConditioner",
    "Tokenizer",
    "TokenSpec",
    "generate",
    "patterns",
    "GPT",
    "FlowHead",
    "FlowHeadConfig",
    "GPTConfig",
    "KVCache",
    "split_guidance_batch",
    "GuidanceSchedule",
    "SamplingConfig",
    "sample",
    "apply_guidance",
    "filtered_probs",
    "ContinuousContent",
    "DiscreteContent",
    "TokenContent",
    "TokenLayout",
    "data",
    "metrics",
    "sampling",
]
