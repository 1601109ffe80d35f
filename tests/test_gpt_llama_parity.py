"""mmgen.GPT + CategoricalHead reproduce transformers' Llama: same logits, same greedy continuations."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from mmgen.convert import gpt_from_llama  # noqa: E402
from mmgen.programs import continue_tokens  # noqa: E402
from mmgen.sampling import SamplingConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARITY_CONFIGS = {
    "mha-untied": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa-untied": dict(num_attention_heads=4, num_key_value_heads=2),
    "gqa-tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mqa-odd-sizes": dict(
        vocab_size=301,
        hidden_size=72,
        intermediate_size=100,
        num_attention_heads=6,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    ),
    "explicit-head-dim-bias": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, attention_bias=True, mlp_bias=True),
}


def tiny_llama(**overrides) -> LlamaForCausalLM:
    base = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        max_position_embeddings=256,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # larger weights than the default init give peaked, tie-free logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_llama(name):
    llama = tiny_llama(**PARITY_CONFIGS[name])
    gpt, head = gpt_from_llama(llama)
    ids = torch.randint(0, llama.config.vocab_size, (3, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = llama(ids).logits
        got = head.logits(gpt(ids))
    assert got.shape == expected.shape == (3, 37, llama.config.vocab_size)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_greedy_continuations_match_llama(name):
    llama = tiny_llama(**PARITY_CONFIGS[name])
    gpt, head = gpt_from_llama(llama)
    ids = torch.randint(0, llama.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    expected = llama.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    got = continue_tokens(gpt, head, ids, max_new_tokens=64, sampling=SamplingConfig(temperature=0))
    assert got.shape == (2, 75)
    assert torch.equal(got, expected)


def test_tied_conversion_copies_embedding_into_head():
    llama = tiny_llama(tie_word_embeddings=True)
    gpt, head = gpt_from_llama(llama)
    table = llama.model.embed_tokens.weight
    assert torch.equal(head.projections[0].weight, table)
    assert torch.equal(gpt.tok_embeddings[0].weight, table)
    assert head.projections[0].weight.data_ptr() != gpt.tok_embeddings[0].weight.data_ptr()  # a copy, not shared


def test_untied_conversion_copies_lm_head():
    llama = tiny_llama()
    gpt, head = gpt_from_llama(llama)
    assert not torch.equal(llama.lm_head.weight, llama.model.embed_tokens.weight)
    assert torch.equal(head.projections[0].weight, llama.lm_head.weight)
    assert head.cfg.dim == gpt.cfg.dim == 64 and head.cfg.codebook_sizes == [256]
    assert not gpt.training and not head.training


def test_rejects_scaled_rope():
    llama = tiny_llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ValueError, match="rope_type='linear'"):
        gpt_from_llama(llama)


def test_rejects_non_llama_model():
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        gpt_from_llama(torch.nn.Linear(2, 2))
