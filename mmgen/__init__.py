"""mmgen: autoregressive multimodal generation on one shared GPT backbone.

``import mmgen`` gives the public names of the core (token layout, GPT, sampling, data, metrics)
and those of the sibling packages ``tokenizers_visual``, ``tokenizers_audio`` and ``pipelines``.
Each name imports its module on first use (:mod:`mmgen.lazy`): those modules need torch and
diffusers, seconds that ``import mmgen`` and ``mmgen --help`` should not pay, and the sibling
packages import this core, so importing them here eagerly would be circular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import attach

if TYPE_CHECKING:
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

__getattr__, __dir__ = attach(
    __name__,
    {
        "conditioning": ("ByteTextConditioner", "ClassConditioner", "Conditioner", "Conditioning", "TextEncoderConditioner"),
        "flow_head": ("FlowHead", "FlowHeadConfig"),
        "generation": ("Decoder", "GroupRequest", "generate"),
        "gpt": ("GPT", "GPTConfig", "KVCache", "split_guidance_batch"),
        "heads": ("CategoricalHead", "CategoricalHeadConfig", "DepthHead", "DepthHeadConfig", "Head"),
        "protocol": ("ScaleContext", "Tokenizer", "TokenSpec"),
        "sampling": ("GuidanceSchedule", "SamplingConfig", "apply_guidance", "filtered_probs", "sample"),
        "tokens": ("ContinuousContent", "DiscreteContent", "TokenContent", "TokenLayout"),
    },
    reexport=("tokenizers_visual", "tokenizers_audio", "pipelines"),
)

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
