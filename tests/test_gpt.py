"""The shared GPT backbone: layouts, KV cache, conditioning, generation and its errors."""

import pytest
import torch

from mmgen import GPT, DiscreteContent, GPTConfig, TokenLayout, split_guidance_batch


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{**dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, init_std=0.1), **overrides})
    return GPT(config).eval()


def rand_ids(*shape, high=64, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ---- config ----------------------------------------------------------------------------------
def test_config_derives_defaults_and_validates():
    cfg = GPTConfig(dim=96, n_heads=6)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == (6, 16, 256)
    with pytest.raises(ValueError, match="n_kv_heads"):
        GPTConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0)
    with pytest.raises(ValueError, match="tie_embeddings"):
        GPTConfig(vocab_size=[8, 8], tie_embeddings=True)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GPTConfig(hidden_size=3)


# ---- attention follows the layout -------------------------------------------------------------
def test_plain_sequence_is_causal():
    gpt = tiny_gpt()
    ids = rand_ids(1, 10)
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 64
    with torch.no_grad():
        a, b = gpt(ids), gpt(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


def test_group_causal_layout_sees_own_group_not_later_groups():
    gpt = tiny_gpt(coord_rank=3)
    layout = TokenLayout.scales([1, 2, 3])  # groups: 1 + 4 + 9 positions
    ids = rand_ids(1, 14)
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 64  # a position of scale 1
    with torch.no_grad():
        a, b = gpt(ids, layout=layout), gpt(changed, layout=layout)
    assert torch.allclose(a[:, :1], b[:, :1], atol=1e-6)  # scale 0 cannot see scale 1
    assert not torch.allclose(a[:, 1:2], b[:, 1:2], atol=1e-4)  # position 1 is in scale 1's group
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-4)  # scale 2 sees scale 1


def test_padding_does_not_change_valid_positions():
    gpt = tiny_gpt()
    short, long = TokenLayout.sequence(5), TokenLayout.sequence(9)
    batch = TokenLayout.stack([short, long])
    ids = rand_ids(2, 9)
    with torch.no_grad():
        both = gpt(ids, layout=batch)
        alone = gpt(ids[:1, :5], layout=short)
    assert torch.isfinite(both).all()
    assert torch.allclose(both[0, :5], alone[0], atol=1e-5)


def test_nd_rotary_is_relative():
    """Shifting every coordinate by a constant leaves attention, hence logits, unchanged."""
    gpt = tiny_gpt(coord_rank=2)
    layout = TokenLayout.grid((3, 4))
    shifted = TokenLayout(layout.coords + torch.tensor([5.0, -2.0]), layout.groups, layout.valid)
    swapped = TokenLayout(layout.coords.flip(-1), layout.groups, layout.valid)
    ids = rand_ids(1, 12)
    with torch.no_grad():
        base = gpt(ids, layout=layout)
        assert torch.allclose(base, gpt(ids, layout=shifted), atol=1e-4)
        assert not torch.allclose(base, gpt(ids, layout=swapped), atol=1e-3)


def test_one_axis_rotary_equals_plain_positions():
    gpt = tiny_gpt()
    ids = rand_ids(2, 7)
    with torch.no_grad():
        assert torch.equal(gpt(ids), gpt(ids, layout=TokenLayout.sequence(7).expand(2)))


# ---- KV cache ---------------------------------------------------------------------------------
def test_prefill_and_step_decode_match_full_forward():
    gpt = tiny_gpt()
    ids = rand_ids(3, 20)
    with torch.no_grad():
        full = gpt(ids)
        gpt.setup_cache(3, 20)
        chunks = [gpt(ids[:, :8], start_pos=0), gpt(ids[:, 8:13], start_pos=8)]
        chunks += [gpt(ids[:, t : t + 1], start_pos=t) for t in range(13, 20)]
        gpt.clear_cache()
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)


def test_group_by_group_decode_matches_full_forward():
    """Next-scale style: all positions of a group in one cached forward."""
    gpt = tiny_gpt(coord_rank=3)
    layout = TokenLayout.scales([1, 2, 3, 4])
    ids = rand_ids(2, 30)
    with torch.no_grad():
        full = gpt(ids, layout=layout)
        gpt.setup_cache(2, 30)
        bounds = [0, 1, 5, 14, 30]
        steps = [gpt(ids[:, s:e], layout=layout, start_pos=s) for s, e in zip(bounds, bounds[1:])]
        gpt.clear_cache()
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_cache_errors():
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match="setup_cache"):
        gpt(rand_ids(1, 1), start_pos=4)
    gpt.setup_cache(2, 8)
    with pytest.raises(ValueError, match="batch_size=2"):
        gpt(rand_ids(3, 1), start_pos=0)
    with pytest.raises(ValueError, match="KV cache of 8"):
        gpt(rand_ids(2, 4), start_pos=6)
    with pytest.raises(ValueError, match="max_seq_len"):
        gpt.setup_cache(1, 1000)


