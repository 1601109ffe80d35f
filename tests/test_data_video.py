"""Built-in video: moving-shape classes and captions, determinism, motion on the torus, and video folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmgen.data import (
    COLOURS,
    DIRECTIONS,
    MAX_FRAMES,
    NUM_VIDEO_CLASSES,
    SHAPES,
    SPEED_RANGE,
    VIDEO_SUFFIXES,
    MovingShapesDataset,
    VideoFolder,
    class_id,
    parse_video_caption,
    render_moving_shape,
    render_shape,
    video_caption,
    video_class_id,
    video_class_parts,
)
from mmgen.data.images import RADIUS_RANGE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _coverage(video_T3HW: torch.Tensor) -> torch.Tensor:
    """Each frame's coverage ``[T, H, W]``: the brightest channel back in [0, 1] (the colours are pure)."""
    return ((video_T3HW + 1) / 2).amax(1)


def _circular_centre(weight_THW: torch.Tensor) -> torch.Tensor:
    """``(x, y)`` per frame on the torus: the mean angle of pixel centres weighted by coverage, per axis."""
    size = weight_THW.shape[-1]
    angle = 2 * math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size
    out = []
    for profile in (weight_THW.double().sum(1), weight_THW.double().sum(2)):
        out.append(torch.remainder(torch.atan2(profile @ angle.sin(), profile @ angle.cos()) * size / (2 * math.pi), size))
    return torch.stack(out, -1)


# --- classes and captions ---------------------------------------------------------------------------

def test_video_classes_and_captions_round_trip():
    assert NUM_VIDEO_CLASSES == 84 and DIRECTIONS == ("left", "right", "up", "down")
    seen = set()
    for shape in SHAPES:
        for colour in COLOURS:
            for direction in DIRECTIONS:
                cid = video_class_id(shape, colour, direction)
                assert cid == class_id(shape, colour) * 4 + DIRECTIONS.index(direction) and cid // 4 == class_id(shape, colour)
                assert video_class_parts(cid) == (shape, colour, direction)
                assert video_caption(cid) == f"a {colour} {shape} moving {direction}"
                assert parse_video_caption(video_caption(cid)) == cid
                seen.add(cid)
    assert seen == set(range(84))
    assert video_caption(video_class_id("square", "red", "left")) == "a red square moving left"
    assert video_caption(0) == "a red circle moving left" and video_caption(83) == "a white triangle moving down"
    assert parse_video_caption("  A Blue Triangle MOVING up ") == video_class_id("triangle", "blue", "up")


@pytest.mark.parametrize("text", ["a red circle", "a red circle moving", "a red circle moving north",
                                  "a purple circle moving left", "a red circle going left", "red circle moving left", ""])
def test_parse_video_caption_rejects_other_text(text):
    with pytest.raises(ValueError, match="cannot parse video caption"):
        parse_video_caption(text)


def test_bad_video_class_arguments():
    with pytest.raises(ValueError, match="unknown direction"):
        video_class_id("circle", "red", "north")
    with pytest.raises(ValueError, match="unknown shape"):
        video_class_id("star", "red", "left")
    for bad in (-1, 84, 3.0, True):
        with pytest.raises(ValueError, match=r"class_id must be an int in \[0, 84\)"):
            video_caption(bad)


# --- moving shapes -----------------------------------------------------------------------------------

def test_items_are_deterministic_and_batching_does_not_change_them():
    a = MovingShapesDataset(size=32, num_frames=5, length=200, seed=3)
    batch = a.batch([7, 90, 150])
    b = MovingShapesDataset(size=32, num_frames=5, length=200, seed=3)
    for row, index in enumerate([7, 90, 150]):
        item = b[index]
        assert torch.equal(item["video"], batch["video"][row])
        assert item["class_id"] == int(batch["class_id"][row]) and item["caption"] == batch["caption"][row]
    assert not torch.equal(MovingShapesDataset(size=32, num_frames=5, length=200, seed=4).batch([7, 90, 150])["video"],
                           batch["video"])
    assert a[-1]["class_id"] == 199 % 84


