"""LlamaGen's class-conditional GPT as mmgen's GPT, head and class conditioner (``mmgen convert --from llamagen``).

LlamaGen's ``Transformer`` is a Llama: RMSNorm, SwiGLU, one fused ``wqkv``, an untied ``output``
layer, a class embedding with the null class as its last row. Three things differ from mmgen's
defaults, and each is a switch here rather than a copy of the model:

- The sequence is ``[class, t_0, …, t_{N-2}]`` with no learned start: the class embedding is the input
  of the first slot (:class:`~mmgen.conditioning.ClassConditioner` with ``as_start=True``).
- Each slot is rotated by the 2D grid coordinates of the token it holds, and the class slot by none:
  LlamaGen's RoPE table starts with a row of zeros, so the class token's queries and keys are zero
  (the pipeline's ``rotary_coords="input"``, :class:`~mmgen.patterns.InputCoordinates`).
- RoPE pairs dimensions ``(2j, 2j + 1)`` where mmgen pairs ``(j, j + d/2)``; the frequencies are the
  same (rows first, then columns), so permuting the query and key rows of ``wqkv`` within each head
  gives the same attention scores.

The published checkpoints (``c2i_B_256.pt`` …) are pickles holding ``{"model": state_dict}`` and no
config: the sizes follow from the weights, except the number of heads, which is read from the
config when given and else from LlamaGen's own model table by width and depth (GPT-B … GPT-3B).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .conditioning import ClassConditioner, ClassConditionerConfig
from .gpt import GPT, GPTConfig
from .heads import CategoricalHead, CategoricalHeadConfig
from .weight_maps import ConvertedGenerator, Rule, WeightsMismatchError, assign_weights, count_levels

__all__ = ["LLAMAGEN_HEADS", "llamagen_generator"]

# LlamaGen's GPT_B … GPT_3B: (dim, n_layer) -> n_head
LLAMAGEN_HEADS = {(768, 12): 12, (1024, 24): 16, (1280, 36): 20, (1536, 48): 24, (3200, 24): 32}


def _half_split_rows(weight: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rows of ``heads`` query or key heads reordered from interleaved RoPE pairs to half-split ones."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return weight.view(heads, head_dim, -1)[:, order].reshape(heads * head_dim, -1)


def _merged_ffn(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``w1`` (gate) and ``w3`` (up) of each layer as one ``w13`` matrix, mmgen's fused SwiGLU input."""
    out = dict(weights)
    for gate in [k for k in weights if k.endswith(".feed_forward.w1.weight")]:
        up = gate.replace(".w1.", ".w3.")
        if up not in out:
            raise WeightsMismatchError(f"the LlamaGen weights do not fit: missing keys: ['{up}'] (its gate {gate} is there)")
        out[gate.replace(".w1.", ".w13.")] = torch.cat([out.pop(gate), out.pop(up)])
    return out


def _gpt_config(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> tuple[GPTConfig, int]:
    if config.get("model_type", "c2i") != "c2i":
        raise ValueError(f"model_type={config['model_type']!r} is not converted: only LlamaGen's class-conditional "
                         "('c2i') models are (text-to-image needs its T5 caption encoder)")
    if config.get("cls_token_num", 1) != 1:
        raise ValueError(f"cls_token_num={config['cls_token_num']!r}: a class-conditional LlamaGen has one class token")
    for key in ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "layers.0.feed_forward.w13.weight"):
        if key not in weights:
            raise WeightsMismatchError(f"the LlamaGen weights do not fit: missing keys: ['{key.replace('w13', 'w1')}']")
    vocab, dim = weights["tok_embeddings.weight"].shape
    n_layers = count_levels(weights, "layers.{k}.attention_norm.weight", source="LlamaGen")
    n_heads = config.get("n_head") or LLAMAGEN_HEADS.get((dim, n_layers))
    if n_heads is None:
        raise ValueError(f"the weights are a LlamaGen GPT of dim={dim} and {n_layers} layers, not one of the published sizes "
                         f"{sorted(LLAMAGEN_HEADS)}; give n_head in config.json")
    head_dim = dim // n_heads
    n_kv_heads = config.get("n_kv_head") or n_heads
    block_size = config.get("block_size", 256)
    if math.isqrt(block_size) ** 2 != block_size:
        raise ValueError(f"block_size={block_size} is not a square: LlamaGen's class-conditional models generate square grids")
    gpt = GPTConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                    ffn_dim=weights["layers.0.feed_forward.w13.weight"].shape[0] // 2, norm_eps=config.get("norm_eps", 1e-5),
                    rope_theta=config.get("rope_base", 10000.0), coord_rank=2, max_seq_len=block_size)
    rows = weights["cls_embedding.embedding_table.weight"].shape[0]
    num_classes = config.get("num_classes", rows - 1)
    if rows != num_classes + 1:
        raise ValueError(f"cls_embedding holds {rows} rows for num_classes={num_classes}: mmgen needs the null class's row "
                         "too (LlamaGen has it when trained with class_dropout_prob > 0)")
    return gpt, num_classes


def llamagen_generator(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> ConvertedGenerator:
    """GPT, head and conditioner computing what LlamaGen's ``Transformer`` of ``weights`` computes (float32, eval mode).

    ``config``: LlamaGen's ``ModelArgs`` fields where known (``n_head``, ``block_size``, ``rope_base``,
    ``norm_eps``); the rest follows from the weights. Generate through ``NextTokenPipeline`` with
    ``rotary_coords="input"`` and ``null_condition_trained=True``.
    """
    weights = _merged_ffn(weights)
    gpt_config, num_classes = _gpt_config(weights, config)
    generator = ConvertedGenerator(
        GPT(gpt_config), CategoricalHead(CategoricalHeadConfig(dim=gpt_config.dim, codebook_sizes=[gpt_config.vocab_size])),
        ClassConditioner(ClassConditionerConfig(dim=gpt_config.dim, num_classes=num_classes, as_start=True)))
    H, Hkv, D = gpt_config.n_heads, gpt_config.n_kv_heads, gpt_config.head_dim

    def rotary_halves(wqkv: torch.Tensor) -> torch.Tensor:
        q, k, v = wqkv.split([H * D, Hkv * D, Hkv * D])
        return torch.cat([_half_split_rows(q, H, D), _half_split_rows(k, Hkv, D), v])

    rules = [
        Rule("tok_embeddings.weight", "gpt.tok_embeddings.0.weight"),
        Rule("layers.{i}.attention.wqkv.weight", "gpt.layers.{i}.attn.wqkv.weight", rotary_halves),
        Rule("layers.{i}.attention.wo.weight", "gpt.layers.{i}.attn.wo.weight"),
        Rule("layers.{i}.feed_forward.w13.weight", "gpt.layers.{i}.ffn.w13.weight"),
        Rule("layers.{i}.feed_forward.w2.weight", "gpt.layers.{i}.ffn.w2.weight"),
        Rule("layers.{i}.attention_norm.weight", "gpt.layers.{i}.attn_norm.weight"),
        Rule("layers.{i}.ffn_norm.weight", "gpt.layers.{i}.ffn_norm.weight"),
        Rule("norm.weight", "gpt.norm.weight"),
        Rule("output.weight", "head.projections.0.weight"),
        Rule("cls_embedding.embedding_table.weight", "conditioner.embedding.weight"),
    ]
    assign_weights(generator, weights, rules, source="LlamaGen", ignored=["freqs_cis"])
    return generator.eval()
