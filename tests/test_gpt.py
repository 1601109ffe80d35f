"""The GPT trunk: layouts, KV cache (and its rollback), mask override, AdaLN, inputs, and plain LM continuation."""

import pytest
import torch

from mmgen import GPT, ContinuousContent, GPTConfig, TokenLayout, split_guidance_batch
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.generation import draw_seeds, generate
from mmgen.heads import CategoricalHead, CategoricalHeadConfig
from mmgen.patterns import Raster
from mmgen.programs import PatternProgram, PreviousGroupInputs, continue_tokens
from mmgen.sampling import SamplingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{**dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, init_std=0.1), **overrides})
    return GPT(config).eval()


def tiny_head(sizes=(64,)) -> CategoricalHead:
    torch.manual_seed(1)
    head = CategoricalHead(CategoricalHeadConfig(dim=32, codebook_sizes=list(sizes))).eval()
    with torch.no_grad():  # peaked logits: greedy comparisons are free of near-ties
        for projection in head.projections:
            projection.weight.normal_(0, 0.5)
    return head


def rand_ids(*shape, high=64, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def cache_snapshot(gpt: GPT) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(block.attn.cache.k.clone(), block.attn.cache.v.clone()) for block in gpt.layers]


# ---- config ----------------------------------------------------------------------------------
def test_config_derives_defaults_and_validates():
    cfg = GPTConfig(dim=96, n_heads=6)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim) == (6, 16, 256)
    assert GPTConfig(vocab_size=[8, 8]).codebook_sizes == (8, 8)
    with pytest.raises(ValueError, match="n_kv_heads"):
        GPTConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=[8, 0])
    with pytest.raises(ValueError, match="adaln_dim"):
        GPTConfig(adaln_dim=-1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GPTConfig(hidden_size=3)
    for removed in ("tie_embeddings", "num_classes", "text_max_len"):  # output heads and conditioning left the GPT
        with pytest.raises(TypeError, match="unexpected keyword"):
            GPTConfig(**{removed: 1})


def test_vocab_size_zero_builds_a_model_without_token_tables():
    with pytest.raises(ValueError, match="vocab_size=0 needs another input"):
        GPTConfig(vocab_size=0)
    gpt = tiny_gpt(vocab_size=0, input_dim=5, start_token=True)
    assert gpt.cfg.codebook_sizes == () and len(gpt.tok_embeddings) == 0 and gpt.content is None
    assert not any("tok_embeddings" in name for name in gpt.state_dict())
    x = torch.randn(2, 4, 5)
    with torch.no_grad():
        inputs = torch.cat([gpt.start_inputs(2, 1), gpt.embed_inputs(x)], dim=1)
        hidden = gpt(inputs_embeds=inputs)
    assert hidden.shape == (2, 5, 32) and torch.isfinite(hidden).all()
    with pytest.raises(ValueError, match="vocab_size=0"):
        gpt.embed_tokens(rand_ids(2, 3))
    with pytest.raises(ValueError, match="vocab_size=0"):
        gpt(rand_ids(2, 3))
    start_only = tiny_gpt(vocab_size=0, start_token=True)
    assert start_only.start_inputs(3, 2).shape == (3, 2, 32)
    with pytest.raises(ValueError, match="input_dim=0"):
        start_only.embed_inputs(x)


# ---- attention follows the layout -------------------------------------------------------------
def test_plain_sequence_is_causal():
    gpt = tiny_gpt()
    ids = rand_ids(1, 10)
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 64
    with torch.no_grad():
        a, b = gpt(ids), gpt(changed)
    assert a.shape == (1, 10, 32)  # hidden states: the trunk has no output vocabulary
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
    """Shifting every coordinate by a constant leaves attention, hence the hidden states, unchanged."""
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


def test_gqa_equals_attention_with_repeated_kv_heads():
    """n_kv_heads=2 of 4 query heads computes what full multi-head attention with each kv head shared by 2 computes."""
    gqa = tiny_gpt(n_heads=4, n_kv_heads=2)
    mha = tiny_gpt(n_heads=4, n_kv_heads=4)
    hd = gqa.cfg.head_dim
    with torch.no_grad():
        for src, dst in zip(gqa.layers, mha.layers):
            q, k, v = src.attn.wqkv.weight.split([4 * hd, 2 * hd, 2 * hd])
            k, v = (w.view(2, 1, hd, -1).expand(2, 2, hd, w.shape[-1]).reshape(4 * hd, -1) for w in (k, v))
            dst.attn.wqkv.weight.copy_(torch.cat([q, k, v]))
            for name in ("attn_norm", "ffn_norm", "ffn"):
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            dst.attn.wo.load_state_dict(src.attn.wo.state_dict())
        mha.tok_embeddings.load_state_dict(gqa.tok_embeddings.state_dict())
        ids = rand_ids(2, 9)
        assert torch.allclose(gqa(ids), mha(ids), atol=1e-5)
    assert gqa.layers[0].attn.wqkv.weight.shape[0] == (4 + 2 * 2) * hd  # fewer kv projections


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
    assert gpt.cache_shape == (2, 8)
    with pytest.raises(ValueError, match="batch_size=2"):
        gpt(rand_ids(3, 1), start_pos=0)
    with pytest.raises(ValueError, match="KV cache of 8"):
        gpt(rand_ids(2, 4), start_pos=6)
    with pytest.raises(ValueError, match="max_seq_len"):
        gpt.setup_cache(1, 1000)
    gpt.clear_cache()
    assert gpt.cache_shape is None


def test_rollback_restores_the_cache_exactly_as_before_the_rolled_back_positions():
    gpt = tiny_gpt()
    ids, other = rand_ids(2, 9), rand_ids(2, 9, seed=1)
    with torch.no_grad():
        gpt.setup_cache(2, 12)
        gpt(ids[:, :5], start_pos=0)
        before = cache_snapshot(gpt)
        gpt(ids[:, 5:9], start_pos=5)  # 4 speculative positions, then rejected
        assert any(not torch.equal(k, k0) for (k, _), (k0, _) in zip(cache_snapshot(gpt), before))
        gpt.rollback_cache(5)
        for (k, v), (k0, v0) in zip(cache_snapshot(gpt), before):
            assert torch.equal(k, k0) and torch.equal(v, v0)
        # decoding goes on from the rolled-back cache as if the rejected positions never existed
        resumed = gpt(other[:, 5:9], start_pos=5)
        expected = gpt(torch.cat([ids[:, :5], other[:, 5:9]], dim=1))[:, 5:]  # uncached
        gpt.rollback_cache(0)
        assert all(not k.any() and not v.any() for k, v in cache_snapshot(gpt))
        gpt.rollback_cache(12)  # keeping everything is allowed and changes nothing
    assert torch.allclose(resumed, expected, atol=1e-5)


@pytest.mark.parametrize("length", [-1, 13, True, 2.0, "3"])
def test_rollback_rejects_bad_lengths(length):
    gpt = tiny_gpt()
    gpt.setup_cache(1, 12)
    with pytest.raises(ValueError, match=r"length must be an int in 0\.\.12"):
        gpt.rollback_cache(length)


def test_rollback_needs_a_cache():
    with pytest.raises(ValueError, match="setup_cache"):
        tiny_gpt().rollback_cache(0)


# ---- attention mask override ------------------------------------------------------------------
def test_mask_override_with_the_layout_mask_equals_the_layout_result():
    gpt = tiny_gpt(coord_rank=3)
    layout = TokenLayout.scales([1, 2, 3])
    ids = rand_ids(2, 14)
    with torch.no_grad():
        full = gpt(ids, layout=layout)
        assert torch.equal(gpt(ids, layout=layout, attention_mask=layout.attention_mask().expand(2, -1, -1)), full)
        assert torch.equal(gpt(ids, layout=layout, attention_mask=layout.attention_mask()), full)  # [1, T, T] broadcasts
        gpt.setup_cache(2, 14)
        gpt(ids[:, :5], layout=layout, start_pos=0)
        step = gpt(ids[:, 5:], layout=layout, start_pos=5, attention_mask=layout.attention_mask(5, 14))
        gpt.clear_cache()
    assert torch.allclose(step, full[:, 5:], atol=1e-5)


def test_mask_override_replaces_the_group_mask_but_keeps_the_coordinates():
    gpt = tiny_gpt(coord_rank=3)
    layout = TokenLayout.scales([1, 2, 3])
    one_per_group = TokenLayout(layout.coords, torch.arange(14).view(1, 14), layout.valid)
    causal = torch.ones(14, 14, dtype=torch.bool).tril().unsqueeze(0)
    ids = rand_ids(1, 14)
    with torch.no_grad():
        overridden = gpt(ids, layout=layout, attention_mask=causal)
        assert torch.allclose(overridden, gpt(ids, layout=one_per_group), atol=1e-5)
        assert not torch.allclose(overridden, gpt(ids, layout=layout), atol=1e-4)
        # a tree mask: query 3 sees token 0 and itself, not its siblings 1 and 2
        tree = torch.ones(4, 4, dtype=torch.bool).tril()
        tree[3, 1:3] = False
        a = gpt(ids[:, :4], attention_mask=tree.unsqueeze(0))
        pair = TokenLayout(torch.tensor([[[0.0] * 3, [3.0] * 3]]), torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool))
        b = gpt(ids[:, [0, 3]], layout=pair)
    assert torch.allclose(a[:, :3], gpt(ids[:, :3], attention_mask=causal[:, :3, :3]), atol=1e-6)
    assert torch.allclose(a[:, 3], b[:, 1], atol=1e-5)


