"""Built-in data that needs no download: procedural coloured shapes, scikit-image's photos, a user's folder.

Every dataset yields items ``{"image": FloatTensor[3, S, S] in [-1, 1], "class_id": int, "caption": str}``
(``class_id = -1`` and ``caption = ""`` where there is no label) and has ``batch(indices)`` returning the
same keys stacked (``image`` becomes ``[B, 3, S, S]``, ``class_id`` a long tensor, ``caption`` a list).

Shapes are checkable by code (see :func:`mmgen.metrics.judge_shape`), so generators trained on them can
be scored for prompt adherence; the photos are a small real-image set for reconstruction checks.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..tokens import _check_positive, _check_real

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "NUM_CLASSES",
    "SPLITS",
    "class_id",
    "class_parts",
    "caption",
    "parse_caption",
    "render_shape",
    "ShapesDataset",
    "PhotoCrops",
    "PHOTO_NAMES",
    "ImageFolder",
    "IMAGE_SUFFIXES",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
NUM_CLASSES = len(SHAPES) * len(COLOURS)
SPLITS: tuple[str, ...] = ("train", "heldout")

SUPERSAMPLE = 4  # sub-pixels per side for anti-aliasing: edge coverage is quantised to 1/16
RADIUS_RANGE = (0.25, 0.45)  # shape radius as a fraction of the image side


def class_id(shape: str, colour: str) -> int:
    """Class id of a (shape, colour) pair: ``shape_index * 7 + colour_index``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    return SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)


def class_parts(class_id_: int) -> tuple[str, str]:
    """``(shape, colour)`` of a class id: the inverse of :func:`class_id`."""
    if isinstance(class_id_, bool) or not isinstance(class_id_, (int, np.integer)) or not 0 <= class_id_ < NUM_CLASSES:
        raise ValueError(f"class_id must be an int in [0, {NUM_CLASSES}), got {class_id_!r}")
    return SHAPES[int(class_id_) // len(COLOURS)], COLOURS[int(class_id_) % len(COLOURS)]


def caption(class_id: int) -> str:
    """Caption of a class, ``"a {colour} {shape}"``."""
    shape, colour = class_parts(class_id)
    return f"a {colour} {shape}"


def parse_caption(text: str) -> int:
    """Class id of a caption written as :func:`caption` writes it (case and outer spaces ignored)."""
    words = text.strip().lower().split()
    if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(f"cannot parse caption text={text!r}: expected 'a <colour> <shape>' with colour in {COLOURS} and shape in {SHAPES}")
    return class_id(words[2], words[1])


def _coverage(shape_idx_B: torch.Tensor, centre_B2: torch.Tensor, radius_B2: torch.Tensor, rotation_B: torch.Tensor,
              *, size: int, supersample: int = SUPERSAMPLE, wrap: bool = False) -> torch.Tensor:
    """Anti-aliased coverage ``[B, size, size]`` in [0, 1] of shapes given in pixel units.

    A shape fills the box of half-sides ``radius_B2 = (rx, ry)`` around its centre (before rotation):
    a circle (ellipse) inscribed in it, the box itself for a square, and for a triangle the box's base
    edge with its apex at the middle of the top edge. Pixel ``(i, j)`` spans ``[j, j+1] x [i, i+1]``.
    With ``wrap`` the image is a torus: offsets from the centre are taken the short way round
    (``((x - cx + size/2) mod size) - size/2``), so a shape crossing a border re-enters on the other side.
    """
    n = size * supersample
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / supersample
    dx = grid[None, None, :] - centre_B2[:, 0, None, None]  # [B, 1, n]
    dy = grid[None, :, None] - centre_B2[:, 1, None, None]  # [B, n, 1]
    if wrap:
        dx = torch.remainder(dx + size / 2, size) - size / 2
        dy = torch.remainder(dy + size / 2, size) - size / 2
    if bool((rotation_B != 0).any()):
        cos, sin = torch.cos(rotation_B)[:, None, None], torch.sin(rotation_B)[:, None, None]
        dx, dy = cos * dx + sin * dy, -sin * dx + cos * dy  # [B, n, n]
    u = dx / radius_B2[:, 0, None, None]  # shape frame: the unit box [-1, 1]^2, y down
    v = dy / radius_B2[:, 1, None, None]  # without rotation u and v stay separable (cheap broadcasts)
    inside = torch.zeros(len(shape_idx_B), n, n, dtype=torch.bool)
    tests = (lambda u, v: u * u + v * v <= 1.0,
             lambda u, v: (u.abs() <= 1.0) & (v.abs() <= 1.0),
             lambda u, v: (v <= 1.0) & (2.0 * u.abs() <= v + 1.0))
    for index, test in enumerate(tests):
        rows = shape_idx_B == index
        if bool(rows.any()):
            inside[rows] = test(u[rows], v[rows]).expand(-1, n, n)
    return F.avg_pool2d(inside.float()[:, None], supersample)[:, 0]


def _paint(coverage_BHW: torch.Tensor, colour_idx_B: torch.Tensor) -> torch.Tensor:
    """Colour times coverage on black, mapped to [-1, 1]: ``[B, 3, H, W]``."""
    palette = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=torch.float32)
    rgb_B3 = palette[colour_idx_B]
    return rgb_B3[:, :, None, None] * coverage_BHW[:, None] * 2.0 - 1.0


