"""Video metrics: a prompt-adherence judge for :mod:`mmgen.data`'s moving shapes that reads pixels.

Videos are ``[B, T, 3, H, H]`` float tensors in [-1, 1], as inside the models. The judge
(:func:`judge_moving_shapes`) reads which shape, colour and direction of motion a clip shows, so
class- or text-conditioned video generators can be scored without a learned classifier. Moving
shapes wrap around the borders (the frame is a torus), so positions are read on the torus too:
circular centroids, and frame-to-frame displacements taken the short way round.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence, TypeVar

import torch

from ..data.video import NUM_VIDEO_CLASSES, video_class_parts
from .images import FOREGROUND_LEVEL, MAX_ABS_PIXEL, _class_id_list, judge_shapes

__all__ = [
    "judge_moving_shapes",
    "video_adherence",
    "MIN_FRAME_AGREEMENT",
    "MIN_SPEED",
    "MAX_OFF_AXIS",
]

MIN_FRAME_AGREEMENT = 0.6  # fraction of frames whose own reading must be the clip's shape (colour)
MIN_SPEED = 0.4  # pixels per frame along the dominant axis: slower is no motion (dataset speeds: 1 to 2)
MAX_OFF_AXIS = 0.5  # mean |displacement| across the dominant axis, at most this fraction of the speed along it

_T = TypeVar("_T")


def _check_videos(videos: object) -> torch.Tensor:
    """``videos`` as float ``[B, T, 3, H, H]`` in [0, 1] on the CPU, after checking that it is such a video batch."""
    if (not isinstance(videos, torch.Tensor) or videos.dim() != 5 or videos.shape[2] != 3
            or videos.shape[3] != videos.shape[4] or videos.shape[0] == 0 or videos.shape[1] == 0):
        got = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"videos must be a tensor [B, T, 3, H, H] (square frames, B, T >= 1) in [-1, 1], got {got}")
    if not videos.is_floating_point():
        raise TypeError(f"videos must be a float tensor in [-1, 1], got {videos.dtype}")
    peak = float(videos.detach().abs().max())
    if not peak <= MAX_ABS_PIXEL:
        raise ValueError(f"videos must be in [-1, 1], got values up to {peak:.3g} (map [0, 255] videos with x / 127.5 - 1)")
    return ((videos.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


def _circular_centroids(weight_NHW: torch.Tensor) -> torch.Tensor:
    """Centroid ``(x, y)`` in pixels of each weight map on the torus: the mean angle ``2 pi x / S`` per axis.

    A shape split by the border gets its true centre (a plain mean would put it in the middle of the frame).
    Pixel ``j`` spans ``[j, j + 1]``, so its angle is that of ``j + 0.5``.
    """
    size = weight_NHW.shape[-1]
    angle_S = 2.0 * math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size
    centres = []
    for profile_NS in (weight_NHW.double().sum(1), weight_NHW.double().sum(2)):  # over x (columns), over y (rows)
        mean_angle_N = torch.atan2(profile_NS @ angle_S.sin(), profile_NS @ angle_S.cos())
        centres.append(torch.remainder(mean_angle_N * size / (2.0 * math.pi), size))
    return torch.stack(centres, -1)


def _majority(readings: Sequence[_T]) -> _T | None:
    """The most common reading if at least ``MIN_FRAME_AGREEMENT`` of them are it, else ``None``."""
    value, count = Counter(readings).most_common(1)[0]
    return value if count >= MIN_FRAME_AGREEMENT * len(readings) else None


def _direction(centres_T2: torch.Tensor, has_foreground: bool, size: int) -> str | None:
    """Direction of the mean frame-to-frame displacement (wrapped into ``[-S/2, S/2)``), ``None`` if unclear."""
    if centres_T2.shape[0] < 2 or not has_foreground:
        return None
    steps_T2 = torch.remainder(centres_T2[1:] - centres_T2[:-1] + size / 2, size) - size / 2
    mean_2, mean_abs_2 = steps_T2.mean(0), steps_T2.abs().mean(0)
    axis = int(mean_2.abs().argmax())
    speed, off_axis = float(mean_2[axis].abs()), float(mean_abs_2[1 - axis])
    if speed < MIN_SPEED or off_axis > MAX_OFF_AXIS * speed:
        return None
    positive = float(mean_2[axis]) > 0
    return ("right" if positive else "left") if axis == 0 else ("down" if positive else "up")


def judge_moving_shapes(videos: torch.Tensor) -> list[tuple[str | None, str | None, str | None]]:
    """For each video ``[B, T, 3, H, H]`` in [-1, 1]: ``(shape, colour, direction)`` it shows, ``None`` if unclear.

    Per frame, the foreground (brightest channel > half range, as :func:`judge_shapes` has it) and its
    circular centroid on the torus, weighted by brightness. Shape and colour: each frame is rolled so
    its centroid sits at the frame centre (a shape split by the border becomes whole again) and read
    by :func:`judge_shapes`; the clip's shape is the most common frame shape if at least
    ``MIN_FRAME_AGREEMENT`` of the frames read it, else ``None``, and the same, separately, for colour.
    Direction: the frame-to-frame centroid displacements, wrapped into ``[-S/2, S/2)`` and averaged;
    the dominant axis's sign if its mean speed is at least ``MIN_SPEED`` px/frame and the other axis's
    mean ``|displacement|`` at most ``MAX_OFF_AXIS`` times that, else ``None``. A clip of one frame, or
    with a frame without foreground, has direction ``None``.
    """
    x_BT3HW = _check_videos(videos)
    batch, frames, _, size, _ = x_BT3HW.shape
    x_N3HW = x_BT3HW.reshape(batch * frames, 3, size, size)
    bright_NHW = x_N3HW.amax(1)
    weight_NHW = torch.where(bright_NHW > FOREGROUND_LEVEL, bright_NHW, torch.zeros(()))
    has_foreground_N = weight_NHW.flatten(1).sum(1) > 0
    centres_N2 = _circular_centroids(weight_NHW)
    shifts_N2 = torch.round(size / 2 - centres_N2).long()
    rolled_N3HW = torch.stack([torch.roll(frame_3HW, shifts=(int(sy), int(sx)), dims=(1, 2))
                               for frame_3HW, (sx, sy) in zip(x_N3HW, shifts_N2.tolist())])
    frame_readings = judge_shapes(rolled_N3HW * 2.0 - 1.0)
    centres_BT2 = centres_N2.reshape(batch, frames, 2)
    has_foreground_B = has_foreground_N.reshape(batch, frames).all(1)
    verdicts = []
    for clip in range(batch):
        readings = frame_readings[clip * frames:(clip + 1) * frames]
        shape = _majority([r[0] for r in readings])
        colour = _majority([r[1] for r in readings])
        verdicts.append((shape, colour, _direction(centres_BT2[clip], bool(has_foreground_B[clip]), size)))
    return verdicts


def video_adherence(videos: torch.Tensor, class_ids: torch.Tensor | Sequence[int]) -> float:
    """Fraction of videos whose judged (shape, colour, direction) is exactly their class (see :mod:`mmgen.data`)."""
    ids = _class_id_list(class_ids, num_classes=NUM_VIDEO_CLASSES)
    if not isinstance(videos, torch.Tensor) or videos.dim() != 5 or len(ids) != videos.shape[0] or not ids:
        got = tuple(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"need videos [B, T, 3, H, H] with B >= 1 and B class_ids, got videos {got} and {len(ids)} class_ids")
    hits = sum(judged == video_class_parts(c) for judged, c in zip(judge_moving_shapes(videos), ids))
    return hits / len(ids)

