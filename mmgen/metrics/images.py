"""Image metrics: PSNR, SSIM, codebook usage, Fréchet distance / FID, and a prompt-adherence judge for shapes.

Images are ``[B, 3, H, W]`` (or one ``[3, H, W]``) float tensors in [-1, 1], as inside the models.
PSNR and SSIM use the data range 2 of [-1, 1], which gives the same numbers as computing them on
[0, 1] images with data range 1. Batch metrics are the mean of the per-image values.

The judge (:func:`judge_shape`) reads from pixels which shape and colour of :mod:`mmgen.data`'s
shapes an image shows, so class- or text-conditioned generators can be scored without a learned
classifier.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import COLOUR_RGB, COLOURS, NUM_CLASSES, SHAPES, _coverage, class_parts
from ..tokens import _check_positive, _check_real

__all__ = [
    "psnr",
    "ssim",
    "codebook_usage",
    "frechet_distance",
    "feature_statistics",
    "fid",
    "judge_shape",
    "judge_shapes",
    "prompt_adherence",
]

DATA_RANGE = 2.0  # images in [-1, 1]
MAX_ABS_PIXEL = 1.5  # a little overshoot is tolerated; more means another range ([0, 255])


def _as_batch(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 ``[B, C, H, W]`` of the same shape, or a clear error."""
    if not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in (a, b)):
        got = [x.dtype if isinstance(x, torch.Tensor) else type(x).__name__ for x in (a, b)]
        raise TypeError(f"a and b must be float image tensors in [-1, 1], got {got[0]} and {got[1]}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4 or a.shape[0] == 0:
        raise ValueError(f"a and b must be images [B, C, H, W] or [C, H, W] with B >= 1, got {tuple(a.shape)}")
    return a.detach().double(), b.detach().double()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB for images in [-1, 1] (peak-to-peak range 2).

    An image pair that is exactly equal has infinite PSNR, so the mean is then ``inf``.
    """
    a, b = _as_batch(a, b)
    mse_B = (a - b).pow(2).flatten(1).mean(1)
    psnr_B = 10.0 * torch.log10(DATA_RANGE**2 / mse_B)  # mse 0 gives +inf
    return float(psnr_B.mean())


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-coords.pow(2) / (2 * sigma**2))
    return window / window.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) for images in [-1, 1]: gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.

    Local statistics use only windows fully inside the image (no padding), the map is averaged over
    positions and channels per image, then over the batch. Images must be at least ``window_size``
    pixels on each side. Same as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False, data_range=2)``.
    """
    _check_positive("window_size", window_size)
    _check_real("sigma", sigma, above=0)
    a, b = _as_batch(a, b)
    channels, height, width = a.shape[1:]
    if height < window_size or width < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels (window_size), got {height}x{width}")
    g = _gaussian_window(window_size, sigma)
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window_size, window_size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    cov_ab = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return float(ssim_map.flatten(1).mean(1).mean())


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """How much of a codebook a set of ids uses: ``usage`` (fraction of codes seen) and ``perplexity``.

    Perplexity is ``exp(entropy)`` of the empirical code distribution: the number of equally used codes
    that would give the same entropy (``codebook_size`` at best, 1 if one code takes everything).
    ``ids`` may have any shape; every entry counts once.
    """
    _check_positive("codebook_size", codebook_size)
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"ids must be an integer tensor, got {got}")
    flat = ids.detach().flatten().long().cpu()
    if flat.numel() == 0:
        raise ValueError("ids is empty: no usage to measure")
    if int(flat.min()) < 0 or int(flat.max()) >= codebook_size:
        bad = int(flat.max()) if int(flat.max()) >= codebook_size else int(flat.min())
        raise ValueError(f"ids holds {bad}, outside the codebook [0, {codebook_size})")
    counts = torch.bincount(flat, minlength=codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    entropy = float(-(probs * probs.log()).sum())
    return {"usage": float((counts > 0).sum()) / codebook_size, "perplexity": math.exp(entropy)}


def _as_float64(x: torch.Tensor | np.ndarray | Sequence[float] | float) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64))


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})``. The trace of the matrix square
    root is taken as the sum of square roots of the eigenvalues of ``s1^{1/2} sigma2 s1^{1/2}``
    (symmetric PSD, so ``eigh`` in float64 is exact and stable; tiny negative eigenvalues from
    rounding are clipped to 0).
    """
    m1, m2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    dim = m1.numel()
    s1, s2 = s1.reshape(dim, dim) if s1.numel() == dim * dim else s1, s2.reshape(dim, dim) if s2.numel() == dim * dim else s2
    if m2.numel() != dim or s1.shape != (dim, dim) or s2.shape != (dim, dim):
        raise ValueError(f"shapes disagree: mu1 {tuple(m1.shape)}, mu2 {tuple(m2.shape)}, sigma1 {tuple(s1.shape)}, "
                         f"sigma2 {tuple(s2.shape)}; expected [D] means and [D, D] covariances")
    evals1, evecs1 = torch.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = evecs1 @ torch.diag(evals1.clamp(min=0).sqrt()) @ evecs1.T
    middle = sqrt_s1 @ ((s2 + s2.T) / 2) @ sqrt_s1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return float(distance.clamp(min=0))


FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _extract_features(samples: torch.Tensor, *, feature_extractor: FeatureExtractor, batch_size: int = 64,
                     name: str = "images") -> torch.Tensor:
    """``feature_extractor`` over ``samples [N, ...]`` in batches of ``batch_size``: float64 ``[N, D]`` on the CPU.

    An ``nn.Module`` extractor runs in ``eval()`` mode and is put back in its previous mode afterwards.
    ``name`` is what errors call ``samples``.
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() < 2 or samples.shape[0] < 2:
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"{name} must be a tensor [N, ...] with N >= 2 (a covariance needs two samples), got {got}")
    if not callable(feature_extractor):
        raise TypeError(f"feature_extractor must map {name} [N, ...] to features [N, D], got {type(feature_extractor).__name__}")
    _check_positive("batch_size", batch_size)
    was_training = isinstance(feature_extractor, nn.Module) and feature_extractor.training
    if isinstance(feature_extractor, nn.Module):
        feature_extractor.eval()
    try:
        chunks = [feature_extractor(samples[start:start + batch_size]) for start in range(0, samples.shape[0], batch_size)]
    finally:
        if was_training:
            feature_extractor.train()
    feats_ND = torch.cat([c.reshape(c.shape[0], -1) for c in chunks]).double().cpu()
    if feats_ND.shape[0] != samples.shape[0]:
        raise ValueError(f"feature_extractor must map N {name} to [N, D] features, got {feats_ND.shape[0]} rows for {samples.shape[0]}")
    return feats_ND


