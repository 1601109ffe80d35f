"""`mmgen demo`: every paradigm's pipeline generates every shapes prompt; PNGs, grids, manifest and HTML are written."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmgen.app.cli import main
from mmgen.app.demo import DEFAULT_CHECKPOINTS, PARADIGMS, run_demo
from mmgen.conditioning import ClassConditioner, ClassConditionerConfig
from mmgen.data import NUM_CLASSES, caption
from pipelines import NextScalePipeline, NextTokenPipeline, NextXPipeline
from tokenizers_visual import KLConfig, KLImageTokenizer, MultiScaleVQConfig, MultiScaleVQTokenizer, VQConfig, VQImageTokenizer

NAMES = [caption(c) for c in range(NUM_CLASSES)]


def _pipeline(cls: type, tokenizer: torch.nn.Module, **config) -> object:
    """A tiny class-conditional pipeline over ``tokenizer`` with the shapes captions as class names."""
    conditioner = ClassConditioner(ClassConditionerConfig(dim=32, num_classes=NUM_CLASSES))
    return cls.from_tokenizer(tokenizer, conditioner=conditioner, gpt={"dim": 32, "n_layers": 1, "n_heads": 2},
                              class_names=NAMES, null_condition_trained=True, **config)


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """One tiny random pipeline per paradigm, saved the way the shipped ones are."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    vq = VQImageTokenizer(VQConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], z_channels=8,
                                   codebook_size=32, codebook_dim=4))
    _pipeline(NextTokenPipeline, vq).save_pretrained(root / "next-token")
    msvq = MultiScaleVQTokenizer(MultiScaleVQConfig(image_size=16, channels=8, channel_mult=(1, 1, 1), codebook_size=32,
                                                    codebook_dim=4, patch_nums=(1, 2, 4), share_quant_resi=3))
    _pipeline(NextScalePipeline, msvq).save_pretrained(root / "next-scale")
    kl = KLImageTokenizer(KLConfig(image_size=16, downsample=4, channels=8, channel_mult=[1, 1, 1], latent_dim=4))
    _pipeline(NextXPipeline, kl, head={"width": 32, "depth": 1}, num_flow_steps=2).save_pretrained(root / "next-x")
    return root


def test_demo_writes_every_sample_grid_manifest_and_html(tiny_checkpoints, tmp_path, one_torch_thread):
    out = tmp_path / "demo"
    manifest = run_demo(checkpoints=tiny_checkpoints, out_dir=out, samples_per_prompt=2, seed=5)
    assert set(manifest["paradigms"]) == set(PARADIGMS)
    assert len(manifest["samples"]) == 3 * NUM_CLASSES * 2
    for paradigm, info in manifest["paradigms"].items():
        assert info["num_samples"] == NUM_CLASSES * 2
        assert 0.0 <= info["prompt_adherence"] <= 1.0
        rows = [s for s in manifest["samples"] if s["paradigm"] == paradigm]
        assert info["prompt_adherence"] == sum(s["right"] for s in rows) / len(rows)
        assert Image.open(out / f"grid-{paradigm}.png").size[0] > 16
    first = manifest["samples"][0]
    assert set(first) >= {"file", "paradigm", "prompt", "class_id", "seed", "seconds"}
    assert [s["seed"] for s in manifest["samples"][:4]] == [5, 6, 7, 8]
    assert [s["prompt"] for s in manifest["samples"][:4]] == [NAMES[0], NAMES[0], NAMES[1], NAMES[1]]
    assert all(Image.open(out / s["file"]).size == (16, 16) for s in manifest["samples"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    page = (out / "index.html").read_text()
    assert "prompt adherence" in page and first["file"] in page


def test_demo_is_reproducible_and_never_overwrites_unasked(tiny_checkpoints, tmp_path, one_torch_thread):
    a = run_demo(checkpoints=tiny_checkpoints, out_dir=tmp_path / "a", paradigms=["next-token"])
    b = run_demo(checkpoints=tiny_checkpoints, out_dir=tmp_path / "b", paradigms=["next-token"])
    assert [(tmp_path / "a" / s["file"]).read_bytes() for s in a["samples"]] == \
        [(tmp_path / "b" / s["file"]).read_bytes() for s in b["samples"]]
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(checkpoints=tiny_checkpoints, out_dir=tmp_path / "a", paradigms=["next-token"])
    run_demo(checkpoints=tiny_checkpoints, out_dir=tmp_path / "a", paradigms=["next-token"], overwrite=True)


def test_demo_command_reports_per_paradigm_and_fails_cleanly(tiny_checkpoints, tmp_path, capsys, one_torch_thread):
    assert main(["demo", "--checkpoints", str(tiny_checkpoints), "--out", str(tmp_path / "o"), "--paradigm", "next-scale"]) == 0
    out = capsys.readouterr().out
    assert "next-scale: 21 samples, prompt adherence" in out and "index.html" in out
    assert main(["demo", "--checkpoints", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
    assert "no shipped pipeline" in capsys.readouterr().err


@pytest.mark.skipif(not (DEFAULT_CHECKPOINTS / "next-token" / "model_index.json").is_file(), reason="no shipped checkpoints")
def test_shipped_checkpoints_follow_their_prompts(tmp_path, one_torch_thread):
    """The repository's own demo: each paradigm's shipped pipeline draws what the prompts ask for."""
    manifest = run_demo(out_dir=tmp_path / "demo")
    for paradigm, info in manifest["paradigms"].items():
        assert info["prompt_adherence"] >= 0.8, (paradigm, info)
