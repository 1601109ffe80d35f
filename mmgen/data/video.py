"""Built-in video that needs no download: procedural moving shapes, and a user's folder of video files.

Every dataset yields items ``{"video": FloatTensor[T, 3, S, S] in [-1, 1], "class_id": int, "caption": str}``
(``class_id = -1`` and ``caption = ""`` where there is no label) and has ``batch(indices)`` returning the
same keys stacked (``video`` becomes ``[B, T, 3, S, S]``, ``class_id`` a long tensor, ``caption`` a list).

Moving shapes are the shapes of :mod:`.images` sliding in one of four directions, so their classes
(shape x colour x direction) are checkable by code from pixels (see :func:`mmgen.metrics.judge_moving_shapes`)
and video generators trained on them can be scored for prompt adherence, motion included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tokens import _check_positive, _check_real
from .images import (
    COLOURS,
    NUM_CLASSES,
    RADIUS_RANGE,
    SHAPES,
    SPLITS,
    _check_seed,
    _coverage,
    _folder,
    _item_rng,
    _paint,
    class_id,
    class_parts,
)

__all__ = [
    "DIRECTIONS",
    "NUM_VIDEO_CLASSES",
    "SPEED_RANGE",
    "MAX_FRAMES",
    "video_class_id",
    "video_class_parts",
    "video_caption",
    "parse_video_caption",
    "render_moving_shape",
    "MovingShapesDataset",
    "VideoFolder",
    "VIDEO_SUFFIXES",
]

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")  # screen coordinates, y down: "down" is larger y
DIRECTION_XY: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
NUM_VIDEO_CLASSES = NUM_CLASSES * len(DIRECTIONS)  # 21 image classes x 4 directions = 84
SPEED_RANGE = (1.0, 2.0)  # pixels per frame, drawn uniformly
MAX_FRAMES = 33
_MOTION_STREAM = 20  # random streams 20, 21 for the train / heldout splits, apart from shapes' 0, 1 and tones' 16-19
_FRAMES_PER_PASS = 512  # frames rendered per _coverage call: bounds the supersampled masks' memory


def video_class_id(shape: str, colour: str, direction: str) -> int:
    """Class id of a (shape, colour, direction) triple: ``class_id(shape, colour) * 4 + direction_index``.

    So ``video_class_id // 4`` is the image class of :mod:`.images`.
    """
    image_class = class_id(shape, colour)
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    return image_class * len(DIRECTIONS) + DIRECTIONS.index(direction)


def video_class_parts(class_id_: int) -> tuple[str, str, str]:
    """``(shape, colour, direction)`` of a video class id: the inverse of :func:`video_class_id`."""
    if (isinstance(class_id_, bool) or not isinstance(class_id_, (int, np.integer))
            or not 0 <= class_id_ < NUM_VIDEO_CLASSES):
        raise ValueError(f"class_id must be an int in [0, {NUM_VIDEO_CLASSES}), got {class_id_!r}")
    shape, colour = class_parts(int(class_id_) // len(DIRECTIONS))
    return shape, colour, DIRECTIONS[int(class_id_) % len(DIRECTIONS)]


def video_caption(class_id: int) -> str:
    """Caption of a video class, ``"a {colour} {shape} moving {direction}"``."""
    shape, colour, direction = video_class_parts(class_id)
    return f"a {colour} {shape} moving {direction}"


def parse_video_caption(text: str) -> int:
    """Class id of a caption written as :func:`video_caption` writes it (case and outer spaces ignored)."""
    words = text.strip().lower().split() if isinstance(text, str) else []
    if (len(words) != 5 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES
            or words[3] != "moving" or words[4] not in DIRECTIONS):
        raise ValueError(f"cannot parse video caption text={text!r}: expected 'a <colour> <shape> moving <direction>' "
                         f"with colour in {COLOURS}, shape in {SHAPES} and direction in {DIRECTIONS}")
    return video_class_id(words[2], words[1], words[4])


def _check_num_frames(num_frames: object) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES:
        raise ValueError(f"num_frames must be an int in [1, {MAX_FRAMES}], got {num_frames!r}")
    return num_frames


def _frame_centres(centre_B2: np.ndarray, speed_B: np.ndarray, unit_B2: np.ndarray, *, num_frames: int,
                   size: int) -> np.ndarray:
    """Centres ``[B, T, 2]`` of frames ``t = 0 .. T-1``: ``centre + t * speed * unit`` on the torus (mod size).

    Each frame's centre depends on ``t`` alone, never on ``num_frames``: shorter clips are prefixes of longer ones.
    """
    t_T = np.arange(num_frames, dtype=np.float64)
    moved = centre_B2[:, None, :] + t_T[None, :, None] * (speed_B[:, None, None] * unit_B2[:, None, :])
    return np.mod(moved, size)


def _render_clips(shape_idx_B: torch.Tensor, colour_idx_B: torch.Tensor, centres_BT2: np.ndarray,
                  radius_B: torch.Tensor, *, size: int) -> torch.Tensor:
    """Clips ``[B, T, 3, S, S]`` in [-1, 1]: each shape drawn at its frames' centres, wrapped around the borders."""
    batch, frames = centres_BT2.shape[:2]
    shape_N = shape_idx_B.repeat_interleave(frames)
    colour_N = colour_idx_B.repeat_interleave(frames)
    radius_N2 = radius_B.repeat_interleave(frames)[:, None].expand(-1, 2)
    centre_N2 = torch.from_numpy(centres_BT2.reshape(-1, 2)).float()
    chunks = []
    for start in range(0, batch * frames, _FRAMES_PER_PASS):
        part = slice(start, start + _FRAMES_PER_PASS)
        coverage = _coverage(shape_N[part], centre_N2[part], radius_N2[part], torch.zeros(len(shape_N[part])),
                             size=size, wrap=True)
        chunks.append(_paint(coverage, colour_N[part]))
    return torch.cat(chunks).reshape(batch, frames, 3, size, size)


