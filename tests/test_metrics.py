"""Metrics: PSNR, SSIM, codebook usage, Fréchet distance / FID, and the shapes prompt-adherence judge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmgen.data import COLOURS, NUM_CLASSES, SHAPES, ShapesDataset, render_shape
from mmgen.metrics import (
    codebook_usage,
    feature_statistics,
    fid,
    frechet_distance,
    judge_shape,
    judge_shapes,
    prompt_adherence,
    psnr,
    ssim,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


# --- PSNR / SSIM -----------------------------------------------------------------------------------

def test_psnr_values():
    x = _smooth_images(4)
    assert psnr(x, x) == math.inf  # documented: identical images give inf
    assert psnr(x, (x + 0.1)) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-6)  # data range 2
    # the mean of per-image PSNRs, not the PSNR of the pooled error
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.2
    expected = (10 * math.log10(4 / 0.01) + 10 * math.log10(4 / 0.04)) / 2
    assert psnr(x[:2], y[:2]) == pytest.approx(expected, rel=1e-6)
    assert psnr(x[0], y[0]) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-6)  # one [3, H, W] image


def test_psnr_and_ssim_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(2, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_ssim_identity_and_noise():
    x = _smooth_images(4)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    slightly, very = ssim(x, x + 0.05 * noise), ssim(x, x + 0.3 * noise)
    assert 1.0 > slightly > very > 0.0
    assert ssim(x, torch.zeros_like(x)) < slightly  # structure lost


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _smooth_images(2, seed=2), _smooth_images(2, seed=3) * 0.5 + _smooth_images(2, seed=2) * 0.5
    ours = ssim(x, y)
    theirs = np.mean([
        metrics.structural_similarity(x[i].numpy().astype(np.float64), y[i].numpy().astype(np.float64), channel_axis=0,
                                      data_range=2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for i in range(2)
    ])
    assert ours == pytest.approx(theirs, abs=1e-6)


# --- codebook usage --------------------------------------------------------------------------------

def test_codebook_usage_on_known_ids():
    assert codebook_usage(torch.tensor([0, 0, 1, 1]), 4) == pytest.approx({"usage": 0.5, "perplexity": 2.0})
    assert codebook_usage(torch.arange(16).reshape(2, 8), 16) == pytest.approx({"usage": 1.0, "perplexity": 16.0})
    assert codebook_usage(torch.full((3, 5), 7), 8) == pytest.approx({"usage": 0.125, "perplexity": 1.0})
    skewed = codebook_usage(torch.tensor([0, 0, 0, 1]), 2)  # p = (3/4, 1/4)
    assert skewed["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_codebook_usage_errors():
    with pytest.raises(ValueError, match=r"outside the codebook \[0, 4\)"):
        codebook_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="outside the codebook"):
        codebook_usage(torch.tensor([-1, 2]), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        codebook_usage(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match="empty"):
        codebook_usage(torch.zeros(0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_usage(torch.tensor([0]), 0)


# --- Fréchet distance / FID -------------------------------------------------------------------------

def test_frechet_distance_hand_computed_1d():
    # N(0, 1) vs N(2, 4): (0 - 2)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 5
    assert frechet_distance([0.0], [[1.0]], [2.0], [[4.0]]) == pytest.approx(5.0, abs=1e-12)
    assert frechet_distance(np.zeros(1), np.ones((1, 1)), np.zeros(1), np.ones((1, 1))) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(torch.tensor(m1), torch.tensor(s1), m2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-10)
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(m1, s1, m2[:5], s2)


def _feature_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_fid_with_a_local_network():
    net = _feature_net().train()
    x = ShapesDataset(size=32, length=128, split="heldout").batch(range(128))["image"]
    y = ShapesDataset(size=32, length=128, split="train").batch(range(128))["image"]
    g = torch.Generator().manual_seed(0)
    assert fid(x, x, feature_extractor=net) == pytest.approx(0.0, abs=1e-6)
    assert net.training  # put back in the mode it came in
    same_distribution = fid(x, y, feature_extractor=net)
    assert same_distribution == pytest.approx(fid(y, x, feature_extractor=net), rel=1e-8)  # symmetric
    noisy = [fid(x, (x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1), feature_extractor=net) for s in (0.1, 0.5)]
    shifted = fid(x, (x + 0.5).clamp(-1, 1), feature_extractor=net)
    assert same_distribution < noisy[0] < noisy[1]
    assert shifted > same_distribution
    mean_D, cov_DD = feature_statistics(x, feature_extractor=net, batch_size=50)  # batching does not change it
    assert mean_D.shape == (16,) and cov_DD.shape == (16, 16)
    assert fid(x, x[:64], feature_extractor=lambda t: net(t)) >= 0  # any callable works
    with pytest.raises(ValueError, match="N >= 2"):
        fid(x[:1], x, feature_extractor=net)


# --- the prompt-adherence judge --------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_judge_reads_rendered_heldout_shapes(size):
    batch = ShapesDataset(size=size, length=420, split="heldout", seed=7).batch(range(420))
    assert prompt_adherence(batch["image"], batch["class_id"]) >= 0.99
    wrong_labels = (batch["class_id"] + 1) % NUM_CLASSES
    assert prompt_adherence(batch["image"], wrong_labels) < 0.05


def test_judge_tolerates_blur_noise_and_dim_colours():
    batch = ShapesDataset(size=32, length=210, split="heldout", seed=8).batch(range(210))
    k = torch.arange(7.0) - 3
    g1 = torch.exp(-(k**2) / (2 * 1.0**2))
    kernel = (g1[:, None] * g1[None, :] / g1.sum() ** 2).expand(3, 1, 7, 7)
    blurred = F.conv2d(F.pad(batch["image"], (3, 3, 3, 3), mode="replicate"), kernel, groups=3)
    g = torch.Generator().manual_seed(0)
    degraded = ((blurred + 1) * 0.8 - 1 + 0.08 * torch.randn(blurred.shape, generator=g)).clamp(-1, 1)
    assert prompt_adherence(degraded, batch["class_id"]) >= 0.95


def test_judge_rejects_blank_and_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(420) % NUM_CLASSES
    for images in (
        -torch.ones(420, 3, 32, 32),  # black
        torch.zeros(420, 3, 32, 32),  # flat grey
        torch.rand(420, 3, 32, 32, generator=g) * 2 - 1,  # pixel noise
        F.interpolate(torch.rand(420, 3, 4, 4, generator=g) * 2 - 1, size=32, mode="bilinear"),  # blobs
    ):
        assert prompt_adherence(images, labels) < 0.1
    assert judge_shape(-torch.ones(3, 32, 32)) == (None, None)


def test_judge_shape_single_image_and_errors():
    for shape in SHAPES:
        for colour in COLOURS:
            image = render_shape(shape, colour, size=48, centre=(22.7, 25.1), radius=14.2)
            assert judge_shape(image) == (shape, colour)
    assert judge_shapes(torch.stack([render_shape("circle", "red", size=32, centre=(16, 16), radius=9)] * 2)) == [("circle", "red")] * 2
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        judge_shape(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="square"):
        judge_shapes(torch.zeros(1, 3, 32, 16))
    with pytest.raises(ValueError, match="class ids"):
        prompt_adherence(torch.zeros(2, 3, 32, 32), [0, 21])
    with pytest.raises(ValueError, match="B class ids"):
        prompt_adherence(torch.zeros(2, 3, 32, 32), [0])