def _mean_covariance(feats_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of features ``[N, D]`` (N >= 2), what Fréchet compares."""
    mean_D = feats_ND.mean(0)
    centred = feats_ND - mean_D
    return mean_D, centred.T @ centred / (feats_ND.shape[0] - 1)


def feature_statistics(images: torch.Tensor, *, feature_extractor: FeatureExtractor,
                       batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of ``feature_extractor`` over ``images`` ``[N, ...]``.

    An ``nn.Module`` extractor runs in ``eval()`` mode and is put back in its previous mode afterwards.
    """
    return _mean_covariance(_extract_features(images, feature_extractor=feature_extractor, batch_size=batch_size))


def fid(images_a: torch.Tensor, images_b: torch.Tensor, *, feature_extractor: FeatureExtractor, batch_size: int = 64) -> float:
    """Fréchet distance between the feature statistics of two image sets, with any feature extractor.

    With Inception-v3 pool features this is the usual FID; nothing is downloaded here, so pass the
    network you have (any callable mapping ``[N, 3, H, W]`` images to ``[N, D]`` features). Numbers are
    only comparable for the same extractor and similar set sizes.
    """
    mu_a, sigma_a = feature_statistics(images_a, feature_extractor=feature_extractor, batch_size=batch_size)
    mu_b, sigma_b = feature_statistics(images_b, feature_extractor=feature_extractor, batch_size=batch_size)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


# --- prompt-adherence judge for mmgen.data shapes ---------------------------------------------------

_PALETTE_K3 = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=torch.float32)
FOREGROUND_LEVEL = 0.5  # a pixel whose brightest channel exceeds half range (in [0, 1]) is foreground
MIN_FOREGROUND = 0.02  # fraction of the image a shape covers at least (smallest dataset shape: ~5%)
MAX_FOREGROUND = 0.9
MAX_BACKGROUND_LEVEL = 0.15  # mean brightest channel of background pixels: the background is black
MIN_COLOUR_AGREEMENT = 0.8  # fraction of foreground pixels whose own nearest colour is the shape's
MAX_SHAPE_ERROR = 0.3  # soft Jaccard distance between the image and its best-fitting shape template


