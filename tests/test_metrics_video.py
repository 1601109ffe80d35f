"""Video metrics: the moving-shapes judge on clean clips, on edited clips it must not pass, and its input checks."""

from __future__ import annotations

import pytest
import torch

from mmgen.data import (
    MovingShapesDataset,
    render_moving_shape,
    video_class_id,
    video_class_parts,
)
from mmgen.metrics import (
    MAX_OFF_AXIS,
    MIN_FRAME_AGREEMENT,
    MIN_SPEED,
    judge_moving_shapes,
    video_adherence,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _clip(shape="square", colour="red", direction="right", *, num_frames=9, centre=(10.3, 14.6), radius=7.0, speed=1.5):
    return render_moving_shape(shape, colour, direction, size=32, num_frames=num_frames, centre=centre, radius=radius, speed=speed)


def test_judge_reads_clean_heldout_clips():
    ds = MovingShapesDataset(size=32, num_frames=9, length=168, split="heldout")
    batch = ds.batch(range(168))  # every class twice
    verdicts = judge_moving_shapes(batch["video"])
    truth = [video_class_parts(int(c)) for c in batch["class_id"]]
    accuracy = sum(v == t for v, t in zip(verdicts, truth)) / len(truth)
    print(f"\nmoving-shapes judge on 168 clean held-out clips (84 classes x 2, 9 frames): {accuracy:.2%}")
    assert accuracy >= 0.99, [(i, v, t) for i, (v, t) in enumerate(zip(verdicts, truth)) if v != t]
    some = slice(0, 168, 4)  # adherence judges again: a subset keeps the test fast
    hits = sum(v == t for v, t in zip(verdicts[some], truth[some])) / len(truth[some])
    assert video_adherence(batch["video"][some], batch["class_id"][some]) == hits
    # the right pictures under the wrong labels: another direction (same shape and colour) never passes
    wrong_direction = [video_class_id(s, c, OPPOSITE[d]) for s, c, d in truth[some]]
    assert video_adherence(batch["video"][some], wrong_direction) == 0.0


def test_a_shape_split_by_the_border_is_read_whole():
    clip = _clip("triangle", "cyan", "up", centre=(31.0, 1.0), radius=12.0, speed=1.2)  # starts split on all four sides
    cover = ((clip[0] + 1) / 2).amax(0)
    assert cover[0].sum() > 0 and cover[-1].sum() > 0 and cover[:, 0].sum() > 0 and cover[:, -1].sum() > 0
    assert judge_moving_shapes(clip[None]) == [("triangle", "cyan", "up")]


def test_still_and_one_frame_videos_have_no_direction():
    clip = _clip("circle", "yellow", "down")
    still = clip[:1].expand(9, -1, -1, -1)
    assert judge_moving_shapes(torch.stack([clip, still])) == [("circle", "yellow", "down"), ("circle", "yellow", None)]
    assert judge_moving_shapes(clip[None, :1]) == [("circle", "yellow", None)]
    slow = _clip("circle", "yellow", "down", speed=0.5 * MIN_SPEED)
    assert judge_moving_shapes(slow[None]) == [("circle", "yellow", None)]


def test_reversed_time_flips_the_direction():
    ds = MovingShapesDataset(size=32, num_frames=9, length=84, split="heldout", seed=7)
    indices = [0, 1, 2, 3, 41, 42, 43, 44]  # each direction twice
    batch = ds.batch(indices)
    forward = judge_moving_shapes(batch["video"])
    backward = judge_moving_shapes(batch["video"].flip(1))
    for index, f, b in zip(indices, forward, backward):
        shape, colour, direction = video_class_parts(index)
        assert f == (shape, colour, direction) and b == (shape, colour, OPPOSITE[direction])


def test_a_colour_change_halfway_is_not_judged_one_colour():
    red, green = _clip("square", "red", "left"), _clip("square", "green", "left")
    halfway = torch.cat([red[:4], green[4:]])  # 4 red frames, 5 green: no colour has 60% of the frames
    assert judge_moving_shapes(halfway[None]) == [("square", None, "left")]
    assert video_adherence(halfway[None], [video_class_id("square", "red", "left")]) == 0.0
    assert video_adherence(halfway[None], [video_class_id("square", "green", "left")]) == 0.0
    mostly_green = torch.cat([red[:3], green[3:]])  # 6 of 9 frames >= MIN_FRAME_AGREEMENT
    assert 6 / 9 >= MIN_FRAME_AGREEMENT > 5 / 9
    assert judge_moving_shapes(mostly_green[None]) == [("square", "green", "left")]
    morphing = torch.cat([_clip("circle", "red", "left")[:4], red[4:]])  # shape changes: 5 of 9 are squares
    assert judge_moving_shapes(morphing[None]) == [(None, "red", "left")]


def test_unclear_motion_has_no_direction():
    right = _clip("circle", "blue", "right", speed=1.5)
    diagonal = torch.stack([torch.roll(frame, shifts=t, dims=1) for t, frame in enumerate(right)])  # 1.5 right, 1 down
    assert 1.0 > MAX_OFF_AXIS * 1.5
    assert judge_moving_shapes(diagonal[None]) == [("circle", "blue", None)]
    mostly_right = torch.stack([torch.roll(frame, shifts=t // 2, dims=1) for t, frame in enumerate(_clip("circle", "blue", "right", speed=2.0))])
    assert judge_moving_shapes(mostly_right[None]) == [("circle", "blue", "right")]  # 0.5 px/frame down: under half of 2
    jumping = right.clone()
    jumping[1::2] = torch.roll(right[1::2], shifts=6, dims=2)  # back and forth across the motion
    assert judge_moving_shapes(jumping[None])[0][2] is None
    blank = right.clone()
    blank[4] = -1.0  # a frame without foreground: no direction, but 8 of 9 frames still show the shape
    assert judge_moving_shapes(blank[None]) == [("circle", "blue", None)]


def test_bad_videos_are_named():
    clip = _clip()
    for bad in (clip, clip[None, :, :, :16], torch.zeros(1, 9, 4, 32, 32), torch.zeros(0, 9, 3, 32, 32), clip[None].numpy()):
        with pytest.raises(ValueError, match=r"videos must be a tensor \[B, T, 3, H, H\]"):
            judge_moving_shapes(bad)
    with pytest.raises(TypeError, match="videos must be a float tensor"):
        judge_moving_shapes(((clip[None] + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match=r"videos must be in \[-1, 1\], got values up to 255"):
        judge_moving_shapes((clip[None] + 1) * 127.5)


def test_video_adherence_checks_its_class_ids():
    videos = _clip()[None]
    with pytest.raises(ValueError, match=r"class_ids must hold class ids in \[0, 84\)"):
        video_adherence(videos, [84])
    with pytest.raises(TypeError, match="class_ids must be integer class ids"):
        video_adherence(videos, [1.0])
    with pytest.raises(ValueError, match="B class_ids"):
        video_adherence(videos, [1, 2])
    assert video_adherence(videos, [video_class_id("square", "red", "right")]) == 1.0
