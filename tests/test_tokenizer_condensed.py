"""CondensedVideoTokenizer: a frozen KL CausalVideoTokenizer's clip latents as k 1D tokens, any prefix decoding.

Prefixes of the encoding are self-contained (causal registers), every prefix decodes to a clip, nested dropout
orders the tokens, the base stays frozen, save / load needs no base folder, and bad inputs fail by name.
"""

import shutil

import pytest
import torch

from mmgen.app.training.builders import build_tokenizer
from mmgen.data.video import MovingShapesDataset
from mmgen.protocol import check_tokenizer
from mmgen.tokens import DiscreteContent
from tokenizers_visual.condensed import CondensedVideoConfig, CondensedVideoTokenizer
from tokenizers_visual.video import CausalVideoConfig, CausalVideoTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"image_size": 16, "num_frames": 5, "spatial_downsample": 8, "channels": 4, "bottleneck": "kl", "latent_dim": 4}
TINY = {"num_tokens": 8, "fsq_levels": [3, 3, 3], "dim": 32, "enc_layers": 1, "dec_layers": 1, "heads": 2, "mlp_ratio": 2.0}


def clips(n: int = 4, seed: int = 0, frames: int = 5, size: int = 16) -> torch.Tensor:
    return MovingShapesDataset(size=size, num_frames=frames, length=n, seed=seed).batch(range(n))["video"]


def tiny_base(bottleneck: str = "kl") -> CausalVideoTokenizer:
    """A random base whose posterior means vary: at init they sit near one vector (std ~0.1), so the last 1x1x1
    convolution's mean half is rescaled to mean 0, std 1 per channel on other clips (as the video tests do)."""
    torch.manual_seed(0)
    base = CausalVideoTokenizer(CausalVideoConfig(**{**BASE, "bottleneck": bottleneck})).eval()
    if bottleneck == "kl":
        c = base.cfg.latent_dim
        with torch.no_grad():
            means = base._features(clips(32, seed=99))[:, :c]
            mean, std = means.mean(dim=(0, 2, 3, 4)), means.std(dim=(0, 2, 3, 4))
            base.to_latent.conv.weight[:c] /= std.view(-1, 1, 1, 1, 1)
            base.to_latent.conv.bias[:c] = (base.to_latent.conv.bias[:c] - mean) / std
    return base


@pytest.fixture(scope="module")
def base() -> CausalVideoTokenizer:
    return tiny_base()


def tiny(base: CausalVideoTokenizer, **overrides) -> CondensedVideoTokenizer:
    torch.manual_seed(0)
    return CondensedVideoTokenizer.from_base(base, **{**TINY, **overrides}).eval()


def latent_error(tok: CondensedVideoTokenizer, x: torch.Tensor, k: int) -> float:
    """MSE of the latents decoded from the first k tokens, in units of the base latents' variance."""
    with torch.no_grad():
        z = tok.base_latents(x)
        return float((tok.decode_latents(tok.encode(x, num_tokens=k)) - z).pow(2).mean() / z.var())


# ---- prefixes --------------------------------------------------------------------------------------
def test_every_prefix_decodes_to_a_clip(base):
    tok, x = tiny(base), clips(3)
    with torch.no_grad():
        ids = tok.encode(x)
        assert ids.shape == (3, 8) and ids.dtype == torch.long
        assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size == 27
        assert tok.base_latents(x).shape == (3, 4, 2, 2, 2)
        for k in range(1, tok.max_tokens + 1):
            assert tok.decode_latents(ids[:, :k]).shape == (3, 4, 2, 2, 2)
            rec = tok.decode(ids[:, :k])
            assert rec.shape == x.shape == (3, 5, 3, 16, 16) and rec.dtype == x.dtype
            assert float(rec.abs().max()) <= 1.0


def test_prefix_encoding_is_the_prefix_of_the_full_encoding(trained):
    tok, x = trained["tok"], trained["x"]  # trained: at init FSQ's inputs are small, so every id is the middle code
    with torch.no_grad():
        full = tok.encode(x)
        assert full.unique().numel() > 3  # ids vary, so equal prefixes say something
        for k in range(1, tok.max_tokens + 1):
            assert torch.equal(tok.encode(x, num_tokens=k), full[:, :k])


def test_later_registers_leave_earlier_register_outputs_alone(base):
    """Register r sees registers <= r only: changing registers >= k leaves the first k outputs (and ids) as they are."""
    tok, x = tiny(base), clips(4)
    with torch.no_grad():
        z = tok.base_latents(x)
        before = tok._encode_latents(z)
        k = 3
        tok.registers[:, k:] += torch.randn_like(tok.registers[:, k:])
        after = tok._encode_latents(z)
    assert torch.allclose(after[:, :k], before[:, :k], atol=1e-6)
    assert not torch.allclose(after[:, k:], before[:, k:], atol=1e-3)