def judge_shapes(images: torch.Tensor) -> list[tuple[str | None, str | None]]:
    """For each image ``[B, 3, H, W]`` in [-1, 1]: ``(shape, colour)`` it shows, ``None`` for what is unclear.

    Colour: the foreground (brightest channel > half range) must lie on a black background and its
    pixels must agree on one of the 7 pure colours (nearest after scaling to full brightness, so dim
    renderings still count). Shape: a circle, a square and a triangle, drawn as :mod:`mmgen.data` draws
    them, are each fitted to the first and second moments of that colour's coverage; the best fit wins
    if it is close enough (soft Jaccard distance at most ``MAX_SHAPE_ERROR``). Moments, unlike a
    thresholded bounding box, survive the blur and soft edges of generated images.
    """
    return [_verdict(reading) for reading in _read_shapes(images)]


def _read_shapes(images: torch.Tensor) -> list[_ShapeReading]:
    """What the judge reads from each image ``[B, 3, H, H]`` in [-1, 1], after checking that it is one."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, 3, H, H] (square) in [-1, 1], got {got}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a float tensor in [-1, 1], got {images.dtype}")
    peak = float(images.detach().abs().max()) if images.numel() else 0.0
    if not peak <= MAX_ABS_PIXEL:
        raise ValueError(f"images must be in [-1, 1], got values up to {peak:.3g} (map [0, 255] images with x / 127.5 - 1)")
    x_BHW3 = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)
    return [_read_one(x_HW3) for x_HW3 in x_BHW3]


def _nearest_colour(rgb_N3: torch.Tensor) -> torch.Tensor:
    """Index of the nearest pure colour after scaling each RGB to full brightness."""
    scaled = rgb_N3 / rgb_N3.amax(-1, keepdim=True).clamp(min=1e-6)
    return torch.cdist(scaled, _PALETTE_K3).argmin(-1)


# Moments of each shape in its unit box (u, v in [-1, 1], y down), as mmgen.data draws them: the centroid's
# v offset and the variances of u and v. Matching them to an image's moments fits a template of each kind.
_SHAPE_MOMENTS = {
    "circle": (0.0, 1 / 4, 1 / 4),
    "square": (0.0, 1 / 3, 1 / 3),
    "triangle": (1 / 3, 1 / 6, 2 / 9),
}
TEMPLATE_SUPERSAMPLE = 2


class _ShapeReading(NamedTuple):
    """The judge's readings of one image, from which :func:`_verdict` decides; features read them too."""

    foreground: float  # fraction of pixels whose brightest channel exceeds FOREGROUND_LEVEL
    background: float  # mean brightest channel 2 px or more away from the foreground (0 if none is)
    colour_idx: int  # nearest pure colour of the mean foreground pixel (-1 without foreground)
    agreement: float  # fraction of foreground pixels whose own nearest colour is colour_idx
    rgb_3: torch.Tensor  # mean foreground pixel in [0, 1] (zeros without foreground)
    centre_2: torch.Tensor  # (x, y) centroid of that colour's coverage, in pixels
    mass: float  # that coverage's sum (dim shapes filled to 1), in pixels
    shape_error_S: torch.Tensor  # soft Jaccard distance to each of SHAPES' moment-matched templates


