"""Distribution metrics (k-NN precision / recall / density / coverage, Fréchet on features) and their extractors.

Known answers on synthetic features first (identical, collapsed and shifted sets), then the shapes and tones
attribute extractors and the shipped feature network on the built-in data.
"""

import numpy as np
import pytest
import torch

from mmgen.data import COLOURS, TONE_ROOTS, ShapesDataset, TonesDataset, render_shape
from mmgen.metrics import (SHAPE_ATTRIBUTES, TONE_ATTRIBUTES, density_coverage, distribution_metrics,
                           feature_frechet_distance, fid, load_shapes_feature_net, manifold_metrics, precision_recall,
                           shape_attributes, shapes_net_features, tone_attributes)

K = 5


def gaussian(n, dim=4, *, seed, shift=0.0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_identical_sets_score_perfectly():
    x = gaussian(300, seed=0)
    m = manifold_metrics(x, x, k=K)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert m["density"] == pytest.approx((K + 1) / K)  # each point sits in its own ball and in its k neighbours'
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert precision_recall(x, x, k=K) == (1.0, 1.0)
    assert density_coverage(x.numpy(), x.numpy(), k=K) == (m["density"], 1.0)  # numpy arrays work too


def test_two_draws_of_one_distribution_score_high():
    m = manifold_metrics(gaussian(500, seed=0), gaussian(500, seed=1), k=K)
    assert min(m["precision"], m["recall"], m["coverage"]) > 0.85
    assert m["density"] == pytest.approx(1.0, abs=0.15)


def test_a_collapsed_set_keeps_precision_and_loses_recall():
    real = gaussian(300, seed=0)
    fake = real[:1].expand(100, -1)  # one perfect sample, drawn again and again
    m = manifold_metrics(real, fake, k=K)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(1 / 300)  # the fake balls have radius 0: only the point itself
    assert m["coverage"] < 0.1


def test_a_shifted_set_loses_precision_and_recall_and_frechet_is_the_squared_shift():
    real = gaussian(1500, 8, seed=0)
    previous = manifold_metrics(real, gaussian(1500, 8, seed=1), k=K)
    for shift in (0.5, 1.0, 2.0):  # along every axis: |shift vector|^2 = 8 shift^2
        m = manifold_metrics(real, gaussian(1500, 8, seed=1, shift=shift), k=K)
        assert m["precision"] < previous["precision"] and m["recall"] < previous["recall"]
        assert m["coverage"] < previous["coverage"]
        previous = m
        assert feature_frechet_distance(real, real + shift) == pytest.approx(8 * shift**2, rel=1e-9)  # same covariance
    assert previous["precision"] < 0.5 and previous["recall"] < 0.5
    # independent draws: the squared shift plus sampling noise (mean error ~0.04 per axis, covariance error ~D^2 / N)
    assert feature_frechet_distance(real, gaussian(1500, 8, seed=2, shift=1.0)) == pytest.approx(8.0, abs=0.4)


def test_feature_frechet_is_fid_on_features():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(64, 3, 8, 8, generator=g) * 2 - 1, torch.rand(48, 3, 8, 8, generator=g) * 2 - 1
    pool = lambda x: x.mean((2, 3))  # noqa: E731
    assert feature_frechet_distance(pool(a), pool(b)) == pytest.approx(fid(a, b, feature_extractor=pool), rel=1e-12)
    metrics = distribution_metrics(a, b, feature_extractor=pool, k=3, batch_size=10)
    assert set(metrics) == {"precision", "recall", "density", "coverage", "frechet"}
    assert metrics["frechet"] == pytest.approx(fid(a, b, feature_extractor=pool), rel=1e-12)


@pytest.mark.parametrize("call, error, names", [
    (lambda: manifold_metrics(torch.zeros(10), torch.zeros(10, 2)), ValueError, "real_NF"),
    (lambda: manifold_metrics(torch.zeros(10, 2), torch.zeros(10, 3)), ValueError, "feature dimension"),
    (lambda: manifold_metrics(torch.zeros(10, 2), torch.zeros(5, 2), k=5), ValueError, "fake_MF.*k = 5"),
    (lambda: manifold_metrics(torch.zeros(10, 2), torch.full((10, 2), float("nan"))), ValueError, "fake_MF.*NaN"),
    (lambda: manifold_metrics(torch.zeros(10, 2), torch.zeros(10, 2), k=0), ValueError, "k must"),
    (lambda: manifold_metrics(torch.zeros(10, 2, dtype=torch.bool), torch.zeros(10, 2)), TypeError, "real_NF"),
    (lambda: manifold_metrics([[0.0, 1.0]] * 10, torch.zeros(10, 2)), TypeError, "real_NF"),
    (lambda: feature_frechet_distance(torch.zeros(1, 2), torch.zeros(10, 2)), ValueError, "real_NF.*covariance"),
    (lambda: distribution_metrics(torch.zeros(10, 2), torch.zeros(10, 2), feature_extractor=None), TypeError,
     "feature_extractor"),
    (lambda: distribution_metrics(torch.zeros(1, 2), torch.zeros(10, 2), feature_extractor=lambda x: x), ValueError,
     "real_samples"),
    (lambda: shape_attributes(torch.zeros(2, 3, 8, 4)), ValueError, "images"),
    (lambda: tone_attributes(torch.zeros(2, 2, 16000)), ValueError, "audio_B1T"),
    (lambda: load_shapes_feature_net().embed(torch.zeros(2, 1, 32, 32)), ValueError, "images"),
])
def test_inputs_are_checked_by_name(call, error, names):
    with pytest.raises(error, match=names):
        call()


# --- extractors on the built-in data -------------------------------------------------------------------------

N_SHAPES = 210  # 10 of each of the 21 classes


def shapes(split="heldout", seed=0, n=N_SHAPES):
    return ShapesDataset(split=split, length=n, seed=seed).batch(range(n))["image"]


def test_shape_attributes_are_standardised_on_the_train_split():
    feats_NF = shape_attributes(shapes("train"))
    assert feats_NF.shape == (N_SHAPES, len(SHAPE_ATTRIBUTES)) and feats_NF.dtype == torch.float32
    assert feats_NF.mean(0).abs().max() < 0.2
    group_variance = [feats_NF[:, part].var(0).sum() for part in (slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 6), slice(6, 9))]
    assert torch.stack(group_variance).sub(1).abs().max() < 0.25  # centre x, centre y, size, colour, shape: one each
    empty = shape_attributes(-torch.ones(1, 3, 32, 32))
    assert bool(torch.isfinite(empty).all())