def render_shape(shape: str, colour: str, *, size: int, centre: tuple[float, float], radius: float,
                 rotation: float = 0.0) -> torch.Tensor:
    """Render one filled shape on black as ``[3, size, size]`` in [-1, 1].

    ``centre = (x, y)`` and ``radius`` are in pixels (the image spans ``[0, size]``); the shape fills the
    square of half-side ``radius`` around the centre (circle inscribed, triangle on its bottom edge with
    the apex at the top), then is rotated by ``rotation`` radians (clockwise on screen).
    """
    cid = class_id(shape, colour)
    _check_positive("size", size)
    if not isinstance(centre, Sequence) or len(centre) != 2:
        raise ValueError(f"centre must be a pair (x, y) in pixels, got {centre!r}")
    if _check_real("radius", radius) <= 0:
        raise ValueError(f"radius must be positive (pixels), got {radius!r}")
    coverage = _coverage(torch.tensor([cid // len(COLOURS)]), torch.tensor([centre], dtype=torch.float32),
                         torch.tensor([[radius, radius]], dtype=torch.float32), torch.tensor([float(rotation)]), size=size)
    return _paint(coverage, torch.tensor([cid % len(COLOURS)]))[0]


def _item_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """An independent generator per (seed, stream, index): items don't depend on how they are batched."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


def _folder(name: str, path: object, what: str) -> Path:
    """``path`` as an existing folder of ``what``, or an error naming the argument ``name``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path (str or os.PathLike), got {type(path).__name__}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} {str(folder)!r}: the {what} folder does not exist or is not a folder")
    return folder


class ShapesDataset(Dataset):
    """Procedural shapes: one filled shape of 21 (shape x colour) classes on black, jittered size and position.

    Item ``i`` is a pure function of ``(seed, split, i)``; ``"heldout"`` draws from another random stream
    than ``"train"``, so its images are new ones. Classes cycle with the index (``class_id = i % 21``),
    so any 21 consecutive items hold every class once. ``batch(indices)`` renders many items at once.
    """

    modality = "image"  # batches hold the samples under this key

    def __init__(self, *, size: int = 32, length: int = 10000, split: str = "train", seed: int = 0) -> None:
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8, got {size!r}")
        _check_positive("length", length)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.size, self.length, self.split, self.seed = size, length, split, _check_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.batch([index])
        return {"image": batch["image"][0], "class_id": int(batch["class_id"][0]), "caption": batch["caption"][0]}

    def params(self, index: int) -> dict[str, Any]:
        """The drawn parameters of item ``index`` (pixels, radians): what :func:`render_shape` gets."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a ShapesDataset of length {self.length}")
        index = index % self.length
        rng = _item_rng(self.seed, SPLITS.index(self.split), index)
        radius = rng.uniform(*RADIUS_RANGE) * self.size
        centre = (rng.uniform(radius, self.size - radius), rng.uniform(radius, self.size - radius))
        shape, colour = class_parts(index % NUM_CLASSES)
        return {"shape": shape, "colour": colour, "centre": centre, "radius": radius, "class_id": index % NUM_CLASSES}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Render items ``indices`` in one vectorised pass: ``image [B, 3, S, S]``, ``class_id [B]``, ``caption``."""
        params = [self.params(int(i)) for i in indices]
        if not params:
            raise ValueError("indices must not be empty")
        cids = torch.tensor([p["class_id"] for p in params])
        radius = torch.tensor([p["radius"] for p in params], dtype=torch.float32)
        coverage = _coverage(cids // len(COLOURS), torch.tensor([p["centre"] for p in params], dtype=torch.float32),
                             radius[:, None].expand(-1, 2), torch.zeros(len(params)), size=self.size)
        return {"image": _paint(coverage, cids % len(COLOURS)), "class_id": cids, "caption": [caption(int(c)) for c in cids]}


PHOTO_NAMES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock",
                                "hubble_deep_field", "immunohistochemistry")