def _read_one(x_HW3: torch.Tensor) -> _ShapeReading:
    size = x_HW3.shape[0]
    bright_HW = x_HW3.amax(-1)
    foreground_HW = bright_HW > FOREGROUND_LEVEL
    near_HW = F.max_pool2d(foreground_HW[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0  # shape + 2 px
    background = float(bright_HW[~near_HW].mean()) if bool((~near_HW).any()) else 0.0  # a big shape may leave none
    if not bool(foreground_HW.any()):
        return _ShapeReading(0.0, background, -1, 0.0, torch.zeros(3), torch.full((2,), size / 2), 0.0, torch.ones(len(SHAPES)))
    pixels_N3 = x_HW3[foreground_HW]
    rgb_3 = pixels_N3.mean(0)
    colour_idx = int(_nearest_colour(rgb_3[None])[0])
    agreement = float((_nearest_colour(pixels_N3) == colour_idx).float().mean())
    palette_3 = _PALETTE_K3[colour_idx]
    coverage_HW = ((x_HW3 @ palette_3) / palette_3.pow(2).sum()).clamp(0.0, 1.0)
    coverage_HW = coverage_HW / coverage_HW[foreground_HW].median().clamp(min=FOREGROUND_LEVEL)  # dim shapes fill to 1
    coverage_HW = torch.where(near_HW, coverage_HW.clamp(0.0, 1.0), torch.zeros(()))
    centre_2, error_S = _fit_shapes(coverage_HW)
    return _ShapeReading(float(foreground_HW.float().mean()), background, colour_idx, agreement, rgb_3, centre_2,
                         float(coverage_HW.sum()), error_S)


def _verdict(reading: _ShapeReading) -> tuple[str | None, str | None]:
    """``(shape, colour)`` from a reading (see :func:`judge_shapes`), ``None`` for what is unclear."""
    if (not MIN_FOREGROUND <= reading.foreground <= MAX_FOREGROUND or reading.background > MAX_BACKGROUND_LEVEL
            or reading.agreement < MIN_COLOUR_AGREEMENT):
        return None, None
    best = int(reading.shape_error_S.argmin())
    return SHAPES[best] if float(reading.shape_error_S[best]) <= MAX_SHAPE_ERROR else None, COLOURS[reading.colour_idx]


def _fit_shapes(coverage_HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid ``(x, y)`` of ``coverage_HW`` and how badly each shape's moment-matched template overlaps it."""
    size = coverage_HW.shape[0]
    pos = torch.arange(size, dtype=torch.float32) + 0.5
    mass = coverage_HW.sum().clamp(min=1e-6)
    mean_x = (coverage_HW.sum(0) * pos).sum() / mass
    mean_y = (coverage_HW.sum(1) * pos).sum() / mass
    var_x = (coverage_HW.sum(0) * (pos - mean_x).pow(2)).sum() / mass
    var_y = (coverage_HW.sum(1) * (pos - mean_y).pow(2)).sum() / mass
    centres, radii = [], []
    for shape in SHAPES:
        offset_v, var_u, var_v = _SHAPE_MOMENTS[shape]
        rx, ry = float((var_x / var_u).sqrt()), float((var_y / var_v).sqrt())
        centres.append([float(mean_x), float(mean_y) - offset_v * ry])
        radii.append([max(rx, 0.5), max(ry, 0.5)])
    templates_SHW = _coverage(torch.arange(len(SHAPES)), torch.tensor(centres), torch.tensor(radii),
                              torch.zeros(len(SHAPES)), size=size, supersample=TEMPLATE_SUPERSAMPLE)
    overlap = torch.minimum(templates_SHW, coverage_HW).flatten(1).sum(1)
    union = torch.maximum(templates_SHW, coverage_HW).flatten(1).sum(1)
    return torch.stack([mean_x, mean_y]), 1.0 - overlap / union


def judge_shape(image: torch.Tensor) -> tuple[str | None, str | None]:
    """``(shape, colour)`` that one image ``[3, H, W]`` in [-1, 1] shows; ``None`` for what is unclear."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a tensor [3, H, W] in [-1, 1], got {got}")
    return judge_shapes(image[None])[0]


def prompt_adherence(images: torch.Tensor, class_ids: torch.Tensor | Sequence[int]) -> float:
    """Fraction of images whose judged (shape, colour) is exactly their class (see :mod:`mmgen.data`)."""
    ids = _class_id_list(class_ids, num_classes=NUM_CLASSES)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(ids) != images.shape[0] or not ids:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"need images [B, 3, H, W] with B >= 1 and B class ids, got images {got} and {len(ids)} class_ids")
    hits = sum(judged == class_parts(int(c)) for judged, c in zip(judge_shapes(images), ids))
    return hits / len(ids)


def _class_id_list(class_ids: torch.Tensor | Sequence[int], *, num_classes: int) -> list[int]:
    """``class_ids`` (a list or an integer tensor) as ints in ``[0, num_classes)``, or an error naming them."""
    ids = class_ids.flatten().tolist() if isinstance(class_ids, (torch.Tensor, np.ndarray)) else class_ids
    if isinstance(ids, str) or not isinstance(ids, Sequence) or not all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in ids):
        got = class_ids.dtype if isinstance(class_ids, (torch.Tensor, np.ndarray)) else repr(class_ids)[:80]
        raise TypeError(f"class_ids must be integer class ids (a list of ints or an integer tensor), got {got}")
    bad = sorted({int(c) for c in ids if not 0 <= c < num_classes})
    if bad:
        raise ValueError(f"class_ids must hold class ids in [0, {num_classes}), got {bad}")
    return [int(c) for c in ids]
