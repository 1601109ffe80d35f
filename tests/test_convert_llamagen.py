"""LlamaGen's class-conditional GPT, converted, gives the public code's logits and greedy CFG generations.

The fixture (tests/fixtures/published/llamagen, written by scripts/fixtures/make_llamagen_fixture.py
against LlamaGen ce98ec4) holds a tiny random ``Transformer`` in LlamaGen's own layout and what the
public code computed with it: teacher-forced logits and ``generate(..., sample_logits=False)`` tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.llamagen_weights import llamagen_generator
from mmgen.patterns import InputCoordinates, Raster
from mmgen.weight_maps import WeightsMismatchError
from pipelines import NextTokenPipeline
from tokenizers_visual import VQConfig, VQImageTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "llamagen"


@pytest.fixture(scope="module")
def published():
    weights = load_file(FIXTURE / "gpt.safetensors")
    config = json.loads((FIXTURE / "gpt_config.json").read_text())
    return weights, config, load_file(FIXTURE / "io.safetensors")


def _pipeline(generator) -> NextTokenPipeline:
    # any tokenizer of a 4x4 grid over 64 ids carries the GPT's tokens; the LlamaGen VQ has its own test
    tokenizer = VQImageTokenizer(VQConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], z_channels=8,
                                          codebook_size=64))
    return NextTokenPipeline(gpt=generator.gpt, tokenizer=tokenizer, head=generator.head, conditioner=generator.conditioner,
                             null_condition_trained=True, rotary_coords="input")


def test_teacher_forced_logits_equal_llamagen(published):
    weights, config, io = published
    generator = llamagen_generator(weights, config)
    start_B1D = generator.conditioner.embedding(io["gpt_cond_idx"]).unsqueeze(1)
    x_BLD = torch.cat([start_B1D, generator.gpt.embed_tokens(io["gpt_idx"])], dim=1)
    with torch.no_grad():
        hidden = generator.gpt.hidden_states(x_BLD, layout=InputCoordinates(Raster((4, 4))).layout())
        logits_BLV = generator.head.logits(hidden)
    assert (logits_BLV - io["gpt_logits"]).abs().max() <= 1e-4


@pytest.mark.parametrize("scale, name", [(4.0, "gpt_generated_cfg4"), (1.0, "gpt_generated_cfg1")])
def test_greedy_generation_with_cfg_equals_llamagen(published, scale, name):
    weights, config, io = published
    pipe = _pipeline(llamagen_generator(weights, config))
    pipe.set_progress_bar_config(disable=True)
    tokens = pipe(class_labels=[1, 7], guidance_scale=scale, temperature=0.0, output_type="tokens").tokens
    assert torch.equal(tokens.reshape(2, 16), io[name].long())
    # lossless speculative decoding keeps them
    jacobi = pipe(class_labels=[1, 7], guidance_scale=scale, temperature=0.0, output_type="tokens", decoding="jacobi").tokens
    assert torch.equal(jacobi, tokens)


def test_the_loss_sees_the_class_through_the_first_slot(published):
    weights, config, io = published
    pipe = _pipeline(llamagen_generator(weights, config))
    targets = io["gpt_targets"].view(2, 4, 4)
    loss, _ = pipe.loss(pipe.to_sequence(targets), class_labels=io["gpt_cond_idx"], cond_drop_prob=0.0)
    logits = io["gpt_logits"]
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), io["gpt_targets"].reshape(-1))
    assert abs(float(loss.detach()) - float(reference)) <= 1e-4


def test_mismatched_llamagen_weights_are_listed(published):
    weights, config, _ = published
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['layers\.1\.ffn_norm\.weight'\]"):
        llamagen_generator({k: v for k, v in weights.items() if k != "layers.1.ffn_norm.weight"}, config)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['layers\.0\.feed_forward\.w3\.weight'\]"):
        llamagen_generator({k: v for k, v in weights.items() if k != "layers.0.feed_forward.w3.weight"}, config)
    with pytest.raises(WeightsMismatchError, match=r"output\.weight: \(63, 64\) where the config needs \(64, 64\)"):
        llamagen_generator({**weights, "output.weight": torch.zeros(63, 64)}, config)
    with pytest.raises(ValueError, match="give n_head"):
        llamagen_generator(weights, {k: v for k, v in config.items() if k != "n_head"})
    with pytest.raises(ValueError, match="model_type='t2i'"):
        llamagen_generator(weights, {**config, "model_type": "t2i"})


def test_cli_converts_llamagen_into_a_pipeline_that_generates_its_images(published, tmp_path):
    import shutil

    from mmgen.app.cli import main

    _, config, io = published
    src = tmp_path / "llamagen"
    src.mkdir()
    for name in ("gpt.safetensors", "vq.safetensors"):
        shutil.copy(FIXTURE / name, src / name)
    vq = json.loads((FIXTURE / "vq_config.json").read_text())
    tokenizer = {**vq["model_args"], "ch": vq["encoder"]["ch"], "num_res_blocks": vq["encoder"]["num_res_blocks"]}
    (src / "config.json").write_text(json.dumps({"gpt": config, "tokenizer": tokenizer}))
    assert main(["convert", "--from", "llamagen", str(src), str(tmp_path / "pipe")]) == 0
    pipe = NextTokenPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[1, 7], guidance_scale=4.0, temperature=0.0, output_type="pt")
    assert torch.equal(out.tokens.reshape(2, 16), io["gpt_generated_cfg4"].long())
    images = out.images * 2 - 1  # "pt" images are in [0, 1]; LlamaGen's decode_code gives [-1, 1] unclamped
    assert (images - io["vq_decoded_gpt_cfg4"].clamp(-1, 1)).abs().max() <= 1e-4
    assert "LlamaGen" in (tmp_path / "pipe" / "README.md").read_text()