def _require_skimage() -> Any:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("PhotoCrops needs scikit-image for its bundled photos: pip install scikit-image") from err
    return skimage.data


@lru_cache(maxsize=None)
def _load_photo(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photos as float ``[3, H, W]`` in [0, 1] (grey becomes RGB)."""
    array = np.asarray(getattr(_require_skimage(), name)())
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(array[:, :, :3].astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _resize(image_CHW: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a square image (antialias matters: crops are often 10x larger)."""
    return F.interpolate(image_CHW[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class PhotoCrops(Dataset):
    """Random square crops of the photos bundled with scikit-image, resized to ``size`` (no download).

    A crop's side is drawn in [1/3, 1] of its photo's short side; photos cycle with the index, so every
    photo is used. Crops are a pure function of ``seed`` and built once at construction.
    """

    modality = "image"  # batches hold the samples under this key

    def __init__(self, *, size: int = 32, num_crops: int = 64, seed: int = 0,
                 photos: Sequence[str] = PHOTO_NAMES) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(num_crops, int) or num_crops < 1:
            raise ValueError(f"num_crops must be a positive int, got {num_crops!r}")
        unknown = [p for p in photos if p not in PHOTO_NAMES]
        if unknown or not photos:
            raise ValueError(f"photos must be a non-empty subset of {PHOTO_NAMES}, got {list(photos)}")
        _require_skimage()
        self.size, self.num_crops, self.seed, self.photos = size, num_crops, _check_seed(seed), tuple(photos)
        crops = []
        for index in range(num_crops):
            photo = _load_photo(self.photos[index % len(self.photos)])
            rng = _item_rng(self.seed, len(SPLITS), index)  # a stream of its own, apart from the shapes'
            height, width = photo.shape[-2:]
            short = min(height, width)
            side = int(rng.integers(math.ceil(short / 3), short + 1))
            top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crops.append(_resize(photo[:, top:top + side, left:left + side], size))
        self.images_NCHW = (torch.stack(crops).clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()

    def __len__(self) -> int:
        return self.num_crops

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images_NCHW[index], "class_id": -1, "caption": ""}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``image [B, 3, S, S]``, ``class_id`` (all -1), ``caption`` (all empty)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return {"image": self.images_NCHW[index], "class_id": torch.full((len(index),), -1), "caption": [""] * len(index)}


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolder(Dataset):
    """Every image under ``root`` (recursive; png, jpg, jpeg, webp, bmp), centre-cropped square and resized.

    Files are sorted by path, so indices are stable. Images load lazily; any mode (grey, RGBA,
    palette) becomes RGB.
    """

    modality = "image"  # batches hold the samples under this key

    def __init__(self, root: str | Path, *, size: int = 32) -> None:
        _check_positive("size", size)
        self.root = _folder("root", root, "image")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"image folder {str(self.root)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self._load(self.paths[index]), "class_id": -1, "caption": ""}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``image [B, 3, S, S]``, ``class_id`` (all -1), ``caption`` (all empty)."""
        images = [self._load(self.paths[int(i)]) for i in indices]
        return {"image": torch.stack(images), "class_id": torch.full((len(images),), -1), "caption": [""] * len(images)}

    def _load(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as handle:
                rgb = handle.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {str(path)!r}: {err}") from err
        width, height = rgb.size
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        square = rgb.crop((left, top, left + short, top + short)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1).clamp(-1.0, 1.0).contiguous()
