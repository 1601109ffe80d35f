"""Distribution metrics in a feature space: k-NN precision, recall, density, coverage and the Fréchet distance.

Adherence (:func:`prompt_adherence`) scores each sample alone, so a generator that draws one perfect sample
per prompt scores 1. These compare the *set* of generated samples with a set of real ones: precision is the
fraction of fakes that lie on the real manifold (fidelity), recall the fraction of reals that lie on the fake
manifold (diversity: a collapsed generator has little). A manifold is the union of k-NN balls (Kynkäänniemi
et al. 2019): around each sample, the ball reaching its k-th nearest neighbour in its own set. Density and
coverage (Naeem et al. 2020) use only the real balls, which outliers among the fakes cannot inflate: density
counts how many real balls hold each fake (about 1 for the same distribution, above 1 where fakes crowd
dense regions), coverage is the fraction of real balls holding at least one fake. The Fréchet distance
compares Gaussian fits (FID is it on Inception features).

Every metric takes features ``[N, F]``; :func:`distribution_metrics` computes them all from samples through
any feature extractor (:mod:`mmgen.metrics.features` has ones for shapes and tones that need no download).
Numbers are only comparable for the same extractor, ``k`` and similar set sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..tokens import _check_positive
from .images import FeatureExtractor, _extract_features, _mean_covariance, frechet_distance

__all__ = ["manifold_metrics", "precision_recall", "density_coverage", "feature_frechet_distance", "distribution_metrics"]

ROWS_PER_CHUNK = 1024  # distance rows held at once: [1024, N] float64


def _check_features(name: str, feats: torch.Tensor | np.ndarray, *, min_rows: int, why: str) -> torch.Tensor:
    """``feats`` as float64 ``[N, F]`` on the CPU after checking it is a finite real matrix with enough rows."""
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats)
    if not isinstance(feats, torch.Tensor) or feats.dtype == torch.bool or feats.is_complex():
        got = feats.dtype if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise TypeError(f"{name} must be a real tensor or array of features [N, F], got {got}")
    if feats.dim() != 2 or feats.shape[1] == 0:
        raise ValueError(f"{name} must be features [N, F] (2-D, F >= 1), got shape {tuple(feats.shape)}")
    if feats.shape[0] < min_rows:
        raise ValueError(f"{name} must hold at least {min_rows} samples ({why}), got {feats.shape[0]}")
    feats = feats.detach().cpu().double()
    if not bool(torch.isfinite(feats).all()):
        raise ValueError(f"{name} holds NaN or infinite features")
    return feats


def _check_pair(real_NF: torch.Tensor | np.ndarray, fake_MF: torch.Tensor | np.ndarray, *,
                min_rows: int, why: str) -> tuple[torch.Tensor, torch.Tensor]:
    real = _check_features("real_NF", real_NF, min_rows=min_rows, why=why)
    fake = _check_features("fake_MF", fake_MF, min_rows=min_rows, why=why)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_NF and fake_MF must have the same feature dimension F, got {real.shape[1]} and {fake.shape[1]}")
    return real, fake


def _distances(a_AF: torch.Tensor, b_BF: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (no matmul expansion: identical points are exactly 0 apart)."""
    return torch.cdist(a_AF, b_BF, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radius(x_NF: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself, at 0, comes first)."""
    return torch.cat([_distances(x_NF[start:start + ROWS_PER_CHUNK], x_NF).kthvalue(k + 1, dim=1).values
                      for start in range(0, x_NF.shape[0], ROWS_PER_CHUNK)])


def manifold_metrics(real_NF: torch.Tensor | np.ndarray, fake_MF: torch.Tensor | np.ndarray, *,
                     k: int = 5) -> dict[str, float]:
    """``precision``, ``recall`` (Kynkäänniemi et al. 2019), ``density`` and ``coverage`` (Naeem et al. 2020).

    One pass over the fake-to-real distances gives all four; both sets need more than ``k`` samples. A point
    on a ball's boundary counts as inside, so identical sets score precision = recall = coverage = 1.
    """
    _check_positive("k", k)
    real, fake = _check_pair(real_NF, fake_MF, min_rows=k + 1, why=f"more than k = {k} for k-NN radii")
    real_radius_N, fake_radius_M = _knn_radius(real, k), _knn_radius(fake, k)
    real_balls_M = torch.empty(fake.shape[0], dtype=torch.long)  # real balls holding each fake
    on_fake_N = torch.zeros(real.shape[0], dtype=torch.bool)  # real inside some fake ball
    nearest_fake_N = torch.full((real.shape[0],), torch.inf, dtype=torch.float64)
    for start in range(0, fake.shape[0], ROWS_PER_CHUNK):
        d_CN = _distances(fake[start:start + ROWS_PER_CHUNK], real)
        real_balls_M[start:start + ROWS_PER_CHUNK] = (d_CN <= real_radius_N).sum(1)
        on_fake_N |= (d_CN <= fake_radius_M[start:start + ROWS_PER_CHUNK, None]).any(0)
        nearest_fake_N = torch.minimum(nearest_fake_N, d_CN.min(0).values)
    return {"precision": float((real_balls_M > 0).double().mean()),
            "recall": float(on_fake_N.double().mean()),
            "density": float(real_balls_M.sum()) / (k * fake.shape[0]),
            "coverage": float((nearest_fake_N <= real_radius_N).double().mean())}


def precision_recall(real_NF: torch.Tensor | np.ndarray, fake_MF: torch.Tensor | np.ndarray, *,
                     k: int = 5) -> tuple[float, float]:
    """``(precision, recall)`` of fakes against reals (see :func:`manifold_metrics`)."""
    metrics = manifold_metrics(real_NF, fake_MF, k=k)
    return metrics["precision"], metrics["recall"]


def density_coverage(real_NF: torch.Tensor | np.ndarray, fake_MF: torch.Tensor | np.ndarray, *,
                     k: int = 5) -> tuple[float, float]:
    """``(density, coverage)`` of fakes against reals (see :func:`manifold_metrics`)."""
    metrics = manifold_metrics(real_NF, fake_MF, k=k)
    return metrics["density"], metrics["coverage"]


def feature_frechet_distance(real_NF: torch.Tensor | np.ndarray, fake_MF: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (mean, unbiased covariance; float64) of two feature sets.

    The same number as :func:`fid` on the features; for N(a, I) and N(b, I) samples it approaches
    ``|a - b|^2``. Each set needs at least 2 samples; fewer samples than features give singular covariances,
    which the eigenvalue formula of :func:`frechet_distance` handles, but the estimate is then noisy.
    """
    real, fake = _check_pair(real_NF, fake_MF, min_rows=2, why="a covariance needs two")
    return frechet_distance(*_mean_covariance(real), *_mean_covariance(fake))


def distribution_metrics(real_samples: torch.Tensor, fake_samples: torch.Tensor, *,
                         feature_extractor: FeatureExtractor, k: int = 5, batch_size: int = 64) -> dict[str, float]:
    """``precision``, ``recall``, ``density``, ``coverage`` and ``frechet`` of fake samples against real ones.

    ``feature_extractor`` maps a batch of samples ``[B, ...]`` (images, clips) to ``[B, F]`` features, e.g.
    :func:`~mmgen.metrics.features.shape_attributes`, :func:`~mmgen.metrics.features.tone_attributes` or
    the shipped :func:`~mmgen.metrics.features.shapes_net_features`; it runs in batches of ``batch_size``
    (an ``nn.Module`` in ``eval()`` mode). See :func:`manifold_metrics` and :func:`feature_frechet_distance`.
    """
    _check_positive("k", k)
    real_NF = _extract_features(real_samples, feature_extractor=feature_extractor, batch_size=batch_size, name="real_samples")
    fake_MF = _extract_features(fake_samples, feature_extractor=feature_extractor, batch_size=batch_size, name="fake_samples")
    return {**manifold_metrics(real_NF, fake_MF, k=k), "frechet": feature_frechet_distance(real_NF, fake_MF)}
