"""VAR's transformer as mmgen's GPT, head and class conditioner (``mmgen convert --from var``).

VAR (Tian et al., 2024) is GPT-2-like: LayerNorm without weights, GELU MLPs, no RoPE but learned
absolute position and scale-level embeddings, l2-normalised attention with a learned per-head scale,
and AdaLN from the class embedding in every block and before the head. Each of these is a
:class:`~mmgen.gpt.GPTConfig` switch; the mapping is a renaming plus three exact rewrites:

- the AdaLN rows are reordered: VAR chunks ``ada_lin`` as (γ1, γ2, scale1, scale2, shift1, shift2),
  mmgen as (shift1, scale1, gate1, shift2, scale2, gate2); the head's (scale, shift) as (shift, scale);
- VAR feeds ``SiLU(class embedding)`` to AdaLN; the SiLU of a table lookup is a lookup in the SiLU'd
  table, which becomes the conditioner's AdaLN table;
- the first scale's input is ``class embedding + pos_start``, which becomes the conditioner's start
  table (``as_start=True``); the key bias VAR pins at zero joins its query and value biases in ``wqkv``.

Generate with ``NextScalePipeline`` over the converted VQVAE and ``GuidanceSchedule.from_var(cfg)``,
VAR's ramp. The published checkpoints (``var_d16.pth`` …) are pickles without a config: the sizes
follow from the weights, the heads from VAR's rule (one per 64 channels, ``num_heads = depth``)
unless the config gives ``num_heads``, the scales are VAR's ``patch_nums`` (config or VAR's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .conditioning import ClassConditioner, ClassConditionerConfig
from .gpt import GPT, GPTConfig
from .heads import CategoricalHead, CategoricalHeadConfig
from .weight_maps import ConvertedGenerator, Rule, WeightsMismatchError, assign_weights, count_levels

__all__ = ["VAR_PATCH_NUMS", "var_generator"]

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's 256×256 models
_BLOCK_CHUNKS = (4, 2, 0, 5, 3, 1)  # ours (shift1, scale1, gate1, shift2, scale2, gate2) from VAR's (γ1, γ2, s1, s2, b1, b2)
_HEAD_CHUNKS = (1, 0)  # ours (shift, scale) from VAR's (scale, shift)


def _reorder_chunks(order: tuple[int, ...]):
    def reorder(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor.chunk(len(order))[i] for i in order])
    return reorder


def _require(weights: Mapping[str, torch.Tensor], *keys: str) -> None:
    missing = [k for k in keys if k not in weights]
    if missing:
        raise WeightsMismatchError(f"the VAR weights do not fit: missing keys: {missing}")


def _gpt_config(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> tuple[GPTConfig, int, tuple[int, ...]]:
    for name, supported in (("attn_l2_norm", True), ("shared_aln", False)):
        if config.get(name, supported) != supported:
            raise ValueError(f"{name}={config[name]!r} is not converted (VAR's published models use {name}={supported})")
    _require(weights, "class_emb.weight", "pos_1LC", "word_embed.weight", "lvl_embed.weight", "head.weight",
             "blocks.0.ffn.fc1.weight")
    rows, dim = weights["class_emb.weight"].shape
    depth = count_levels(weights, "blocks.{k}.ada_lin.1.weight", source="VAR")
    patch_nums = tuple(config.get("patch_nums", VAR_PATCH_NUMS))
    length = sum(pn * pn for pn in patch_nums)
    if weights["pos_1LC"].shape[1] != length:
        raise ValueError(f"pos_1LC holds {weights['pos_1LC'].shape[1]} positions, but patch_nums={list(patch_nums)} make "
                         f"{length}; give the model's patch_nums in config.json")
    heads = config.get("num_heads", depth)
    vocab = weights["head.weight"].shape[0]
    gpt = GPTConfig(vocab_size=vocab, dim=dim, n_layers=depth, n_heads=heads, ffn_dim=weights["blocks.0.ffn.fc1.weight"].shape[0],
                    norm_eps=config.get("norm_eps", 1e-6), coord_rank=3, max_seq_len=length, attention_bias=True, mlp_bias=True,
                    adaln_dim=dim, input_dim=weights["word_embed.weight"].shape[1], norm_type="layer", norm_affine=False,
                    ffn_type="gelu", l2_attention=True, rope=False, absolute_positions=True,
                    num_levels=weights["lvl_embed.weight"].shape[0])
    return gpt, rows - 1, patch_nums


def var_generator(weights: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> tuple[ConvertedGenerator, tuple[int, ...]]:
    """GPT, head and conditioner computing what VAR's transformer of ``weights`` computes (float32, eval mode),
    and the ``patch_nums`` its VQVAE must use. ``config``: VAR's constructor arguments where known."""
    gpt_config, num_classes, patch_nums = _gpt_config(weights, config)
    dim = gpt_config.dim
    generator = ConvertedGenerator(
        GPT(gpt_config), CategoricalHead(CategoricalHeadConfig(dim=dim, codebook_sizes=[gpt_config.vocab_size], bias=True)),
        ClassConditioner(ClassConditionerConfig(dim=dim, num_classes=num_classes, adaln_dim=dim, as_start=True)))
    class_emb = weights["class_emb.weight"].float()
    extra = {
        "conditioner.embedding.weight": class_emb + weights.get("pos_start", torch.zeros(1, 1, dim)).reshape(1, dim),
        "conditioner.adaln_embedding.weight": F.silu(class_emb),
        # the next-scale GPT's inputs are the VQVAE's features; its token tables stay unused
        "gpt.tok_embeddings.0.weight": torch.zeros(gpt_config.vocab_size, dim),
    }
    for i in range(gpt_config.n_layers):
        prefix = f"blocks.{i}.attn."
        _require(weights, prefix + "q_bias", prefix + "v_bias")
        q_bias = weights[prefix + "q_bias"]
        k_bias = weights.get(prefix + "zero_k_bias", torch.zeros_like(q_bias))
        extra[f"gpt.layers.{i}.attn.wqkv.bias"] = torch.cat([q_bias, k_bias, weights[prefix + "v_bias"]])
    rules = [
        Rule("pos_1LC", "gpt.position_embeddings.weight", lambda t: t.squeeze(0)),
        Rule("lvl_embed.weight", "gpt.level_embeddings.weight"),
        Rule("word_embed.{p}", "gpt.input_proj.{p}"),
        Rule("blocks.{i}.attn.mat_qkv.weight", "gpt.layers.{i}.attn.wqkv.weight"),
        Rule("blocks.{i}.attn.proj.{p}", "gpt.layers.{i}.attn.wo.{p}"),
        Rule("blocks.{i}.attn.scale_mul_1H11", "gpt.layers.{i}.attn.log_scale", lambda t: t.flatten()),
        Rule("blocks.{i}.ffn.fc1.{p}", "gpt.layers.{i}.ffn.w13.{p}"),
        Rule("blocks.{i}.ffn.fc2.{p}", "gpt.layers.{i}.ffn.w2.{p}"),
        Rule("blocks.{i}.ada_lin.1.{p}", "gpt.layers.{i}.adaln.{p}", _reorder_chunks(_BLOCK_CHUNKS)),
        Rule("head_nm.ada_lin.1.{p}", "gpt.final_adaln.{p}", _reorder_chunks(_HEAD_CHUNKS)),
        Rule("head.{p}", "head.projections.0.{p}"),
    ]
    # consumed into `extra` above, or buffers VAR derives from its config (scale of each position, its mask)
    ignored = ["class_emb.weight", "pos_start", "blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias",
               "blocks.{i}.attn.zero_k_bias", "lvl_1L", "attn_bias_for_masking"]
    assign_weights(generator, weights, rules, source="VAR", ignored=ignored, extra=extra)
    return generator.eval(), patch_nums
