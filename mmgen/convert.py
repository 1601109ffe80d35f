"""Weights in from transformers' Llama: the proof that the backbone computes what Llama computes.

``gpt, head = gpt_from_llama(llama)`` gives the trunk and its :class:`~mmgen.heads.CategoricalHead`;
``head.logits(gpt(ids))`` equals ``llama(ids).logits`` and :func:`mmgen.programs.continue_tokens`
continues as ``llama.generate`` does. The GPT has no output vocabulary of its own, so a tied Llama's
head gets a copy of the embedding weights.

Only the default rotary scheme is converted; Llama-3-style frequency scaling or other
``rope_type``s are refused with a clear error rather than converted into different numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .gpt import GPT
    from .heads import CategoricalHead

__all__ = ["gpt_from_llama"]


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    scaling = getattr(config, "rope_scaling", None)
    if scaling and isinstance(scaling, dict):
        rope_type = scaling.get("rope_type", scaling.get("type", rope_type))
    if rope_type != "default":
        raise ValueError(f"only Llama's default rotary embedding converts exactly; this model uses rope_type={rope_type!r}")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("the Llama config names no rope_theta")
    return float(theta)


def gpt_from_llama(model: nn.Module) -> tuple["GPT", "CategoricalHead"]:
    """Map a ``LlamaForCausalLM``'s config and weights onto a :class:`mmgen.GPT` and its output head."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama" or not hasattr(model, "model"):
        raise TypeError(f"model must be a transformers LlamaForCausalLM, got {type(model).__name__}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"only SiLU-gated MLPs convert; this model uses hidden_act={config.hidden_act!r}")
    from .gpt import GPT, GPTConfig
    from .heads import CategoricalHead, CategoricalHeadConfig

    gpt_config = GPTConfig(
        vocab_size=config.vocab_size,
        dim=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        ffn_dim=config.intermediate_size,
        norm_eps=config.rms_norm_eps,
        rope_theta=_rope_theta(config),
        max_seq_len=config.max_position_embeddings,
        attention_bias=bool(getattr(config, "attention_bias", False)),
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
    )
    source = model.model
    dtype = source.embed_tokens.weight.dtype
    gpt = GPT(gpt_config)
    head = CategoricalHead(CategoricalHeadConfig(dim=config.hidden_size, codebook_sizes=[config.vocab_size]))
    if dtype != torch.float32:
        gpt, head = gpt.to(dtype), head.to(dtype)
    with torch.no_grad():
        gpt.tok_embeddings[0].weight.copy_(source.embed_tokens.weight)
        for block, layer in zip(gpt.layers, source.layers):
            attn, mlp = layer.self_attn, layer.mlp
            block.attn_norm.weight.copy_(layer.input_layernorm.weight)
            block.ffn_norm.weight.copy_(layer.post_attention_layernorm.weight)
            block.attn.wqkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            block.attn.wo.weight.copy_(attn.o_proj.weight)
            if gpt_config.attention_bias:
                block.attn.wqkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
                block.attn.wo.bias.copy_(attn.o_proj.bias)
            block.ffn.w13.weight.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
            block.ffn.w2.weight.copy_(mlp.down_proj.weight)
            if gpt_config.mlp_bias:
                block.ffn.w13.bias.copy_(torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias]))
                block.ffn.w2.bias.copy_(mlp.down_proj.bias)
        gpt.norm.weight.copy_(source.norm.weight)
        # a tied Llama's lm_head is its embedding table; the head holds a copy of it
        head.projections[0].weight.copy_(model.lm_head.weight)
    device = source.embed_tokens.weight.device
    return gpt.to(device).eval(), head.to(device).eval()