def render_moving_shape(shape: str, colour: str, direction: str, *, size: int, num_frames: int,
                        centre: tuple[float, float], radius: float, speed: float) -> torch.Tensor:
    """Render one filled shape sliding on black as ``[T, 3, size, size]`` in [-1, 1].

    Frame ``t`` shows :func:`mmgen.data.render_shape`'s shape (``centre = (x, y)`` and ``radius`` in
    pixels) centred at ``centre + t * speed * unit(direction)``, ``speed`` in pixels per frame. The frame
    is a torus: a shape leaving on one side re-enters on the other, so it keeps its direction forever.
    """
    cid = video_class_id(shape, colour, direction)
    _check_positive("size", size)
    _check_num_frames(num_frames)
    if not isinstance(centre, Sequence) or len(centre) != 2:
        raise ValueError(f"centre must be a pair (x, y) in pixels, got {centre!r}")
    centre_12 = np.array([[_check_real("centre x", centre[0]), _check_real("centre y", centre[1])]])
    if _check_real("radius", radius) <= 0:
        raise ValueError(f"radius must be positive (pixels), got {radius!r}")
    speed_1 = np.array([_check_real("speed", speed, at_least=0)])
    centres = _frame_centres(centre_12, speed_1, np.array([DIRECTION_XY[direction]]), num_frames=num_frames, size=size)
    image_class = cid // len(DIRECTIONS)
    return _render_clips(torch.tensor([image_class // len(COLOURS)]), torch.tensor([image_class % len(COLOURS)]),
                         centres, torch.tensor([float(radius)]), size=size)[0]


class MovingShapesDataset(Dataset):
    """Procedural moving shapes: one filled shape of 84 (shape x colour x direction) classes sliding on black.

    The shape (radius as in :class:`mmgen.data.ShapesDataset`) starts anywhere in the frame and moves
    at a constant speed drawn in ``SPEED_RANGE`` pixels per frame. The frame is a torus: a shape leaving
    on the right re-enters on the left, so the direction never changes and every start is valid.
    Item ``i`` is a pure function of ``(seed, split, i)``, and of ``num_frames`` only through its length:
    the first ``k`` frames are the same for any ``num_frames >= k`` (``num_frames = 1`` is a still image).
    Classes cycle with the index (``class_id = i % 84``); ``batch(indices)`` renders many items at once.
    """

    modality = "video"  # batches hold the samples under this key

    def __init__(self, *, size: int = 32, num_frames: int = 9, length: int = 10000, split: str = "train",
                 seed: int = 0) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8, got {size!r}")
        _check_num_frames(num_frames)
        _check_positive("length", length)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.size, self.num_frames, self.length, self.split = size, num_frames, length, split
        self.seed = _check_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.batch([index])
        return {"video": batch["video"][0], "class_id": int(batch["class_id"][0]), "caption": batch["caption"][0]}

    def params(self, index: int) -> dict[str, Any]:
        """The drawn parameters of item ``index`` (pixels, pixels per frame): what :func:`render_moving_shape` gets."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a MovingShapesDataset of length {self.length}")
        index = index % self.length
        rng = _item_rng(self.seed, _MOTION_STREAM + SPLITS.index(self.split), index)
        radius = rng.uniform(*RADIUS_RANGE) * self.size
        centre = (rng.uniform(0.0, self.size), rng.uniform(0.0, self.size))
        speed = rng.uniform(*SPEED_RANGE)
        cid = index % NUM_VIDEO_CLASSES
        shape, colour, direction = video_class_parts(cid)
        return {"shape": shape, "colour": colour, "direction": direction, "centre": centre, "radius": radius,
                "speed": speed, "class_id": cid}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Render items ``indices`` in one vectorised pass: ``video [B, T, 3, S, S]``, ``class_id [B]``, ``caption``."""
        params = [self.params(int(i)) for i in indices]
        if not params:
            raise ValueError("indices must not be empty")
        cids = torch.tensor([p["class_id"] for p in params])
        image_cids = cids // len(DIRECTIONS)
        centres = _frame_centres(np.array([p["centre"] for p in params]), np.array([p["speed"] for p in params]),
                                 np.array([DIRECTION_XY[p["direction"]] for p in params]),
                                 num_frames=self.num_frames, size=self.size)
        video = _render_clips(image_cids // len(COLOURS), image_cids % len(COLOURS), centres,
                              torch.tensor([p["radius"] for p in params], dtype=torch.float32), size=self.size)
        return {"video": video, "class_id": cids, "caption": [video_caption(int(c)) for c in cids]}


VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".webm", ".avi", ".mov")


def _require_imageio() -> Any:
    try:
        import imageio.v3 as iio
    except ImportError as err:
        raise ImportError("VideoFolder needs imageio to read videos (and av for mp4, webm, avi, mov): "
                          "pip install imageio av") from err
    return iio


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    """A decoded frame as uint8 ``[H, W]`` or ``[H, W, C]`` (wider integers and [0, 1] floats are rescaled)."""
    if frame.dtype == np.uint8:
        return frame
    if np.issubdtype(frame.dtype, np.integer):
        return (frame.astype(np.float64) * (255.0 / np.iinfo(frame.dtype).max)).round().clip(0, 255).astype(np.uint8)
    return (frame.astype(np.float64) * 255.0).round().clip(0, 255).astype(np.uint8)


class VideoFolder(Dataset):
    """Every video under ``root`` (recursive; mp4, gif, webm, avi, mov), its first ``num_frames`` frames.

    Frames are centre-cropped square and resized to ``size`` (bicubic); grey and RGBA become RGB.
    Files are sorted by path, so indices are stable; videos load lazily, and one with fewer than
    ``num_frames`` frames is an error when it loads. GIFs are read by Pillow, the rest by PyAV.
    """

    modality = "video"  # batches hold the samples under this key

    def __init__(self, root: str | Path, *, size: int = 32, num_frames: int = 9) -> None:
        _check_positive("size", size)
        _check_num_frames(num_frames)
        self.root = _folder("root", root, "video")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.paths:
            raise ValueError(f"video folder {str(self.root)!r} holds no videos (looked for {', '.join(VIDEO_SUFFIXES)}, recursively)")
        self.size, self.num_frames = size, num_frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"video": self._load(self.paths[index]), "class_id": -1, "caption": ""}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``video [B, T, 3, S, S]``, ``class_id`` (all -1), ``caption`` (all empty)."""
        videos = [self._load(self.paths[int(i)]) for i in indices]
        if not videos:
            raise ValueError("indices must not be empty")
        return {"video": torch.stack(videos), "class_id": torch.full((len(videos),), -1), "caption": [""] * len(videos)}

    def _load(self, path: Path) -> torch.Tensor:
        iio = _require_imageio()
        plugin = "pillow" if path.suffix.lower() == ".gif" else "pyav"
        frames: list[torch.Tensor] = []
        count = 0
        try:
            for frame in iio.imiter(path, plugin=plugin):
                count += 1
                if len(frames) < self.num_frames:
                    frames.append(self._frame(np.asarray(frame)))
        except ImportError as err:
            raise ImportError(f"cannot read video {str(path)!r}: reading {path.suffix} files needs PyAV: pip install av") from err
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"cannot read video {str(path)!r}: {err}") from err
        if count < self.num_frames:
            raise ValueError(f"video {str(path)!r} has {count} frames, fewer than the num_frames={self.num_frames} asked")
        return torch.stack(frames)

    def _frame(self, frame: np.ndarray) -> torch.Tensor:
        """One decoded frame ``[H, W(, C)]`` as ``[3, S, S]`` in [-1, 1]: centre-cropped, resized, RGB."""
        from PIL import Image

        frame = _as_uint8(frame)
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim == 3 and frame.shape[2] == 2:  # grey + alpha
            frame = frame[:, :, 0]
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
            raise ValueError(f"cannot read a video frame of shape {frame.shape}: expected [H, W] grey, RGB or RGBA")
        rgb = Image.fromarray(frame).convert("RGB")
        width, height = rgb.size
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        square = rgb.crop((left, top, left + short, top + short)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).clamp(-1.0, 1.0).contiguous()

