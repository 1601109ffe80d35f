"""KLImageTokenizer: latent round trip, layout, save / load, KL formula, TokenBridge-style PTQ, errors."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mmgen import ContinuousContent, DiscreteContent
from tokenizers_visual.kl import KLConfig, KLImageTokenizer, gaussian_kl

TINY = {"image_size": 32, "channels": 8, "latent_dim": 4}


def tiny_kl(**overrides) -> KLImageTokenizer:
    torch.manual_seed(0)
    return KLImageTokenizer(KLConfig(**{**TINY, **overrides}))


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a few blurred blobs), so latents vary like those of real pictures."""
    noise = torch.rand(batch, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4.0 / (a - b).pow(2).mean()))


# ---- round trip, layout, grids -----------------------------------------------------------------
def test_round_trip_shapes_and_dtypes():
    tok = tiny_kl().eval()
    x = images(3)
    z = tok.encode(x)
    assert z.shape == (3, 4, 8, 8) and z.dtype == x.dtype
    out = tok.decode(z)
    assert out.shape == x.shape and out.dtype == x.dtype and float(out.detach().abs().max()) <= 1.0


def test_encode_gives_the_mean_unless_asked_to_sample():
    tok = tiny_kl().eval()
    x = images(2)
    mean, logvar = tok.posterior(x)
    assert torch.equal(tok.encode(x), mean)
    draw_a = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    draw_b = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draw_a, draw_b) and not torch.equal(draw_a, mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(draw_a, mean + (0.5 * logvar).exp() * noise)


@pytest.mark.parametrize("downsample, grid", [(4, 8), (8, 4), (16, 2)])
def test_downsampling_factor_sets_the_grid(downsample, grid):
    tok = tiny_kl(downsample=downsample).eval()
    z = tok.encode(images(1))
    assert z.shape == (1, 4, grid, grid)
    assert tok.decode(z).shape == (1, 3, 32, 32)
    assert tok.layout().seq_len == grid * grid


def test_layouts_describe_latents_and_ids():
    tok = tiny_kl(ptq_levels=16).eval()
    x = images(2)
    z = tok.encode(x)
    layout = tok.layout()
    assert layout.content == ContinuousContent(4) and layout.seq_len == 64 and layout.coord_rank == 2
    assert layout.coords[0, 9].tolist() == [1.0, 1.0]
    tok.fit_quantizer(z)
    ids = tok.quantize(z)
    ptq = tok.ptq_layout()
    assert ptq.content == DiscreteContent((16, 16, 16, 16)) and ptq.seq_len == 64
    ptq.content.check_ids(ids.reshape(2, -1, 4))
    assert tok.layout(image_size=64).seq_len == 256


def test_save_and_load_give_identical_outputs(tmp_path):
    tok = tiny_kl().eval()
    x = images(2)
    tok.fit_quantizer(tok.encode(x))
    tok.save_pretrained(tmp_path)
    loaded = KLImageTokenizer.from_pretrained(tmp_path).eval()
    assert loaded.cfg == tok.cfg and bool(loaded.ptq_fitted)
    z = tok.encode(x)
    assert torch.equal(z, loaded.encode(x))
    with torch.no_grad():
        assert torch.equal(tok.decode(z), loaded.decode(z))
    assert torch.equal(tok.quantize(z), loaded.quantize(z))
    assert torch.equal(tok.dequantize(tok.quantize(z)), loaded.dequantize(loaded.quantize(z)))


# ---- objective -----------------------------------------------------------------------------------
def test_gaussian_kl_formula():
    zeros = torch.zeros(2, 4, 3, 3)
    assert gaussian_kl(zeros, zeros).item() == 0.0
    mean, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    reference = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean()
    assert gaussian_kl(mean, logvar).item() == pytest.approx(reference.item(), rel=1e-5)
    assert gaussian_kl(mean, logvar).item() > 0


def test_loss_is_reconstruction_plus_weighted_kl_and_trains():
    tok = tiny_kl(kl_weight=1e-2)
    x = images(4)
    loss, logs = tok.loss(x)
    assert set(logs) == {"rec", "kl", "psnr", "latent_std"} and logs["kl"] > 0
    assert loss.item() == pytest.approx(logs["rec"] + 1e-2 * logs["kl"], rel=1e-5)
    tok.eval()
    assert tok.loss(x)[0].item() == tok.loss(x)[0].item()  # eval mode decodes the mean: no noise
    tok.train()
    optimizer = torch.optim.Adam(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, logs = tok.loss(x)
        first = logs["rec"] if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["rec"] < 0.7 * first


# ---- post-training quantisation ------------------------------------------------------------------
def test_quantize_dequantize_within_half_a_bin():
    tok = tiny_kl(ptq_levels=32, ptq_sigma=2.0).eval()
    z = tok.encode(images(8))
    tok.fit_quantizer(z)
    low, high = tok.ptq_low.view(1, -1, 1, 1), tok.ptq_high.view(1, -1, 1, 1)
    mean, std = z.transpose(0, 1).reshape(4, -1).mean(1), z.transpose(0, 1).reshape(4, -1).std(1)
    assert torch.allclose(tok.ptq_low, torch.maximum(mean - 2 * std, z.transpose(0, 1).reshape(4, -1).min(1).values))
    ids = tok.quantize(z)
    assert ids.shape == (8, 8, 8, 4) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    z_hat = tok.dequantize(ids)
    assert z_hat.shape == z.shape
    half_bin = (high - low) / 32 / 2
    inside = (z >= low) & (z <= high)
    assert inside.float().mean() > 0.9
    assert ((z_hat - z).abs() <= half_bin + 1e-6)[inside].all()
    # outside the fitted range, values clip to the edge bins
    far = torch.cat([low - 10, high + 10], dim=0).expand(2, 4, 8, 8)
    assert tok.quantize(far)[0].eq(0).all() and tok.quantize(far)[1].eq(31).all()


def test_decoding_dequantized_latents_is_close_to_decoding_latents():
    # ptq_sigma=10 makes the range the observed min / max, so only the bin width limits the error
    tok = tiny_kl(ptq_levels=64, ptq_sigma=10.0).eval()
    x = images(8)
    with torch.no_grad():
        z = tok.encode(x)
        tok.fit_quantizer(z)
        fine = psnr(tok.decode(tok.dequantize(tok.quantize(z))), tok.decode(z))
        coarse_tok = tiny_kl(ptq_levels=2, ptq_sigma=10.0).eval()
        coarse_tok.fit_quantizer(z)
        coarse = psnr(coarse_tok.decode(coarse_tok.dequantize(coarse_tok.quantize(z))), tok.decode(z))
    assert fine > 40.0 and fine > coarse + 20.0


def test_quantizer_must_be_fitted_first():
    tok = tiny_kl().eval()
    z = tok.encode(images(1))
    with pytest.raises(RuntimeError, match=r"call fit_quantizer"):
        tok.quantize(z)
    with pytest.raises(RuntimeError, match=r"call fit_quantizer"):
        tok.dequantize(torch.zeros(1, 8, 8, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="constant"):
        tok.fit_quantizer(torch.zeros(2, 4, 8, 8))


# ---- errors -------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors():
    tok = tiny_kl().eval()
    with pytest.raises(ValueError, match=r"shape \[B, 3, H, W\]"):
        tok.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        tok.encode(torch.zeros(1, 3, 34, 32))
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        tok.encode(images(1) * 255)
    with pytest.raises(ValueError, match=r"latents must have shape \[B, 4, h, w\]"):
        tok.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="float tensor"):
        tok.decode(torch.zeros(1, 4, 8, 8, dtype=torch.long))
    tok.fit_quantizer(tok.encode(images(2)))
    with pytest.raises(ValueError, match=r"holds 64, outside the codebook \[0, 64\)"):
        tok.dequantize(torch.full((1, 8, 8, 4), 64))
    with pytest.raises(ValueError, match=r"shape \[B, h, w, 4\]"):
        tok.dequantize(torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[B, h, w, 4\]"):
        tok.dequantize(torch.zeros(1, 8, 8, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents must have shape"):
        tok.quantize(torch.zeros(1, 8, 8, 4))


@pytest.mark.parametrize("field, value, message", [
    ("downsample", 32, "downsample must be one of"),
    ("channel_mult", [1, 2, 2, 2], r"gives downsampling 8, but downsample=4"),
    ("latent_dim", 0, "latent_dim must be a positive int"),
    ("kl_weight", -1e-6, "kl_weight must be >= 0"),
    ("ptq_levels", 1, "ptq_levels must be an int >= 2"),
    ("ptq_sigma", 0.0, "ptq_sigma must be > 0"),
    ("rec_loss", "huber", "rec_loss must be one of"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        KLConfig(**{field: value})
