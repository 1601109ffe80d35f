"""``GPT.compile_decoding``: one-position steps through torch.compile give the eager loop's tokens.

One tiny model; each compiled shape costs seconds of inductor time on the first step, so the shapes are few.
"""

from __future__ import annotations

import pytest
import torch
from pipeline_fixtures import build, gen, vq_tokenizer

from mmgen import GPT, CategoricalHead, GPTConfig, SamplingConfig
from mmgen.heads import CategoricalHeadConfig
from mmgen.programs import continue_tokens
from pipelines import NextTokenPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lm(**config) -> tuple[GPT, CategoricalHead]:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, **config)).eval()
    head = CategoricalHead(CategoricalHeadConfig(dim=32, codebook_sizes=[64])).eval()
    return gpt, head


def test_compiled_steps_continue_exactly_as_eager_ones_and_frozen_weights_follow_a_recompile():
    gpt, head = tiny_lm()
    prompt = torch.randint(0, 64, (3, 4), generator=gen(0))
    sampling = SamplingConfig(temperature=1.0)
    eager = continue_tokens(gpt, head, prompt, max_new_tokens=12, sampling=sampling, generator=gen(1))
    gpt.compile_decoding(freeze=True)
    head.compile_decoding(freeze=True)
    assert gpt.decoding_compiled
    for _ in range(2):  # the second call reuses the graph and its cache
        assert torch.equal(continue_tokens(gpt, head, prompt, max_new_tokens=12, sampling=sampling, generator=gen(1)), eager)
    with torch.no_grad():
        for p in gpt.parameters():
            p.mul_(1.5)
    gpt.compile_decoding(False)  # eager again: the new weights
    eager_new = continue_tokens(gpt, head, prompt, max_new_tokens=12, sampling=sampling, generator=gen(1))
    gpt.compile_decoding(freeze=True)  # frozen weights are read when compiling: compile again after changing them
    assert torch.equal(continue_tokens(gpt, head, prompt, max_new_tokens=12, sampling=sampling, generator=gen(1)), eager_new)


def test_a_compiled_pipeline_draws_the_same_images_with_guidance():
    pipe = build(NextTokenPipeline, vq_tokenizer())
    pipe.register_to_config(null_condition_trained=True)
    eager = pipe(class_labels=[0, 1], guidance_scale=3.0, generator=gen(0), output_type="tokens").tokens
    pipe.compile_decoding()
    assert torch.equal(pipe(class_labels=[0, 1], guidance_scale=3.0, generator=gen(0), output_type="tokens").tokens, eager)
