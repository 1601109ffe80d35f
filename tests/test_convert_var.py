"""VAR's transformer, converted, gives the public code's logits and its greedy next-scale generations with the CFG ramp.

The fixture (tests/fixtures/published/var, written by scripts/fixtures/make_var_fixture.py against
VAR 78b9539) holds a tiny random VAR and VQVAE in VAR's own layout and what the public code computed:
``forward`` logits and ``autoregressive_infer_cfg(top_k=1)`` ids at cfg 1.5 and 1.0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmgen.patterns import Scales
from mmgen.sampling import GuidanceSchedule
from mmgen.var_weights import var_generator
from mmgen.weight_maps import WeightsMismatchError
from pipelines import NextScalePipeline
from tokenizers_visual import MultiScaleVQConfig, MultiScaleVQTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "published" / "var"


@pytest.fixture(scope="module")
def published():
    config = json.loads((FIXTURE / "var_config.json").read_text())["var_kwargs"]
    return load_file(FIXTURE / "var.safetensors"), config, load_file(FIXTURE / "io.safetensors"), load_file(FIXTURE / "vae.safetensors")


def _quantizer_only_tokenizer(vae: dict[str, torch.Tensor]) -> MultiScaleVQTokenizer:
    """VAR's codebook and φ convs in our tokenizer: what generation reads (the next-scale inputs); the VQVAE has its own test."""
    tokenizer = MultiScaleVQTokenizer(MultiScaleVQConfig(image_size=8, channels=32, channel_mult=(1, 1), codebook_size=32,
                                                         codebook_dim=8, patch_nums=(1, 2, 3, 4)))
    state = tokenizer.state_dict()
    state["quantizer.embedding.weight"] = vae["quantize.embedding.weight"]
    for k in range(4):
        for part in ("weight", "bias"):
            state[f"quantizer.phis.{k}.{part}"] = vae[f"quantize.quant_resi.qresi_ls.{k}.{part}"]
    tokenizer.load_state_dict(state)
    return tokenizer.eval()


@pytest.mark.parametrize("labels, name", [([1, 7], "var_logits"), ([10, 10], "var_logits_null")])
def test_teacher_forced_logits_equal_var(published, labels, name):
    weights, config, io, _ = published
    generator, patch_nums = var_generator(weights, config)
    cond = generator.conditioner.training_condition(class_labels=labels, batch_size=2, cond_drop_prob=0.0)
    x_BLD = torch.cat([cond.start_R1D, generator.gpt.embed_inputs(io["var_input"])], dim=1)
    with torch.no_grad():
        hidden = generator.gpt.hidden_states(x_BLD, layout=Scales(patch_nums, rank=2).layout(), condition=cond.adaln_RA)
        logits_BLV = generator.head.logits(hidden)
    assert (logits_BLV - io[name]).abs().max() <= 1e-4


@pytest.mark.parametrize("cfg, tag", [(1.5, "cfg15"), (1.0, "cfg1")])
def test_greedy_next_scale_generation_with_var_ramp_equals_var(published, cfg, tag):
    weights, config, io, vae = published
    generator, _ = var_generator(weights, config)
    pipe = NextScalePipeline(gpt=generator.gpt, tokenizer=_quantizer_only_tokenizer(vae), head=generator.head,
                             conditioner=generator.conditioner, null_condition_trained=True)
    pipe.set_progress_bar_config(disable=True)
    ids = pipe(class_labels=[1, 7], guidance_scale=GuidanceSchedule.from_var(cfg=cfg), temperature=0.0, output_type="tokens").tokens
    for k, ids_Bhw in enumerate(ids):
        assert torch.equal(ids_Bhw.reshape(2, -1), io[f"gen_{tag}_idx_{k}"]), f"scale {k}"


def test_mismatched_var_weights_are_listed(published):
    weights, config, _, _ = published
    with pytest.raises(WeightsMismatchError, match=r"missing keys: \['blocks\.1\.ada_lin\.1\.bias'\]"):
        var_generator({k: v for k, v in weights.items() if k != "blocks.1.ada_lin.1.bias"}, config)
    with pytest.raises(WeightsMismatchError, match=r"unknown keys .*'blocks\.0\.attn\.extra'"):
        var_generator({**weights, "blocks.0.attn.extra": torch.zeros(1)}, config)
    with pytest.raises(WeightsMismatchError, match=r"blocks\.0\.attn\.proj\.weight: \(64, 32\) where the config needs \(64, 64\)"):
        var_generator({**weights, "blocks.0.attn.proj.weight": torch.zeros(64, 32)}, config)
    with pytest.raises(ValueError, match=r"patch_nums=\[1, 2, 4\] make 21"):
        var_generator(weights, {**config, "patch_nums": [1, 2, 4]})
    with pytest.raises(ValueError, match="shared_aln=True is not converted"):
        var_generator(weights, {**config, "shared_aln": True})


def test_cli_converts_var_into_a_pipeline_that_generates_its_images(published, tmp_path):
    import shutil

    from mmgen.app.cli import main

    _, config, io, _ = published
    src = tmp_path / "var"
    src.mkdir()
    for name in ("var.safetensors", "vae.safetensors"):
        shutil.copy(FIXTURE / name, src / name)
    vae = json.loads((FIXTURE / "vae_config.json").read_text())
    tokenizer = {**vae["vqvae_kwargs"], **vae["encoder_decoder_ddconfig"], "image_size": vae["image_size"]}
    (src / "config.json").write_text(json.dumps({"gpt": config, "tokenizer": tokenizer}))
    assert main(["convert", "--from", "var", str(src), str(tmp_path / "pipe")]) == 0
    pipe = NextScalePipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[1, 7], guidance_scale=GuidanceSchedule.from_var(cfg=1.5), temperature=0.0, output_type="pt")
    for k, ids_Bhw in enumerate(out.tokens):
        assert torch.equal(ids_Bhw.reshape(2, -1), io[f"gen_cfg15_idx_{k}"]), f"scale {k}"
    assert (out.images - io["gen_cfg15_img"]).abs().max() <= 1e-4  # both in [0, 1]