# ---- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(base):
    """A tokenizer trained 80 steps on one batch of 32 clips, with what the tests compare against."""
    tok, x = tiny(base), clips(32)
    base_before = {name: t.clone() for name, t in tok.base.state_dict().items()}
    condensed_before = tok.to_latent.weight.detach().clone()
    error_before = latent_error(tok, x, tok.max_tokens)
    tok.train()
    modes = (tok.training, tok.base.training)
    optimizer = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    for _ in range(80):
        loss, logs = tok.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tok.eval()
    return {"tok": tok, "x": x, "base_before": base_before, "condensed_before": condensed_before,
            "error_before": error_before, "modes": modes, "logs": logs}


def test_nested_dropout_orders_the_tokens(trained):
    tok, x = trained["tok"], trained["x"]
    assert set(trained["logs"]) == {"rec", "usage", "keep_mean"}
    full, one = latent_error(tok, x, tok.max_tokens), latent_error(tok, x, 1)
    assert full < trained["error_before"]
    assert full < 0.9 * one, (full, one)  # the full sequence describes a clip better than its first token


def test_the_base_stays_frozen_and_in_eval_mode(trained):
    tok = trained["tok"]
    assert trained["modes"] == (True, False)  # tok.train() leaves the base in eval mode
    assert all(not p.requires_grad for p in tok.base.parameters())
    assert any(p.requires_grad for p in tok.parameters())
    for name, tensor in tok.base.state_dict().items():
        assert torch.equal(tensor, trained["base_before"][name]), name
    assert not torch.equal(tok.to_latent.weight, trained["condensed_before"])  # while the condensed layers learnt


# ---- save / load -----------------------------------------------------------------------------------
def assert_same_model(a: CondensedVideoTokenizer, b: CondensedVideoTokenizer, x: torch.Tensor) -> None:
    with torch.no_grad():
        ids = a.encode(x)
        assert torch.equal(b.encode(x), ids)
        assert torch.equal(b.decode(ids[:, :3]), a.decode(ids[:, :3]))


def test_save_load_round_trip(base, tmp_path):
    tok, x = tiny(base), clips(3)
    tok.save_pretrained(tmp_path)
    loaded = CondensedVideoTokenizer.from_pretrained(tmp_path)
    assert loaded.cfg == tok.cfg and loaded.cfg.base["bottleneck"] == "kl" and loaded.cfg.base_path is None
    assert isinstance(loaded.base, CausalVideoTokenizer) and not loaded.base.training
    assert all(not p.requires_grad for p in loaded.base.parameters())
    assert_same_model(tok, loaded.eval(), x)


def test_base_path_loads_the_base_and_the_saved_folder_does_not_need_it(base, tmp_path):
    base.save_pretrained(tmp_path / "base")
    x = clips(3)
    torch.manual_seed(0)
    tok = CondensedVideoTokenizer(CondensedVideoConfig(base_path=str(tmp_path / "base"), **TINY)).eval()
    for name, tensor in base.state_dict().items():
        assert torch.equal(tok.base.state_dict()[name], tensor), name
    assert tok.cfg.base_path is None and tok.config["base_path"] is None  # the base's config is recorded instead
    assert tok.config["base"] == tok.cfg.base and tok.cfg.base_config() == base.cfg
    # the trainer's path: a tokenizer preset naming the base's folder
    built = build_tokenizer({"class": "CondensedVideoTokenizer", "base_path": str(tmp_path / "base"), **TINY})
    assert isinstance(built, CondensedVideoTokenizer) and built.cfg == tok.cfg
    tok.save_pretrained(tmp_path / "condensed")
    shutil.rmtree(tmp_path / "base")
    loaded = CondensedVideoTokenizer.from_pretrained(tmp_path / "condensed").eval()
    assert loaded.cfg == tok.cfg
    assert_same_model(tok, loaded, x)


# ---- protocol and errors ---------------------------------------------------------------------------
def test_protocol(base):
    tok = tiny(base)
    spec = check_tokenizer(tok)
    assert tok.modality == "video" and spec.shape == (8,) and spec.prefix_decodable
    assert spec.content == DiscreteContent((27,)) and not spec.is_continuous
    ids = tok.encode(clips(2), num_tokens=5)
    assert tok.to_positions(ids) is ids and tok.from_positions(ids) is ids
    assert tok.layout(num_tokens=5).seq_len == 5 and tok.layout().seq_len == tok.max_tokens == 8
    assert tok.num_frames == 5


