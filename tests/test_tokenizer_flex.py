"""FlexImageTokenizer: 1D prefixes of any length decode; shorter prefixes are coarser, never better."""

import itertools

import pytest
import torch

from mmgen import DiscreteContent
from mmgen.data import ShapesDataset
from tokenizers_visual.flex import FlexImageTokenizer, FlexImageTokenizerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"image_size": 16, "patch_size": 4, "num_tokens": 8, "fsq_levels": [8, 5, 5, 5], "enc_dim": 32, "enc_layers": 1,
        "enc_heads": 2, "dec_dim": 32, "dec_layers": 1, "dec_heads": 2, "mlp_ratio": 2.0}


def tiny(**overrides) -> FlexImageTokenizer:
    torch.manual_seed(0)
    return FlexImageTokenizer(FlexImageTokenizerConfig(**{**TINY, **overrides})).eval()


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return ShapesDataset(size=size, length=n, split="heldout", seed=seed).batch(range(n))["image"]


def test_round_trip_shapes_and_dtypes():
    tok, x = tiny(), images(3)
    with torch.no_grad():
        ids = tok.encode(x)
        assert ids.shape == (3, 8) and ids.dtype == torch.long
        assert int(ids.min()) >= 0 and int(ids.max()) < tok.codebook_size == 1000
        for k in (1, 3, 8):
            ids_k = tok.encode(x, num_tokens=k)
            assert ids_k.shape == (3, k)
            rec = tok.decode(ids_k)
            assert rec.shape == x.shape and rec.dtype == x.dtype
            assert float(rec.abs().max()) <= 1.0


def test_prefix_encoding_is_the_prefix_of_the_full_encoding():
    """Registers are causal: the first k ids do not depend on how many come after them."""
    tok, x = tiny(), images(4)
    with torch.no_grad():
        full = tok.encode(x)
        for k in range(1, tok.max_tokens + 1):
            assert torch.equal(tok.encode(x, num_tokens=k), full[:, :k])


def test_eval_mode_is_deterministic_and_fsq_round_trips_ids():
    tok, x = tiny(), images(4)
    with torch.no_grad():
        ids = tok.encode(x)
        assert torch.equal(tok.encode(x), ids)
        assert torch.equal(tok.decode(ids), tok.decode(ids))
        assert torch.equal(tok.train().encode(x), ids)  # FSQ here has no train-only behaviour (no noise dropout)
        codes = tok.fsq.indices_to_codes(ids)
        assert torch.equal(tok.fsq.codes_to_indices(codes).long(), ids)


def test_layout_matches_tokens():
    tok = tiny()
    ids = tok.encode(images(2), num_tokens=5)
    layout = tok.layout(num_tokens=5)
    assert layout.seq_len == ids.shape[1] == 5
    assert layout.content == DiscreteContent((tok.codebook_size,))
    assert torch.equal(layout.groups[0], torch.arange(5))
    layout.content.check_ids(ids)
    assert tok.layout().seq_len == tok.max_tokens == 8


def test_save_load_gives_identical_outputs(tmp_path):
    tok, x = tiny(), images(3)
    tok.save_pretrained(tmp_path)
    loaded = FlexImageTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tok.cfg
    with torch.no_grad():
        ids = tok.encode(x)
        assert torch.equal(loaded.encode(x), ids)
        assert torch.equal(loaded.decode(ids[:, :3]), tok.decode(ids[:, :3]))


def test_nested_dropout_samples_prefix_lengths():
    torch.manual_seed(0)
    assert set(tiny().sample_keep_lengths(400).tolist()) == {1, 2, 4, 8}
    assert set(tiny(nested_dropout="uniform").sample_keep_lengths(400).tolist()) == set(range(1, 9))
    assert set(tiny(nested_dropout="none").sample_keep_lengths(10).tolist()) == {8}


def test_decoder_ignores_dropped_slots():
    """Decoding a prefix equals decoding the full ids with the rest dropped: the same empty-token input."""
    tok, x = tiny(), images(2)
    with torch.no_grad():
        codes, ids = tok._quantize(tok._encode_latents(x, tok.max_tokens))
        keep = torch.tensor([3, 3])
        assert torch.allclose(tok._decode_codes(codes, keep_B=keep).clamp(-1, 1), tok.decode(ids[:, :3]), atol=1e-6)


def test_loss_trains_through_every_parameter():
    tok = tiny().train()
    loss, logs = tok.loss(images(8))
    assert loss.dim() == 0 and set(logs) == {"rec", "usage", "keep_mean"}
    loss.backward()
    unused = [name for name, p in tok.named_parameters() if p.grad is None]
    assert unused == []


def test_bad_inputs_raise_clear_errors():
    tok, x = tiny(), images(2)
    with pytest.raises(ValueError, match="num_tokens must be an int in \\[1, 8\\]"):
        tok.encode(x, num_tokens=9)
    with pytest.raises(ValueError, match="num_tokens must be an int in \\[1, 8\\]"):
        tok.encode(x, num_tokens=0)
    with pytest.raises(ValueError, match="num_tokens must be an int in \\[1, 8\\]"):
        tok.layout(num_tokens=9)
    with pytest.raises(ValueError, match="ids length k must be an int in \\[1, 8\\]"):
        tok.decode(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="ids length k must be an int in \\[1, 8\\]"):
        tok.decode(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must have shape \\[B, k\\]"):
        tok.decode(torch.zeros(2, 4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the codebook \\[0, 1000\\)"):
        tok.decode(torch.full((2, 4), 1000))
    with pytest.raises(ValueError, match="outside the codebook"):
        tok.decode(torch.full((2, 4), -1))
    with pytest.raises(TypeError, match="integer tensor"):
        tok.decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape \\[B, 3, H, W\\]"):
        tok.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="must be 16x16"):
        tok.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        tok.encode(x * 255)
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        tok.loss(x * 255)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_size": 18}, "image_size=18 must be divisible by patch_size=4"),
        ({"fsq_levels": [2, 5]}, "fsq_levels must be a non-empty list of ints >= 3"),
        ({"fsq_levels": []}, "fsq_levels must be a non-empty list"),
        ({"num_tokens": 0}, "num_tokens must be a positive int"),
        ({"num_tokens": 6}, "nested_dropout='pow2' needs num_tokens to be a power of two"),
        ({"nested_dropout": "random"}, "nested_dropout must be one of"),
        ({"enc_dim": 30, "enc_heads": 4}, "enc_dim=30 must be divisible by enc_heads=4"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        FlexImageTokenizerConfig(**{**TINY, **overrides})


def test_held_out_error_falls_monotonically_with_k():
    """Acceptance: after a short nested-dropout training, held-out MSE strictly drops through k = 1, 2, 4, 8."""
    torch.manual_seed(0)
    tok = FlexImageTokenizer(FlexImageTokenizerConfig(**{**TINY, "enc_dim": 48, "dec_dim": 48, "enc_heads": 4,
                                                         "dec_heads": 4, "nested_dropout": "uniform"}))
    steps, batch = 400, 32
    train = ShapesDataset(size=16, length=steps * batch, split="train", seed=0)
    held = images(128, seed=1)
    opt = torch.optim.AdamW(tok.parameters(), lr=5e-3)
    for step in range(steps):
        loss, _ = tok.loss(train.batch(range(step * batch, (step + 1) * batch))["image"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        ids = tok.encode(held)
        mse = [float(((tok.decode(ids[:, :k]) - held) ** 2).mean()) for k in (1, 2, 4, 8)]
    baseline = float(((held - held.mean(0, keepdim=True)) ** 2).mean())
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert mse[-1] < 0.35 * baseline, (mse, baseline)
