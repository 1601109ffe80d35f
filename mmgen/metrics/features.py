"""Feature extractors for the distribution metrics (:mod:`.distribution`) that need no download.

- :func:`shape_attributes`: what the shapes judge reads from an image (centre, size, colour, how well each
  shape's template fits), standardised.
- :func:`tone_attributes`: what the tones judge reads from a clip (pitch at the start and its motion,
  loudness, how pitched, timbre, chord partials), standardised.
- :func:`shapes_net_features`: the embedding of :class:`ShapesFeatureNet`, a small CNN that mmgen trained on
  the built-in shapes (``scripts/train_feature_net.py``) and ships as float16 safetensors.

Standardising: k-NN distances sum squared differences over features, so an attribute with a wide range
or many dimensions would decide alone. Each attribute is centred and divided by its standard deviation on
the built-in train split (measured once, the constants below), and each *group* of dimensions (colour: 3,
shape fit: 3, ...) is further divided by the square root of its size, so every group has total variance 1
on the reference data and weighs the same in a distance.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio import _chord_levels, _theil_sen_slope, _tone_frames
from .images import _read_shapes

__all__ = [
    "SHAPE_ATTRIBUTES",
    "TONE_ATTRIBUTES",
    "shape_attributes",
    "tone_attributes",
    "ShapesFeatureNet",
    "load_shapes_feature_net",
    "shapes_net_features",
]

SHAPE_ATTRIBUTES: tuple[str, ...] = ("centre_x", "centre_y", "size", "red", "green", "blue",
                                     "circle_error", "square_error", "triangle_error")
_SHAPE_GROUPS = (1, 1, 1, 3, 3)  # centre x, centre y, size, colour, shape fit
# Mean and standard deviation of the raw attributes on ShapesDataset(size=32, split="train", length=2100).
_SHAPE_MEAN_F = (0.500, 0.537, 0.607, 0.561, 0.561, 0.561, 0.169, 0.180, 0.229)
_SHAPE_STD_F = (0.0924, 0.108, 0.133, 0.486, 0.486, 0.486, 0.129, 0.133, 0.145)

TONE_ATTRIBUTES: tuple[str, ...] = ("start_semitones", "motion_octaves", "loudness_db", "pitched", "brightness",
                                    "third", "fifth")
_TONE_GROUPS = (1, 1, 1, 1, 1, 2)  # start pitch, motion, loudness, pitched fraction, brightness, chord partials
# Mean and standard deviation of the raw attributes on TonesDataset(split="train", length=560) at 16 kHz; the
# pitched fraction is nearly 1 there, so its scale is set by hand (a quarter of its range).
_TONE_MEAN_F = (-3.57, 0.0, -12.6, 1.0, 0.382, 0.203, 0.198)
_TONE_STD_F = (3.58, 0.708, 3.47, 0.25, 0.208, 0.351, 0.345)
MIN_LOUDNESS_DB = -60.0  # quieter clips read as this: silence should be far, not infinitely far


def _standardise(raw_NF: torch.Tensor, mean_F: tuple[float, ...], std_F: tuple[float, ...],
                 groups: tuple[int, ...]) -> torch.Tensor:
    """Centre and scale each attribute, then divide each group by sqrt(its size): unit variance per group."""
    group_F = torch.tensor([float(size) for size in groups for _ in range(size)], dtype=torch.float64)
    mean, std = torch.tensor(mean_F, dtype=torch.float64), torch.tensor(std_F, dtype=torch.float64)
    return ((raw_NF - mean) / (std * group_F.sqrt())).float()


def _raw_shape_attributes(images: torch.Tensor) -> torch.Tensor:
    """Unstandardised :data:`SHAPE_ATTRIBUTES` ``[N, 9]`` (float64): positions and size as fractions of the side."""
    side = images.shape[-1]
    rows = [torch.cat([reading.centre_2.double() / side, torch.tensor([reading.mass ** 0.5 / side], dtype=torch.float64),
                       reading.rgb_3.double(), reading.shape_error_S.double()])
            for reading in _read_shapes(images)]
    return torch.stack(rows)


def shape_attributes(images: torch.Tensor) -> torch.Tensor:
    """:data:`SHAPE_ATTRIBUTES` ``[N, 9]`` of images ``[N, 3, H, H]`` in [-1, 1], standardised (see the module).

    From the shapes judge's readings: the centroid ``(x, y)`` and the square root of the area of the
    shape's colour coverage (fractions of the side, so any resolution compares), the mean foreground RGB,
    and the soft Jaccard distance of each shape's moment-matched template. Every image gets finite values,
    also one the judge cannot read (an empty image: centred, size 0, black, no template fits).
    """
    return _standardise(_raw_shape_attributes(images), _SHAPE_MEAN_F, _SHAPE_STD_F, _SHAPE_GROUPS)


def _raw_tone_attributes(audio_B1T: torch.Tensor, *, sample_rate: int) -> torch.Tensor:
    """Unstandardised :data:`TONE_ATTRIBUTES` ``[B, 7]`` (float64); NaN where a clip has no pitch track."""
    clips = _tone_frames(audio_B1T, sample_rate=sample_rate)
    power_B = audio_B1T.detach().double().cpu().pow(2).flatten(1).mean(1)
    loudness_B = (10 * torch.log10(power_B.clamp(min=1e-30))).clamp(min=MIN_LOUDNESS_DB)
    rows = []
    for clip, loudness in zip(clips, loudness_B.tolist()):
        pitched = float(clip.pitched_N.double().mean())
        frames = np.flatnonzero(clip.pitched_N.numpy())
        if len(frames) < 3:
            rows.append([np.nan, np.nan, loudness, pitched, np.nan, np.nan, np.nan])
            continue
        t = clip.centres_N[frames].numpy()
        y = np.log2(clip.f0_N[frames].numpy())
        slope = _theil_sen_slope(t, y)
        start = float(np.median(y - slope * t))
        on_track = np.abs(y - start - slope * t) < 1 / 12
        frames, y = (frames[on_track], y[on_track]) if on_track.any() else (frames, y)
        mag_NF, f0_N = clip.mag_NF[torch.from_numpy(frames)], torch.from_numpy(2.0 ** y)
        power_NF = mag_NF.pow(2)
        centroid_N = (power_NF * clip.freqs_F).sum(1) / power_NF.sum(1).clamp(min=1e-30)
        brightness = float((centroid_N / f0_N).log2().median())  # timbre: octaves of the centroid above f0
        third, fifth = (float(level_N.median()) for level_N in _chord_levels(mag_NF, clip.freqs_F, f0_N))
        rows.append([12 * (start - np.log2(440.0)), slope * clip.duration, loudness, pitched, brightness, third, fifth])
    return torch.tensor(rows, dtype=torch.float64)


def tone_attributes(audio_B1T: torch.Tensor, *, sample_rate: int = 16000) -> torch.Tensor:
    """:data:`TONE_ATTRIBUTES` ``[B, 7]`` of clips ``[B, 1, T]`` in [-1, 1], standardised (see the module).

    From the tones judge's frame analysis: the Theil-Sen pitch line's start (semitones from A4) and its
    motion over the clip (octaves), the clip's loudness (RMS dBFS, at least ``MIN_LOUDNESS_DB``), the
    fraction of pitched frames, and over the frames on the line the spectral centroid's octaves above the
    fundamental (timbre) and the levels of the partials at the major third and fifth (chords have them).
    A clip without a pitch track (silence, noise) gets the reference mean (0) for the pitch attributes.
    """
    raw_BF = _raw_tone_attributes(audio_B1T, sample_rate=sample_rate)
    raw_BF = torch.where(raw_BF.isnan(), torch.tensor(_TONE_MEAN_F, dtype=torch.float64), raw_BF)
    return _standardise(raw_BF, _TONE_MEAN_F, _TONE_STD_F, _TONE_GROUPS)


# --- a small learned feature network for the built-in shapes ------------------------------------------

WEIGHTS = Path(__file__).parent / "weights" / "shapes_features.safetensors"
NET_SIZE = 32  # the side the network sees; other sizes are resized to it


class ShapesFeatureNet(nn.Module):
    """A small CNN (~90k parameters) whose penultimate layer is a learned feature space for shapes images.

    Trained (``scripts/train_feature_net.py``) to tell shape and colour and to regress centre and radius
    on :class:`~mmgen.data.ShapesDataset`, with dimming, noise and blur as augmentation so that imperfect
    generated images land near the real ones they resemble. :meth:`embed` gives the ``[N, 64]`` features.
    """

    def __init__(self, *, width: int = 16, embed_dim: int = 64, num_shapes: int = 3, num_colours: int = 7) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 16 x 16
            nn.Conv2d(2 * w, 3 * w, 3, stride=2, padding=1), nn.GELU(),  # 8 x 8
            nn.Conv2d(3 * w, 3 * w, 3, stride=2, padding=1), nn.GELU(),  # 4 x 4: positions survive the flatten
            nn.Flatten(), nn.Linear(3 * w * 16, embed_dim), nn.GELU(),
        )
        self.shape_head = nn.Linear(embed_dim, num_shapes)
        self.colour_head = nn.Linear(embed_dim, num_colours)
        self.geometry_head = nn.Linear(embed_dim, 3)  # centre x, centre y, radius as fractions of the side

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[N, embed_dim]`` of images ``[N, 3, H, W]`` in [-1, 1] (resized to 32 x 32 if needed)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor [N, 3, H, W] in [-1, 1], got {got}")
        x = images.float()
        if x.shape[-2:] != (NET_SIZE, NET_SIZE):
            x = F.interpolate(x, size=(NET_SIZE, NET_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.trunk(x)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shape and colour logits and the geometry regression (what training fits)."""
        h = self.embed(images)
        return {"shape": self.shape_head(h), "colour": self.colour_head(h), "geometry": self.geometry_head(h)}


def load_shapes_feature_net(path: str | Path = WEIGHTS) -> ShapesFeatureNet:
    """The shipped (or another saved) :class:`ShapesFeatureNet` in eval mode, float32, read without pickle."""
    from safetensors.torch import load_file

    net = ShapesFeatureNet()
    net.load_state_dict({name: tensor.float() for name, tensor in load_file(str(path)).items()})
    return net.eval().requires_grad_(False)


@lru_cache(maxsize=1)
def _shipped_net() -> ShapesFeatureNet:
    return load_shapes_feature_net()


@torch.no_grad()
def shapes_net_features(images: torch.Tensor) -> torch.Tensor:
    """The shipped :class:`ShapesFeatureNet`'s embedding ``[N, 64]`` of images ``[N, 3, H, W]`` in [-1, 1]."""
    return _shipped_net().embed(images.detach().cpu())