@pytest.mark.parametrize("fields, match", [
    ({"num_tokens": 0}, "num_tokens must be a positive int"),
    ({"num_tokens": 6}, "power of two"),
    ({"fsq_levels": [8, 2]}, "fsq_levels"),
    ({"dim": 30, "heads": 4}, "dim=30 must be divisible by heads=4"),
    ({"mlp_ratio": 0}, "mlp_ratio"),
    ({"nested_dropout": "half"}, "nested_dropout"),
    ({"base": {}}, "base: .*base_path"),
    ({"base_path": "somewhere"}, "not both"),
    ({"base": {**BASE, "bottleneck": "fsq"}}, "bottleneck: kl"),
    ({"base": {**BASE, "depth": 3}}, r"base: .*unknown CausalVideoConfig key\(s\) \['depth'\]"),
    ({"base": {**BASE, "num_frames": 4}}, "base: num_frames"),
])
def test_config_errors_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        CondensedVideoConfig(**{"base": BASE, **TINY, **fields})


def test_a_discrete_base_is_refused(tmp_path):
    discrete = tiny_base("fsq")
    with pytest.raises(ValueError, match="bottleneck: kl"):
        CondensedVideoTokenizer.from_base(discrete, **TINY)
    discrete.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="bottleneck: kl"):
        CondensedVideoTokenizer(CondensedVideoConfig(base_path=str(tmp_path), **TINY))
    with pytest.raises(ValueError, match="base_path: .*no-such-folder"):
        CondensedVideoTokenizer(CondensedVideoConfig(base_path=str(tmp_path / "no-such-folder"), **TINY))


def test_bad_arguments_fail_by_name(base):
    tok = tiny(base)
    x = clips(2)
    with pytest.raises(TypeError, match="base_tokenizer must be a CausalVideoTokenizer"):
        CondensedVideoTokenizer.from_base(tok, **TINY)
    with pytest.raises(TypeError, match="leave out"):
        CondensedVideoTokenizer.from_base(base, base=BASE, **TINY)
    for k in (0, 9, True):
        with pytest.raises(ValueError, match=r"num_tokens must be an int in \[1, 8\]"):
            tok.encode(x, num_tokens=k)
    with pytest.raises(ValueError, match="exactly 5 frames"):
        tok.encode(clips(2, frames=9))
    with pytest.raises(ValueError, match="exactly 5 frames"):
        tok.encode(x[:, 0])  # images are 1-frame clips
    with pytest.raises(ValueError, match="videos: frames must be 16x16"):
        tok.encode(clips(2, size=32))
    with pytest.raises(TypeError, match="videos must be a float tensor"):
        tok.encode((x * 127).to(torch.uint8))
    with pytest.raises(ValueError, match=r"videos must hold values in \[-1, 1\]"):
        tok.encode(x * 255)
    ids = tok.encode(x)
    with pytest.raises(ValueError, match=r"ids holds 27, outside the codebook \[0, 27\)"):
        tok.decode(torch.full_like(ids, 27))
    with pytest.raises(ValueError, match="ids holds -1"):
        tok.decode(torch.full_like(ids, -1))
    with pytest.raises(ValueError, match=r"ids length k must be an int in \[1, 8\]"):
        tok.decode(torch.cat([ids, ids[:, :1]], dim=1))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, k\]"):
        tok.decode(ids[0])
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        tok.decode(ids.float())


def test_mmgen_train_reports_psnr_per_prefix_length(base, tmp_path):
    """The trainer's final evaluation of a condensed tokenizer: held-out clips decoded from every power-of-two prefix."""
    import json

    import yaml

    from mmgen.app.cli import main

    base.save_pretrained(tmp_path / "base")
    config = tmp_path / "condensed.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "tokenizer", "output_dir": str(tmp_path / "run"), "threads": 1, "log_every": 1,
        "tokenizer": {"class": "CondensedVideoTokenizer", "base_path": str(tmp_path / "base"), **TINY},
        "data": {"dataset": "moving_shapes", "image_size": 16, "num_frames": 5, "num_items": 16},
        "optim": {"steps": 2, "batch_size": 4}, "eval": {"num_items": 4},
    }))
    assert main(["train", str(config)]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())["eval"]["moving_shapes_heldout"]
    assert {f"psnr@k={k}" for k in (1, 2, 4, 8)} <= set(report) and "judged_right" in report
