"""Built-in data: procedural shapes (determinism, splits, pixels, captions), photo crops, image folders."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.data import (
    COLOUR_RGB,
    COLOURS,
    NUM_CLASSES,
    SHAPES,
    ImageFolder,
    PhotoCrops,
    ShapesDataset,
    caption,
    class_id,
    parse_caption,
    render_shape,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- classes and captions ---------------------------------------------------------------------------

def test_class_ids_and_captions_round_trip():
    assert NUM_CLASSES == 21 and len(SHAPES) == 3 and len(COLOURS) == 7
    seen = set()
    for shape in SHAPES:
        for colour in COLOURS:
            cid = class_id(shape, colour)
            assert cid == SHAPES.index(shape) * 7 + COLOURS.index(colour)
            assert caption(cid) == f"a {colour} {shape}"
            assert parse_caption(caption(cid)) == cid
            seen.add(cid)
    assert seen == set(range(NUM_CLASSES))
    assert parse_caption("  A Red Circle ") == class_id("circle", "red")


@pytest.mark.parametrize("text", ["a purple circle", "a red hexagon", "red circle", "a red circle please", ""])
def test_parse_caption_rejects_unknown_text(text):
    with pytest.raises(ValueError, match="cannot parse caption"):
        parse_caption(text)


def test_bad_class_arguments():
    with pytest.raises(ValueError, match="unknown shape"):
        class_id("hexagon", "red")
    with pytest.raises(ValueError, match="unknown colour"):
        class_id("circle", "purple")
    for bad in (-1, 21, 2.0, True):
        with pytest.raises(ValueError, match="class_id must be an int"):
            caption(bad)


# --- shapes ----------------------------------------------------------------------------------------

def test_items_are_deterministic_and_batching_does_not_change_them():
    a = ShapesDataset(size=32, length=100, seed=3)
    b = ShapesDataset(size=32, length=100, seed=3)
    batch = a.batch([5, 17, 42, 99])
    for row, index in enumerate([5, 17, 42, 99]):
        item = b[index]
        assert torch.equal(item["image"], batch["image"][row])
        assert item["class_id"] == int(batch["class_id"][row]) and item["caption"] == batch["caption"][row]
    other_seed = ShapesDataset(size=32, length=100, seed=4).batch([5, 17, 42, 99])["image"]
    assert not torch.equal(other_seed, batch["image"])


def test_item_format():
    item = ShapesDataset(size=64, length=10)[3]
    assert set(item) == {"image", "class_id", "caption"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert isinstance(item["class_id"], int) and item["caption"] == caption(item["class_id"])
    batch = ShapesDataset(size=32, length=10).batch(range(4))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["class_id"].dtype == torch.long and len(batch["caption"]) == 4


def test_heldout_split_never_repeats_train_images():
    train = ShapesDataset(size=32, length=420, split="train").batch(range(420))["image"].flatten(1)
    heldout = ShapesDataset(size=32, length=420, split="heldout").batch(range(420))["image"].flatten(1)
    distances = torch.cdist(heldout, train)
    assert distances.min() > 1.0  # every held-out image differs from every train image in many pixels


def test_every_class_appears_with_its_caption():
    batch = ShapesDataset(size=32, length=42, split="heldout").batch(range(42))
    assert sorted(set(batch["class_id"].tolist())) == list(range(NUM_CLASSES))
    assert batch["caption"] == [caption(int(c)) for c in batch["class_id"]]


@pytest.mark.parametrize("size", [32, 64])
def test_pixels_background_black_and_interior_exact_colour(size):
    ds = ShapesDataset(size=size, length=63, split="heldout", seed=1)
    batch = ds.batch(range(63))
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    for index in range(63):
        params, image = ds.params(index), batch["image"][index]
        (cx, cy), r = params["centre"], params["radius"]
        assert params["class_id"] == int(batch["class_id"][index])
        assert r >= 0.25 * size and cx - r >= 0 and cy - r >= 0 and cx + r <= size and cy + r <= size  # fully inside
        # every shape lies in its box [c - r, c + r]^2: pixels entirely outside it are exactly black
        outside = ((centres[None, :] - cx).abs() > r + 0.5) | ((centres[:, None] - cy).abs() > r + 0.5)
        assert outside.any() and bool((image[:, outside] == -1).all())
        # a disc of radius r/2 around (cx, cy + 0.38 r) lies inside circle, square and triangle alike
        dist = ((centres[None, :] - cx) ** 2 + (centres[:, None] - (cy + 0.38 * r)) ** 2).sqrt()
        interior = dist + math.sqrt(0.5) < 0.5 * r
        rgb = torch.tensor(COLOUR_RGB[params["colour"]]) * 2 - 1
        assert interior.sum() >= 4 and torch.equal(image[:, interior], rgb[:, None].expand(-1, int(interior.sum())))


def test_render_shape_is_anti_aliased_and_matches_the_dataset():
    ds = ShapesDataset(size=32, length=30, seed=2)
    params = ds.params(11)
    image = render_shape(params["shape"], params["colour"], size=32, centre=params["centre"], radius=params["radius"])
    assert torch.equal(image, ds[11]["image"])
    circle = render_shape("circle", "white", size=32, centre=(16.3, 15.8), radius=10.0)
    edge_values = circle[0][(circle[0] > -1) & (circle[0] < 1)]
    assert edge_values.numel() > 20  # soft edge pixels
    area = float(((circle[0] + 1) / 2).sum())
    assert area == pytest.approx(math.pi * 100, rel=0.01)
    square = render_shape("square", "red", size=32, centre=(16, 16), radius=8)
    assert float(((square[0] + 1) / 2).sum()) == pytest.approx(256, rel=1e-6)
    assert bool((square[1:] == -1).all())
    triangle = render_shape("triangle", "green", size=32, centre=(16, 16), radius=8)
    assert float(((triangle[1] + 1) / 2).sum()) == pytest.approx(128, rel=0.02)
    rotated = render_shape("triangle", "green", size=32, centre=(16, 16), radius=8, rotation=math.pi / 2)
    assert torch.allclose(rotated, torch.rot90(triangle, k=-1, dims=(1, 2)), atol=0.2)  # clockwise: apex points right


def test_shape_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        ShapesDataset(split="test")
    with pytest.raises(ValueError, match="size must be"):
        ShapesDataset(size=4)
    with pytest.raises(ValueError, match="length must be"):
        ShapesDataset(length=0)
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset(length=5)[5]
    with pytest.raises(ValueError, match="unknown shape"):
        render_shape("star", "red", size=32, centre=(16, 16), radius=8)
    with pytest.raises(ValueError, match="must be positive"):
        render_shape("circle", "red", size=32, centre=(16, 16), radius=0)


# --- photo crops -----------------------------------------------------------------------------------

def test_photo_crops_load_offline_and_are_deterministic():
    crops = PhotoCrops(size=32, num_crops=12, seed=0)
    assert len(crops) == 12 and crops.images_NCHW.shape == (12, 3, 32, 32)
    assert crops.images_NCHW.min() >= -1 and crops.images_NCHW.max() <= 1
    assert crops.images_NCHW.flatten(1).std(1).min() > 0.02  # real content, not blank
    item = crops[3]
    assert set(item) == {"image", "class_id", "caption"} and item["class_id"] == -1 and item["caption"] == ""
    assert torch.equal(PhotoCrops(size=32, num_crops=12, seed=0).images_NCHW, crops.images_NCHW)
    assert not torch.equal(PhotoCrops(size=32, num_crops=12, seed=1).images_NCHW, crops.images_NCHW)
    batch = crops.batch([0, 5])
    assert torch.equal(batch["image"][1], crops[5]["image"]) and batch["class_id"].tolist() == [-1, -1]
    assert PhotoCrops(size=64, num_crops=2).images_NCHW.shape == (2, 3, 64, 64)


def test_photo_crops_explain_missing_scikit_image(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        PhotoCrops(size=32, num_crops=2)


def test_photo_crop_errors():
    with pytest.raises(ValueError, match="photos must be"):
        PhotoCrops(num_crops=2, photos=["lena"])
    with pytest.raises(ValueError, match="num_crops"):
        PhotoCrops(num_crops=0)


# --- image folder ----------------------------------------------------------------------------------

def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def test_image_folder_loads_any_mode_recursively_with_centre_crop(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :, 0] = 255  # red sides ...
    wide[:, 20:40] = (0, 255, 0)  # ... around a green centre square
    _save(tmp_path / "a_wide.png", wide)
    _save(tmp_path / "b_grey.png", np.full((16, 16), 255))
    _save(tmp_path / "sub" / "c_rgba.png", np.dstack([np.zeros((10, 10, 2)), np.full((10, 10, 2), 255)]))
    _save(tmp_path / "sub" / "deeper" / "d_photo.JPG", np.full((24, 24, 3), 128))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path, size=8)
    assert [p.name for p in folder.paths] == ["a_wide.png", "b_grey.png", "c_rgba.png", "d_photo.JPG"]
    batch = folder.batch(range(len(folder)))
    assert batch["image"].shape == (4, 3, 8, 8) and batch["image"].dtype == torch.float32
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 8)
    assert torch.allclose(batch["image"][0], green, atol=0.02)  # only the centre square survives the crop
    assert torch.allclose(batch["image"][1], torch.ones(3, 8, 8), atol=0.02)  # grey 255 -> white RGB
    assert torch.allclose(batch["image"][2], torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 8, 8), atol=0.02)
    assert torch.allclose(batch["image"][3], torch.full((3, 8, 8), 128 / 127.5 - 1), atol=0.05)
    item = folder[0]
    assert item["class_id"] == -1 and item["caption"] == "" and torch.equal(item["image"], batch["image"][0])


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolder(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="cannot read image"):
        folder[0]
