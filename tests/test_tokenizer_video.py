"""CausalVideoTokenizer: causal in time (prefixes of frames <-> prefixes of latent frames), images as 1-frame
videos, the protocol's grid, training, save / load, and clear errors — for the FSQ and the KL bottleneck."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmgen.protocol import TokenSpec, check_tokenizer
from mmgen.tokens import ContinuousContent, DiscreteContent
from tokenizers_visual.causal3d import (
    CausalConv3d,
    CausalResBlock3d,
    TimeDownsample,
    TimeUpsample,
    per_frame,
)
from tokenizers_visual.video import CausalVideoConfig, CausalVideoTokenizer, frame_psnr

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"image_size": 16, "num_frames": 9, "spatial_downsample": 4, "channels": 4, "fsq_levels": [5, 5, 5],
        "latent_dim": 4}
BOTH = pytest.mark.parametrize("bottleneck", ["fsq", "kl"])


def clips(batch: int = 2, frames: int = 9, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random clips ``[B, T, 3, S, S]`` in [-1, 1]: blobs blurred in space and time, so frames differ."""
    noise = torch.rand(batch, 3, 1 + frames // 4, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    video = F.interpolate(noise * 2 - 1, size=(frames, size, size), mode="trilinear", align_corners=True)
    return video.transpose(1, 2).contiguous()


def tiny(bottleneck: str = "fsq", **overrides) -> CausalVideoTokenizer:
    """A tiny tokenizer whose latents vary from position to position.

    At random init every position's pre-bottleneck latent is nearly the same vector (per channel, a std of
    ~0.01 around a mean of ~0.2), so FSQ gives one id everywhere and id tests could not fail. The last
    1x1x1 convolution is rescaled so each channel has mean 0 and std 1 on other clips: still causal.
    """
    torch.manual_seed(0)
    tok = CausalVideoTokenizer(CausalVideoConfig(**{**TINY, "bottleneck": bottleneck, **overrides})).eval()
    seen = []
    hook = tok.to_latent.register_forward_hook(lambda module, args, out: seen.append(out))
    tok.encode(clips(4, frames=tok.cfg.num_frames, size=tok.cfg.image_size, seed=99))
    hook.remove()
    mean, std = seen[0].mean(dim=(0, 2, 3, 4)), seen[0].std(dim=(0, 2, 3, 4))
    with torch.no_grad():
        tok.to_latent.conv.weight.div_(std.view(-1, 1, 1, 1, 1))
        tok.to_latent.conv.bias.sub_(mean).div_(std)
    return tok


def latent_frames(tok: CausalVideoTokenizer, tokens: torch.Tensor, stop: int, start: int = 0) -> torch.Tensor:
    """Latent frames ``start:stop`` of ids ``[B, t, h, w]`` or latents ``[B, C, t, h, w]``."""
    return tokens[:, :, start:stop] if tok.is_continuous else tokens[:, start:stop]


def assert_same_tokens(tok: CausalVideoTokenizer, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    if tok.is_continuous:
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    else:
        assert torch.equal(got, want), int((got != want).sum())


# ---- causality of the tokenizer ------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("temporal, frames", [(4, 9), (2, 5)])
def test_tokens_of_a_prefix_of_frames_are_a_prefix_of_the_tokens(bottleneck, temporal, frames):
    tok = tiny(bottleneck, temporal_downsample=temporal, num_frames=frames)
    x = clips(frames=frames)
    full = tok.encode(x)
    assert (full.shape[2] if tok.is_continuous else full.shape[1]) == 1 + (frames - 1) // temporal
    assert full.unique().numel() > 20  # ids (and latents) vary, so equal prefixes say something
    for k in (0, 1):
        assert_same_tokens(tok, tok.encode(x[:, :1 + temporal * k]), latent_frames(tok, full, 1 + k))
    # frames after the first 1 + temporal leave the first two latent frames alone, and do change a later one
    later = x.clone()
    later[:, 1 + temporal:] = clips(frames=frames, seed=1)[:, 1 + temporal:]
    changed = tok.encode(later)
    assert_same_tokens(tok, latent_frames(tok, changed, 2), latent_frames(tok, full, 2))
    assert not torch.allclose(latent_frames(tok, changed, None, 2).float(), latent_frames(tok, full, None, 2).float())


@BOTH
@pytest.mark.parametrize("temporal, frames", [(4, 9), (2, 5)])
def test_decoding_a_prefix_of_latent_frames_gives_a_prefix_of_the_video(bottleneck, temporal, frames):
    tok = tiny(bottleneck, temporal_downsample=temporal, num_frames=frames)
    tokens = tok.encode(clips(frames=frames))
    with torch.no_grad():
        full = tok.decode(tokens)
        assert full.shape == (2, frames, 3, 16, 16)
        for j in (1, 2, 3):
            part = tok.decode(latent_frames(tok, tokens, j))
            assert part.shape[1] == 1 + temporal * (j - 1) == tok.num_frames_for(j)
            assert torch.allclose(part, full[:, :part.shape[1]], atol=1e-5)


# ---- causality of the layers ---------------------------------------------------------------------
def _layers():
    """(layer, input frames, output frames, t -> how many leading output frames read input frames < t only)."""
    torch.manual_seed(0)
    return [
        pytest.param(CausalConv3d(4, 4), 7, 7, lambda t: t, id="CausalConv3d"),
        pytest.param(CausalConv3d(4, 4, time_stride=2), 7, 4, lambda t: (t + 1) // 2, id="CausalConv3d-stride2"),
        pytest.param(CausalResBlock3d(4), 7, 7, lambda t: t, id="CausalResBlock3d"),
        # output j reads input frames 2j-2 .. 2j: it reads only frames < t while 2j < t
        pytest.param(TimeDownsample(4), 7, 4, lambda t: (t + 1) // 2, id="TimeDownsample"),
        # outputs 2j-1 and 2j come from input frame j and earlier: input frames < t make outputs 0 .. 2t-2
        pytest.param(TimeUpsample(4), 4, 7, lambda t: 2 * t - 1, id="TimeUpsample"),
    ]


@pytest.mark.parametrize("layer, frames, out_frames, unaffected", _layers())
def test_layers_are_causal_in_time(layer, frames, out_frames, unaffected):
    layer.eval()
    x = torch.randn(2, 4, frames, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = layer(x)
        assert y.shape == (2, 4, out_frames, 6, 6)
        for t in range(1, frames):
            x_t = x.clone()
            x_t[:, :, t] += torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(t))
            y_t = layer(x_t)
            keep = unaffected(t)
            assert torch.allclose(y_t[:, :, :keep], y[:, :, :keep], atol=1e-6), f"frame {t} leaked into outputs < {keep}"
            assert (y_t[:, :, keep] - y[:, :, keep]).abs().max() > 1e-3, f"frame {t} does not reach output {keep}"


def test_per_frame_applies_a_2d_module_to_each_frame_alone():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(2, 4)
    x = torch.randn(2, 4, 3, 5, 5)
    with torch.no_grad():
        y = per_frame(norm, x)
        assert y.shape == x.shape
        for t in range(3):
            assert torch.allclose(y[:, :, t], norm(x[:, :, t]), atol=1e-6)


# ---- images are 1-frame videos -------------------------------------------------------------------
@BOTH
def test_an_image_is_a_one_frame_video(bottleneck):
    tok = tiny(bottleneck)
    x = clips()
    images = x[:, 0]
    tokens = tok.encode(images)
    assert_same_tokens(tok, tokens, tok.encode(images[:, None]))
    assert_same_tokens(tok, tokens, latent_frames(tok, tok.encode(x), 1))
    with torch.no_grad():
        out = tok.decode(tokens)
    assert out.shape == (2, 1, 3, 16, 16)


# ---- shapes and the protocol ---------------------------------------------------------------------
@BOTH
@pytest.mark.parametrize("overrides, grid", [
    ({}, (3, 4, 4)),
    ({"temporal_downsample": 2}, (5, 4, 4)),
    ({"temporal_downsample": 1, "num_frames": 5, "spatial_downsample": 8}, (5, 2, 2)),
])
def test_token_spec_positions_and_round_trip_shapes(bottleneck, overrides, grid):
    tok = tiny(bottleneck, **overrides)
    spec = check_tokenizer(tok)
    assert tok.modality == "video"
    cfg = tok.cfg
    assert grid == (1 + (cfg.num_frames - 1) // cfg.temporal_downsample, 16 // cfg.spatial_downsample,
                    16 // cfg.spatial_downsample)
    content = ContinuousContent(4) if bottleneck == "kl" else DiscreteContent((math.prod(TINY["fsq_levels"]),))
    assert spec == TokenSpec(content=content, shape=grid)
    x = clips(frames=cfg.num_frames)
    tokens = tok.encode(x)
    positions = tok.to_positions(tokens)
    assert positions.shape == ((2, *grid, 4) if bottleneck == "kl" else (2, *grid))
    assert torch.equal(tok.from_positions(positions), tokens)
    if bottleneck == "fsq":
        assert not tokens.is_floating_point() and tok.codebook_size == 125
        spec.content.check_ids(positions.flatten(1))  # ids in [0, 125)
    with torch.no_grad():
        out = tok.decode(tokens)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("downsample, side", [(4, 8), (8, 4), (16, 2)])
def test_spatial_downsample_sets_the_grid(downsample, side):
    tok = tiny("fsq", image_size=32, spatial_downsample=downsample, num_frames=5)
    assert tok.token_spec().shape == (2, side, side)
    ids = tok.encode(clips(1, frames=5, size=32))
    assert ids.shape == (1, 2, side, side)
    with torch.no_grad():
        assert tok.decode(ids).shape == (1, 5, 3, 32, 32)


@BOTH
@pytest.mark.parametrize("frames, latent", [(5, 2), (13, 4)])
def test_clips_of_other_lengths_encode_and_decode(bottleneck, frames, latent):
    tok = tiny(bottleneck)  # configured for 9 frames
    assert tok.grid_shape(frames) == (latent, 4, 4) and tok.num_frames_for(latent) == frames
    tokens = tok.encode(clips(frames=frames))
    assert tokens.shape == ((2, 4, latent, 4, 4) if bottleneck == "kl" else (2, latent, 4, 4))
    with torch.no_grad():
        assert tok.decode(tokens).shape == (2, frames, 3, 16, 16)


# ---- training ------------------------------------------------------------------------------------
@BOTH
def test_loss_logs_and_trains(bottleneck):
    tok = tiny(bottleneck, kl_weight=1e-2).train()
    x = clips()
    loss, logs = tok.loss(x)
    assert {"rec", "psnr_first", "psnr_rest"} <= set(logs)
    if bottleneck == "kl":
        assert "kl" in logs and "usage" not in logs and logs["kl"] > 0
        assert loss.item() == pytest.approx(logs["rec"] + 1e-2 * logs["kl"], rel=1e-5)
    else:
        assert "usage" in logs and "kl" not in logs and 0 < logs["usage"] <= 1
        assert loss.item() == pytest.approx(logs["rec"], rel=1e-6)
    optimizer = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first, first_psnr = logs["rec"], logs["psnr_rest"]
    for _ in range(40):
        loss, logs = tok.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["rec"] < 0.75 * first
    assert logs["psnr_rest"] > first_psnr + 2.0


@BOTH
def test_gradients_reach_the_first_encoder_conv(bottleneck):
    tok = tiny(bottleneck).train()
    loss, _ = tok.loss(clips())
    loss.backward()
    grad = tok.frame_encoder.conv_in.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # through FSQ's straight-through rounding, too


# ---- save / load ---------------------------------------------------------------------------------
@BOTH
def test_save_and_load_give_identical_outputs(bottleneck, tmp_path):
    tok = tiny(bottleneck)
    x = clips()
    tok.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    loaded = CausalVideoTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tok.cfg
    tokens = tok.encode(x)
    assert torch.equal(loaded.encode(x), tokens)
    with torch.no_grad():
        assert torch.equal(loaded.decode(tokens), tok.decode(tokens))


# ---- errors --------------------------------------------------------------------------------------
BAD_VIDEOS = [
    pytest.param(lambda x: [x[0, 0], x[0, 0, :, :8, :8]], ValueError, r"videos: all clips / frames must have one size",
                 id="frames-of-different-sizes"),
    pytest.param(lambda x: [x[0], "a"], TypeError, r"videos: a list must hold tensors", id="list-with-a-string"),
    pytest.param(lambda x: x[:, :0], ValueError, r"videos must hold at least one frame, got 0", id="no-frames"),
    pytest.param(lambda x: x.permute(0, 1, 3, 4, 2), ValueError, r"videos must have 3 colour channels.*channels last\? permute",
                 id="channels-last"),
    pytest.param(lambda x: x[:, :8], ValueError, r"videos: this tokenizer takes 1 \+ k\*4 frames .*got 8; the nearest are 5 or 9",
                 id="8-frames"),
    pytest.param(lambda x: torch.where(x > 0.5, float("nan"), x), ValueError, r"videos holds NaN pixels", id="nan"),
    pytest.param(lambda x: (x + 1) * 127.5, ValueError, r"videos must hold values in \[-1, 1\]", id="0-255"),
    pytest.param(lambda x: ((x + 1) * 127.5).to(torch.uint8), TypeError, r"videos must be a float tensor", id="uint8"),
    pytest.param(lambda x: F.interpolate(x[0], size=(32, 32))[None], ValueError, r"videos: frames must be 16x16.*got 32x32",
                 id="wrong-size"),
]


@BOTH
@pytest.mark.parametrize("make, error, message", BAD_VIDEOS)
def test_bad_videos_are_clear_errors(bottleneck, make, error, message):
    tok = tiny(bottleneck)
    bad = make(clips())
    with pytest.raises(error, match=message):
        tok.encode(bad)
    with pytest.raises(error, match=message):
        tok.loss(bad)


def test_bad_tokens_to_decode_are_clear_errors():
    fsq, kl = tiny("fsq"), tiny("kl")
    with pytest.raises(ValueError, match=r"ids holds 125, outside the codebook \[0, 125\)"):
        fsq.decode(torch.full((1, 3, 4, 4), 125))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, t >= 1, 4, 4\]"):
        fsq.decode(torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must have shape \[B, t >= 1, 4, 4\]"):
        fsq.decode(torch.zeros(1, 0, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents must have shape \[B, 4, t >= 1, 4, 4\], got \(1, 3, 3, 4, 4\)"):
        kl.decode(torch.zeros(1, 3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"latents must have shape \[B, 4, t >= 1, 4, 4\], got \(1, 4, 0, 4, 4\)"):
        kl.decode(torch.zeros(1, 4, 0, 4, 4))
    with pytest.raises(TypeError, match=r"latents must be a float tensor"):
        kl.decode(torch.zeros(1, 4, 3, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("field, value, message", [
    ("num_frames", 8, r"num_frames must be 1 \+ k \* temporal_downsample \(4\), got 8"),
    ("spatial_downsample", 3, r"spatial_downsample must be one of \[4, 8, 16\], got 3"),
    ("temporal_downsample", 3, r"temporal_downsample must be 1, 2 or 4, got 3"),
    ("bottleneck", "vq", r"bottleneck must be one of .*got 'vq'"),
    ("fsq_levels", [1], r"fsq_levels must be a non-empty list of ints"),
    ("channel_mult", [1, 2, 4], r"channel_mult must be 2 positive ints for spatial_downsample=4"),
    ("image_size", 18, r"image_size=18 must be divisible by spatial_downsample=4"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        CausalVideoConfig(**{**TINY, field: value})


def test_fsq_levels_below_three_are_refused_by_name():
    """vector-quantize-pytorch's FSQ asserts on a level of 2; the config says so first, naming the field."""
    with pytest.raises(ValueError, match=r"fsq_levels must be a non-empty list of ints >= 3, got \[2, 2, 2\]"):
        CausalVideoConfig(**{**TINY, "fsq_levels": [2, 2, 2]})


# ---- frame PSNR ----------------------------------------------------------------------------------
def test_frame_psnr_first_and_rest():
    x = clips()
    assert frame_psnr(x, x) == {"psnr_first": math.inf, "psnr_rest": math.inf}
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    slight, strong = frame_psnr(x + 0.01 * noise, x), frame_psnr(x + 0.1 * noise, x)
    for key in ("psnr_first", "psnr_rest"):
        assert math.isfinite(slight[key]) and math.isfinite(strong[key]) and strong[key] < slight[key] - 10
    later_only = x.clone()
    later_only[:, 1:] += 0.1 * noise[:, 1:]
    logs = frame_psnr(later_only, x)
    assert logs["psnr_first"] == math.inf and math.isfinite(logs["psnr_rest"])
    assert set(frame_psnr(x[:, :1] + 0.1, x[:, :1])) == {"psnr_first"}
    _, logs = tiny("fsq").loss(x[:, :1])
    assert "psnr_rest" not in logs and math.isfinite(logs["psnr_first"])