def test_shape_attributes_separate_positions_collapsed_to_the_centre():
    real_NF, other_NF = shape_attributes(shapes(seed=0)), shape_attributes(shapes(seed=1))
    same = manifold_metrics(real_NF, other_NF, k=K)
    assert same["precision"] > 0.9 and same["recall"] > 0.9 and same["coverage"] > 0.9
    dataset = ShapesDataset(split="heldout", length=N_SHAPES, seed=1)
    centred = torch.stack([render_shape(p["shape"], p["colour"], size=32, centre=(16.0, 16.0), radius=p["radius"])
                           for p in map(dataset.params, range(N_SHAPES))])
    collapsed = manifold_metrics(real_NF, shape_attributes(centred), k=K)
    assert collapsed["precision"] > 0.9  # every centred shape is a plausible one ...
    assert collapsed["recall"] < same["recall"] - 0.3  # ... but most real positions are never drawn
    assert feature_frechet_distance(real_NF, shape_attributes(centred)) > 5 * feature_frechet_distance(real_NF, other_NF)


def test_tone_attributes_read_the_kinds_and_separate_a_dropped_kind():
    n = 56  # 2 of each of the 28 classes
    real_BF = tone_attributes(TonesDataset(split="heldout", length=n, seed=0).batch(range(n))["audio"])
    other_BF = tone_attributes(TonesDataset(split="heldout", length=n, seed=1).batch(range(n))["audio"])
    assert real_BF.shape == (n, len(TONE_ATTRIBUTES)) and bool(torch.isfinite(real_BF).all())
    kind_B = torch.arange(n) % 28 // len(TONE_ROOTS)  # tone, major chord, rising chirp, falling chirp
    motion, third = TONE_ATTRIBUTES.index("motion_octaves"), TONE_ATTRIBUTES.index("third")
    assert bool((real_BF[kind_B == 2, motion] > 1).all() and (real_BF[kind_B == 3, motion] < -1).all())
    assert float(real_BF[kind_B == 1, third].min()) > float(real_BF[kind_B == 0, third].max())
    same = manifold_metrics(real_BF, other_BF, k=K)
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    no_chirps = manifold_metrics(real_BF, other_BF[kind_B < 2], k=K)  # a generator that never sweeps
    assert no_chirps["precision"] > 0.9 and no_chirps["recall"] < same["recall"]
    assert no_chirps["coverage"] < same["coverage"] - 0.15  # the real chirps' balls hold no fake
    assert feature_frechet_distance(real_BF, other_BF[kind_B < 2]) > 3 * feature_frechet_distance(real_BF, other_BF)
    silence = tone_attributes(torch.zeros(1, 1, 16000))
    assert bool(torch.isfinite(silence).all())


def test_the_shipped_feature_net_classifies_heldout_shapes():
    net = load_shapes_feature_net()
    assert not net.training and sum(p.numel() for p in net.parameters()) < 100_000
    dataset = ShapesDataset(split="heldout", length=N_SHAPES, seed=3)
    batch = dataset.batch(range(N_SHAPES))
    with torch.no_grad():
        out = net(batch["image"])
    class_B = out["shape"].argmax(1) * len(COLOURS) + out["colour"].argmax(1)
    assert float((class_B == batch["class_id"]).float().mean()) > 0.97  # measured 1.0 on 2100 held-out images
    feats_ND = shapes_net_features(batch["image"])
    assert feats_ND.shape == (N_SHAPES, 64) and not feats_ND.requires_grad
    large = ShapesDataset(split="heldout", length=21, seed=3, size=64).batch(range(21))["image"]  # the same items at 64 px
    nearest = torch.cdist(shapes_net_features(large), feats_ND).argmin(1)  # are resized and land next to themselves
    assert nearest.tolist() == list(range(21))


def test_distribution_metrics_through_the_feature_net():
    same = distribution_metrics(shapes(seed=0), shapes(seed=1), feature_extractor=shapes_net_features, k=K)
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    one_class = shapes(seed=1)[::21]  # class 0 only: a generator that ignores its prompt
    dropped = distribution_metrics(shapes(seed=0), one_class.repeat(21, 1, 1, 1), feature_extractor=shapes_net_features, k=K)
    assert dropped["recall"] < 0.2 and dropped["frechet"] > 10 * same["frechet"]
    assert np.isfinite(list(dropped.values())).all()