# ---- conditioning -----------------------------------------------------------------------------
def test_guided_generation_uses_doubled_cache_and_null_class():
    """Greedy CFG decoding equals a hand-written loop over uncached cond and null-class forwards."""
    gpt = tiny_gpt(num_classes=5)
    labels = torch.tensor([1, 3])
    scale = 3.0
    out = gpt.generate(torch.zeros(2, 0, dtype=torch.long), max_new_tokens=6, class_labels=labels, temperature=0, guidance_scale=scale)
    assert gpt.cache_shape is None  # freed after generation
    seq = torch.zeros(2, 0, dtype=torch.long)
    null = torch.full_like(labels, gpt.cfg.null_class_id)
    with torch.no_grad():
        for _ in range(6):
            def last_logits(lab):
                x = torch.cat([gpt.embed_class(lab), gpt.embed_tokens(seq)], dim=1)
                return gpt.logits(gpt.hidden_states(x))[:, -1]

            cond, uncond = last_logits(labels), last_logits(null)
            seq = torch.cat([seq, (uncond + scale * (cond - uncond)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_class_and_guidance_errors():
    gpt = tiny_gpt(num_classes=5)
    prompt = torch.zeros(1, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"class_labels holds 7; expected 0..4"):
        gpt.generate(prompt, max_new_tokens=2, class_labels=torch.tensor([7]))
    with pytest.raises(ValueError, match="guidance_scale"):
        gpt.generate(rand_ids(1, 3), max_new_tokens=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="num_classes=0"):
        tiny_gpt().embed_class(torch.tensor([0]))
    with pytest.raises(ValueError, match="must be even"):
        split_guidance_batch(torch.zeros(3, 4))
    cond, uncond = split_guidance_batch(torch.arange(4.0).view(4, 1))
    assert cond.flatten().tolist() == [0.0, 1.0] and uncond.flatten().tolist() == [2.0, 3.0]


def test_text_prefix_bytes_and_errors():
    gpt = tiny_gpt(text_max_len=8)
    ids = gpt.encode_text(["ab", ""])
    assert ids.tolist() == [[97, 98] + [256] * 6, [256] * 8]
    assert gpt.embed_text(ids).shape == (2, 8, 32)
    with pytest.raises(ValueError, match="text_max_len=8"):
        gpt.encode_text(["a red triangle"])
    with pytest.raises(TypeError, match="list of str"):
        gpt.encode_text("ab")


def test_adaln_condition_changes_output_and_is_required():
    gpt = tiny_gpt(adaln_dim=6)
    ids = rand_ids(2, 5)
    cond = torch.randn(2, 6)
    with torch.no_grad():
        for module in gpt.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features == 6:
                module.weight.normal_(0, 0.5)
        assert not torch.allclose(gpt(ids, condition=cond), gpt(ids, condition=-cond), atol=1e-4)
    with pytest.raises(ValueError, match=r"condition must have shape \[2, 6\]"):
        gpt(ids)
    with pytest.raises(ValueError, match="adaln_dim=0"):
        tiny_gpt()(ids, condition=cond)


def test_multi_codebook_embeds_and_heads():
    gpt = tiny_gpt(vocab_size=[16, 16, 16])
    ids = rand_ids(2, 5, 3, high=16)
    logits = gpt(ids)
    assert isinstance(logits, list) and [tuple(x.shape) for x in logits] == [(2, 5, 16)] * 3
    with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
        gpt(rand_ids(2, 5, high=16))


# ---- generation -------------------------------------------------------------------------------
def test_generate_is_reproducible_with_a_generator():
    gpt = tiny_gpt()
    prompt = rand_ids(3, 4)
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
    a = gpt.generate(prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    b = gpt.generate(prompt, generator=torch.Generator().manual_seed(7), **kwargs)
    c = gpt.generate(prompt, generator=torch.Generator().manual_seed(8), **kwargs)
    assert a.shape == (3, 16) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_generate_equals_argmax_of_full_forward():
    gpt = tiny_gpt()
    seq = rand_ids(2, 3)
    out = gpt.generate(seq, max_new_tokens=8, temperature=0)
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, gpt(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


# ---- bad input --------------------------------------------------------------------------------
def test_bad_inputs_name_the_argument():
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match=r"input_ids holds id 64 outside codebook 0's vocabulary \[0, 64\)"):
        gpt(torch.tensor([[1, 64]]))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        gpt(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, T\]"):
        gpt(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="beyond max_seq_len=128"):
        gpt(rand_ids(1, 129))
    with pytest.raises(ValueError, match="beyond max_seq_len=128"):
        gpt.generate(rand_ids(1, 100), max_new_tokens=40)
    with pytest.raises(ValueError, match="coord_rank=1"):
        gpt(rand_ids(1, 4), layout=TokenLayout.grid((2, 2)))
    with pytest.raises(ValueError, match=r"codebooks \(64, 64\)"):
        gpt(rand_ids(1, 4), layout=TokenLayout.sequence(4, content=DiscreteContent((64, 64))))
    with pytest.raises(ValueError, match="layout covers 3 positions"):
        gpt(rand_ids(1, 4), layout=TokenLayout.sequence(3))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        gpt()
    with pytest.raises(ValueError, match="max_new_tokens"):
        gpt.generate(rand_ids(1, 2), max_new_tokens=0)


def test_generation_with_nan_weights_fails_clearly():
    gpt = tiny_gpt()
    with torch.no_grad():
        gpt.heads[0].weight[:, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[0, 1\] became NaN"):
        gpt.generate(rand_ids(2, 3), max_new_tokens=3)