def test_item_format_and_classes_cycle():
    ds = MovingShapesDataset(size=32, num_frames=3, length=168, split="heldout")
    assert ds.modality == "video" and len(ds) == 168
    item = ds[5]
    assert set(item) == {"video", "class_id", "caption"}
    assert item["video"].shape == (3, 3, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    batch = ds.batch(range(168))
    assert batch["video"].shape == (168, 3, 3, 32, 32) and batch["class_id"].dtype == torch.long
    assert batch["class_id"].tolist() == [i % 84 for i in range(168)]
    assert batch["caption"] == [video_caption(i % 84) for i in range(168)]
    for index in (0, 41, 167):
        p = ds.params(index)
        assert (p["shape"], p["colour"], p["direction"]) == video_class_parts(index % 84)
        assert RADIUS_RANGE[0] * 32 <= p["radius"] <= RADIUS_RANGE[1] * 32 and SPEED_RANGE[0] <= p["speed"] <= SPEED_RANGE[1]
        assert all(0 <= c < 32 for c in p["centre"])


def test_heldout_split_never_repeats_train_videos():
    train = MovingShapesDataset(size=16, num_frames=2, length=168, split="train").batch(range(168))["video"].flatten(1)
    heldout = MovingShapesDataset(size=16, num_frames=2, length=168, split="heldout").batch(range(168))["video"].flatten(1)
    assert torch.cdist(heldout, train).min() > 1.0
    # the motion streams are their own: the centres are not the still shapes' ones
    from mmgen.data import ShapesDataset

    still = ShapesDataset(size=32, length=21, split="train")
    moving = MovingShapesDataset(size=32, length=84, split="train")
    assert all(still.params(i)["centre"] != moving.params(i)["centre"] for i in range(21))


def test_shorter_clips_are_prefixes_of_longer_ones():
    indices = [0, 13, 50, 83]
    full = MovingShapesDataset(size=32, num_frames=MAX_FRAMES, length=84, seed=5, split="heldout").batch(indices)["video"]
    assert full.shape[1] == 33
    for frames in (1, 2, 9, 20):
        part = MovingShapesDataset(size=32, num_frames=frames, length=84, seed=5, split="heldout").batch(indices)["video"]
        assert part.shape[1] == frames and torch.equal(part, full[:, :frames])
    # one frame is a still image: the shape of render_shape where it does not touch the border
    image = render_shape("square", "green", size=32, centre=(16.3, 15.6), radius=9.0)
    still = render_moving_shape("square", "green", "up", size=32, num_frames=1, centre=(16.3, 15.6), radius=9.0, speed=1.5)
    assert still.shape == (1, 3, 32, 32) and torch.equal(still[0], image)


def test_render_moving_shape_matches_the_dataset():
    ds = MovingShapesDataset(size=32, num_frames=6, length=84, seed=2)
    p = ds.params(30)
    video = render_moving_shape(p["shape"], p["colour"], p["direction"], size=32, num_frames=6, centre=p["centre"],
                                radius=p["radius"], speed=p["speed"])
    assert torch.equal(video, ds[30]["video"])


def test_the_shape_moves_by_its_speed_in_its_direction():
    ds = MovingShapesDataset(size=32, num_frames=9, length=84, split="heldout", seed=1)
    videos = ds.batch(range(84))["video"]
    for index in range(84):
        p = ds.params(index)
        centres = _circular_centre(_coverage(videos[index]))
        steps = torch.remainder(centres[1:] - centres[:-1] + 16, 32) - 16  # the short way round the torus
        expected = torch.tensor(STEP[p["direction"]], dtype=torch.float64) * p["speed"]
        assert (steps - expected).abs().max() <= 0.3, (index, p, steps)


def test_a_shape_crossing_the_border_wraps_around_whole():
    whole = render_moving_shape("circle", "white", "right", size=32, num_frames=1, centre=(16.25, 15.5), radius=10.0, speed=1.0)
    split = render_moving_shape("circle", "white", "right", size=32, num_frames=1, centre=(0.25, 31.5), radius=10.0, speed=1.0)
    area_whole, area_split = float(_coverage(whole).sum()), float(_coverage(split).sum())
    assert area_whole == pytest.approx(math.pi * 100, rel=0.01)
    assert area_split == pytest.approx(area_whole, rel=0.01)  # nothing is lost past the borders
    cover = _coverage(split)[0]
    assert cover[0].sum() > 5 and cover[-1].sum() > 5 and cover[:, 0].sum() > 5 and cover[:, -1].sum() > 5  # all four sides
    assert cover[8:24, 8:24].sum() == 0  # and nothing in the middle
    # the same picture as the whole shape rolled by 16 pixels on each axis
    assert (torch.roll(whole, shifts=(16, 16), dims=(2, 3)) - split).abs().max() <= 0.13
    # a clip moving right re-enters on the left: after 16 frames of 2 px it is back where it was, rolled by 32
    clip = render_moving_shape("square", "red", "right", size=32, num_frames=17, centre=(16.0, 16.0), radius=6.0, speed=2.0)
    assert torch.allclose(clip[16], clip[0], atol=1e-6)
    assert _coverage(clip)[8, :, 28:].sum() > 0 and _coverage(clip)[8, :, :4].sum() > 0  # frame 8 straddles the border


@pytest.mark.parametrize("bad", [0, 34, 9.0, True, "9"])
def test_num_frames_must_be_an_int_in_range(bad, tmp_path):
    with pytest.raises(ValueError, match=r"num_frames must be an int in \[1, 33\]"):
        MovingShapesDataset(num_frames=bad)
    with pytest.raises(ValueError, match="num_frames"):
        render_moving_shape("circle", "red", "left", size=32, num_frames=bad, centre=(8, 8), radius=4, speed=1)
    (tmp_path / "a.gif").write_bytes(b"")
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolder(tmp_path, num_frames=bad)


def test_moving_shape_errors():
    with pytest.raises(ValueError, match="split must be one of"):
        MovingShapesDataset(split="test")
    with pytest.raises(ValueError, match="size must be"):
        MovingShapesDataset(size=4)
    with pytest.raises(ValueError, match="length must be"):
        MovingShapesDataset(length=0)
    with pytest.raises(IndexError, match="out of range"):
        MovingShapesDataset(length=5)[5]
    with pytest.raises(ValueError, match="indices must not be empty"):
        MovingShapesDataset(length=5).batch([])
    with pytest.raises(ValueError, match="unknown direction"):
        render_moving_shape("circle", "red", "sideways", size=32, num_frames=2, centre=(8, 8), radius=4, speed=1)
    with pytest.raises(ValueError, match="speed must be"):
        render_moving_shape("circle", "red", "left", size=32, num_frames=2, centre=(8, 8), radius=4, speed=-1)
    with pytest.raises(ValueError, match="radius must be positive"):
        render_moving_shape("circle", "red", "left", size=32, num_frames=2, centre=(8, 8), radius=0, speed=1)
    with pytest.raises(ValueError, match="centre must be a pair"):
        render_moving_shape("circle", "red", "left", size=32, num_frames=2, centre=(8,), radius=4, speed=1)


# --- video folder ------------------------------------------------------------------------------------

def _square_frames(num_frames: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """``[T, 24, 40, 3]`` uint8: an 8-px square stepping 2 px right per frame inside the central 24 x 24 crop."""
    frames = np.zeros((num_frames, 24, 40, 3), np.uint8)
    for t in range(num_frames):
        frames[t, 8:16, 12 + 2 * t:20 + 2 * t] = rgb
    frames[:, :, :4] = 255  # white bars outside the centre crop: cropped away
    frames[:, :, -4:] = 255
    return frames


def _write_gif(path, frames: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=100, loop=0)


def _write_mp4(path, frames: np.ndarray) -> None:
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def test_video_folder_reads_gif_and_mp4_recursively_with_centre_crop(tmp_path):
    _write_gif(tmp_path / "a_red.gif", _square_frames(6, (255, 0, 0)))
    _write_mp4(tmp_path / "sub" / "b_green.MP4", _square_frames(6, (0, 255, 0)))
    grey = _square_frames(6, (200, 200, 200))[..., 0]
    _write_gif(tmp_path / "sub" / "deeper" / "c_grey.gif", grey)
    (tmp_path / "notes.txt").write_text("not a video")
    folder = VideoFolder(tmp_path, size=12, num_frames=4)
    assert folder.modality == "video" and len(folder) == 3 and ".mp4" in VIDEO_SUFFIXES
    assert [p.name for p in folder.paths] == ["a_red.gif", "b_green.MP4", "c_grey.gif"]
    batch = folder.batch([0, 1, 2])
    assert batch["video"].shape == (3, 4, 3, 12, 12) and batch["video"].dtype == torch.float32
    assert batch["class_id"].tolist() == [-1, -1, -1] and batch["caption"] == ["", "", ""]
    assert torch.equal(batch["video"][1], folder[1]["video"]) and folder[1]["class_id"] == -1 and folder[1]["caption"] == ""
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    pos = torch.arange(12, dtype=torch.float64) + 0.5
    for row, (channel, tolerance) in enumerate([(0, 0.05), (1, 0.2), (None, 0.05)]):
        video = batch["video"][row]
        if channel is None:  # grey became RGB: three equal channels
            assert torch.equal(video[:, 0], video[:, 1]) and torch.equal(video[:, 1], video[:, 2])
            channel = 0
        else:  # the other channels stay black
            others = [c for c in range(3) if c != channel]
            assert (video[:, others] + 1).abs().max() <= 2 * tolerance + 0.1
        cover = ((video[:, channel] + 1) / 2).clamp(min=0).double()
        assert cover[:, :, :1].max() < 0.2  # the white bars were outside the square crop
        mean_x = (cover.sum(1) * pos).sum(1) / cover.sum((1, 2))
        mean_y = (cover.sum(2) * pos).sum(1) / cover.sum((1, 2))
        # the square's centre (16 + 2t, 12) in the 24 x 24 crop at x 8..32, halved: (4 + t, 6)
        assert torch.allclose(mean_x, 4.0 + torch.arange(4.0, dtype=torch.float64), atol=0.25), mean_x
        assert torch.allclose(mean_y, torch.full((4,), 6.0, dtype=torch.float64), atol=0.25), mean_y


def test_video_folder_rejects_short_and_unreadable_files(tmp_path):
    _write_gif(tmp_path / "short.gif", _square_frames(3, (0, 0, 255)))
    folder = VideoFolder(tmp_path, size=8, num_frames=5)
    with pytest.raises(ValueError, match=r"short\.gif.* has 3 frames, fewer than the num_frames=5"):
        folder[0]
    assert VideoFolder(tmp_path, size=8, num_frames=3)[0]["video"].shape == (3, 3, 8, 8)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"cannot read video .*broken\.mp4"):
        VideoFolder(tmp_path, size=8, num_frames=3)[0]


def test_video_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        VideoFolder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no video here")
    with pytest.raises(ValueError, match="holds no videos"):
        VideoFolder(tmp_path)
    with pytest.raises(TypeError, match="root must be a folder path"):
        VideoFolder(3)