def test_mask_override_rejects_bad_masks():
    gpt = tiny_gpt()
    ids = rand_ids(2, 4)
    good = torch.ones(4, 4, dtype=torch.bool).tril().expand(2, 4, 4)
    with pytest.raises(TypeError, match="attention_mask must be a bool tensor"):
        gpt(ids, attention_mask=good.float())
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[2, 4, 4\]"):
        gpt(ids, attention_mask=good[:, :3])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[2, 4, 4\]"):
        gpt(ids, attention_mask=torch.ones(3, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):
        gpt(ids, attention_mask=good[0])
    empty_row = good.clone()
    empty_row[1, 2] = False
    with pytest.raises(ValueError, match="no key to attend to"):
        gpt(ids, attention_mask=empty_row)
    gpt.setup_cache(2, 8)
    gpt(ids, start_pos=0)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[2, 1, 5\]"):
        gpt(ids[:, :1], start_pos=4, attention_mask=torch.ones(2, 1, 4, dtype=torch.bool))


# ---- conditioning -----------------------------------------------------------------------------
def test_guided_generation_uses_doubled_cache_and_null_class():
    """Greedy CFG decoding equals a hand-written loop over uncached cond and null-class forwards."""
    gpt = tiny_gpt(start_token=True)
    head = tiny_head()
    torch.manual_seed(2)
    conditioner = ClassConditioner(ClassConditionerConfig(dim=32, num_classes=5)).eval()
    with torch.no_grad():
        conditioner.embedding.weight.normal_(0, 1.0)
    scale = 3.0
    cond = conditioner.condition(class_labels=[1, 3], guided=True)
    program = PatternProgram(gpt=gpt, pattern=Raster((6,)), rule=PreviousGroupInputs(gpt=gpt, head=head))
    cache_shapes = []
    with torch.no_grad():
        out, valid = generate(gpt, head, program, cond, sampling=SamplingConfig(temperature=0, guidance_scale=scale),
                              seeds_B=draw_seeds(None, 2), capacity=6,
                              callback=lambda step, tokens: cache_shapes.append(gpt.cache_shape))
    assert cache_shapes == [(4, 7)] * 6  # cond rows + null rows, prefix + 6 slots
    assert gpt.cache_shape is None  # freed after generation
    assert valid.all()
    seq = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(6):
            def last_logits(labels):
                x = torch.cat([conditioner.embedding(labels).unsqueeze(1), gpt.start_inputs(2, 1), gpt.embed_tokens(seq)], dim=1)
                return head.logits(gpt.hidden_states(x))[:, -1]

            c, u = last_logits(torch.tensor([1, 3])), last_logits(torch.full((2,), conditioner.null_class_id))
            seq = torch.cat([seq, (u + scale * (c - u)).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_split_guidance_batch():
    with pytest.raises(ValueError, match="must be even"):
        split_guidance_batch(torch.zeros(3, 4))
    cond, uncond = split_guidance_batch(torch.arange(4.0).view(4, 1))
    assert cond.flatten().tolist() == [0.0, 1.0] and uncond.flatten().tolist() == [2.0, 3.0]


def test_adaln_condition_changes_output_and_is_required():
    gpt = tiny_gpt(adaln_dim=6)
    ids = rand_ids(2, 5)
    cond = torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(gpt(ids, condition=cond), gpt(ids, condition=-cond))  # zero-initialised: identity at start
        for module in gpt.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features == 6:
                module.weight.normal_(0, 0.5)
        assert not torch.allclose(gpt(ids, condition=cond), gpt(ids, condition=-cond), atol=1e-4)
    with pytest.raises(ValueError, match=r"condition must have shape \[2, 6\]"):
        gpt(ids)
    with pytest.raises(ValueError, match=r"condition must have shape \[2, 6\]"):
        gpt(ids, condition=torch.randn(3, 6))
    with pytest.raises(ValueError, match="adaln_dim=0"):
        tiny_gpt()(ids, condition=cond)


# ---- inputs -----------------------------------------------------------------------------------
def test_multi_codebook_embeddings_sum_the_tables():
    gpt = tiny_gpt(vocab_size=[16, 16, 16])
    ids = rand_ids(2, 5, 3, high=16)
    with torch.no_grad():
        expected = sum(table(ids[..., d]) for d, table in enumerate(gpt.tok_embeddings))
        assert torch.equal(gpt.embed_tokens(ids), expected)
        hidden = gpt(ids)
        assert torch.equal(hidden, gpt(inputs_embeds=expected))
    assert hidden.shape == (2, 5, 32)
    logits = tiny_head((16, 16, 16)).logits(hidden)
    assert isinstance(logits, list) and [tuple(x.shape) for x in logits] == [(2, 5, 16)] * 3
    with pytest.raises(ValueError, match=r"\[B, T, 3\]"):
        gpt(rand_ids(2, 5, high=16))


def test_a_shared_codebook_table_tells_the_slots_apart():
    """codebook_embed_dim: one table for all slots, concatenated and projected, so which id sits in which slot counts."""
    gpt = tiny_gpt(vocab_size=[16] * 4, codebook_embed_dim=8)
    assert len(gpt.tok_embeddings) == 1 and gpt.tok_embeddings[0].weight.shape == (16, 8)
    ids = rand_ids(2, 5, 4, high=16)
    with torch.no_grad():
        table, proj = gpt.tok_embeddings[0].weight, gpt.codebook_proj.weight  # [16, 8], [32, 4 * 8]
        expected = sum(table[ids[..., d]] @ proj[:, 8 * d: 8 * (d + 1)].T for d in range(4))
        assert torch.allclose(gpt.embed_tokens(ids), expected, atol=1e-6)
        swapped = ids[..., [1, 0, 2, 3]]
        moved = swapped[..., 0] != swapped[..., 1]
        assert not torch.allclose(gpt.embed_tokens(swapped)[moved], gpt.embed_tokens(ids)[moved])  # a sum would not see it
    assert gpt(ids).shape == (2, 5, 32)
    for sizes in ([16], [16, 8]):
        with pytest.raises(ValueError, match="codebook_embed_dim shares one table among codebooks of one size"):
            GPTConfig(vocab_size=sizes, codebook_embed_dim=8)
    with pytest.raises(ValueError, match="codebook_embed_dim must be an int >= 0"):
        GPTConfig(vocab_size=[16, 16], codebook_embed_dim=-1)


def test_continuous_and_start_inputs():
    gpt = tiny_gpt(input_dim=3, start_token=True)
    x = torch.randn(2, 4, 3)
    assert torch.equal(gpt.embed_inputs(x), gpt.input_proj(x))
    start = gpt.start_inputs(2, 3)
    assert start.shape == (2, 3, 32) and torch.equal(start[1, 2], gpt.start_embedding)
    with pytest.raises(ValueError, match=r"continuous inputs must have shape \[B, T, 3\]"):
        gpt.embed_inputs(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="input_dim=0"):
        tiny_gpt().embed_inputs(x)
    with pytest.raises(ValueError, match="start_token=False"):
        tiny_gpt().start_inputs(2, 1)


# ---- plain LM continuation --------------------------------------------------------------------
def test_continue_tokens_is_reproducible_with_a_generator():
    gpt, head = tiny_gpt(), tiny_head()
    prompt = rand_ids(3, 4)
    sampling = SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)
    a, b, c = (continue_tokens(gpt, head, prompt, max_new_tokens=12, sampling=sampling, generator=torch.Generator().manual_seed(s))
               for s in (7, 7, 8))
    assert a.shape == (3, 16) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one generator per sample: a sample does not depend on its batch
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = continue_tokens(gpt, head, prompt[:2], max_new_tokens=12, sampling=sampling, generator=gens(7, 8))
    alone = continue_tokens(gpt, head, prompt[1:2], max_new_tokens=12, sampling=sampling, generator=gens(8))
    assert torch.equal(batch[1:2], alone)


@pytest.mark.parametrize("prompt_len", [1, 3])
def test_greedy_continue_tokens_equals_argmax_of_full_forward(prompt_len):
    gpt, head = tiny_gpt(), tiny_head()
    seq = rand_ids(2, prompt_len)
    out = continue_tokens(gpt, head, seq, max_new_tokens=8, sampling=SamplingConfig(temperature=0))
    assert gpt.cache_shape is None
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, head.logits(gpt(seq))[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_continue_tokens_rejects_bad_arguments():
    gpt, head = tiny_gpt(), tiny_head()
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        continue_tokens(gpt, head, rand_ids(1, 2), max_new_tokens=0)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        continue_tokens(gpt, head, rand_ids(1, 2), max_new_tokens=2.0)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, T\] with T >= 1"):
        continue_tokens(gpt, head, torch.zeros(2, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, T\]"):
        continue_tokens(gpt, head, rand_ids(4), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids holds id 64 outside codebook 0's vocabulary \[0, 64\)"):
        continue_tokens(gpt, head, torch.tensor([[1, 64]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_seq_len=128"):
        continue_tokens(gpt, head, rand_ids(1, 100), max_new_tokens=40)
    with pytest.raises(ValueError, match="generator is a list of 1, but 2 samples"):
        continue_tokens(gpt, head, rand_ids(2, 2), max_new_tokens=2, generator=[torch.Generator()])
    assert gpt.cache_shape is None


def test_continue_tokens_with_nan_weights_fails_clearly():
    gpt, head = tiny_gpt(), tiny_head()
    with torch.no_grad():
        head.projections[0].weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[0, 1\] contain NaN"):
        continue_tokens(gpt, head, rand_ids(2, 3), max_new_tokens=3)
    assert gpt.cache_shape is None  # freed on the error path too


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
    gpt.setup_cache(1, 128)
    with pytest.raises(ValueError, match="beyond max_seq_len=128"):
        gpt(rand_ids(1, 2), start_pos=127)
    gpt.clear_cache()
    with pytest.raises(ValueError, match="coord_rank=1"):
        gpt(rand_ids(1, 4), layout=TokenLayout.grid((2, 2)))
    with pytest.raises(ValueError, match="pass inputs_embeds, not input_ids"):
        gpt(rand_ids(1, 4), layout=TokenLayout.sequence(4, content=ContinuousContent(8)))
    with pytest.raises(ValueError, match="layout covers 3 positions"):
        gpt(rand_ids(1, 4), layout=TokenLayout.sequence(3))
    with pytest.raises(ValueError, match="layout has batch size 2"):
        gpt(rand_ids(3, 4), layout=TokenLayout.sequence(4).expand(2))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        gpt()
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \[B, T, 32\]"):
        gpt(inputs_embeds=torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="start_pos must be >= 0"):
        gpt(rand_ids(1, 4), start_pos=-1)


@pytest.mark.parametrize("fields, message", [
    ({"norm_type": "batch"}, "norm_type must be one of"),
    ({"ffn_type": "relu"}, "ffn_type must be one of"),
    ({"norm_affine": False}, "norm_affine=False is for norm_type='layer'"),
    ({"qk_norm": True, "l2_attention": True}, "pick one"),
    ({"num_levels": -1}, "num_levels must be an int >= 0"),
])
def test_published_model_switches_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**fields)
