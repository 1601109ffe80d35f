"""3D metrics: volume IoU, surface samples of voxels, Chamfer distance and F-score, and the primitive judge."""

from __future__ import annotations

import pytest
import torch

from mmgen.data import PRIMITIVES, PrimitivesDataset, primitive_sdf, voxel_centres
from mmgen.metrics import (
    DEFAULT_F_SCORE_THRESHOLD,
    chamfer_distance,
    f_score,
    judge_primitives,
    shape3d_adherence,
    surface_points_from_voxels,
    volume_iou,
)
from mmgen.metrics import shapes3d as metrics3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ball(resolution: int, radius: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    return torch.from_numpy(primitive_sdf("sphere", voxel_centres(resolution), dims=(radius,), centre=centre) <= 0)


# --- volume IoU --------------------------------------------------------------------------------------

def test_volume_iou_known_cases():
    ball = _ball(16, 0.5)
    shifted = _ball(16, 0.5, centre=(0.25, 0.0, 0.0))
    assert volume_iou(ball, ball) == 1.0 and volume_iou(ball, ball).dim() == 0
    iou = volume_iou(torch.stack([ball, ball, ball]), torch.stack([ball, shifted, torch.zeros_like(ball)]))
    assert iou.shape == (3,) and iou[0] == 1.0 and 0.3 < iou[1] < 0.9 and iou[2] == 0.0
    expected = float((ball & shifted).sum() / (ball | shifted).sum())
    assert float(iou[1]) == pytest.approx(expected)
    assert volume_iou(ball.float(), shifted.long()) == pytest.approx(expected)  # 0 / 1 numbers as bools
    empty = torch.zeros(2, 8, 8, 8)
    assert volume_iou(empty, empty).tolist() == [1.0, 1.0]  # nothing generated for nothing asked


@pytest.mark.parametrize(("pred", "target", "error", "fragment"), [
    (torch.zeros(2, 8, 8, 8), torch.zeros(2, 16, 16, 16), ValueError, "same shape"),
    (torch.zeros(8, 8, 4), torch.zeros(8, 8, 4), ValueError, "pred must be cubic"),
    (torch.full((8, 8, 8), 0.5), torch.zeros(8, 8, 8), ValueError, "pred must hold occupancy"),
    (torch.zeros(8, 8, 8), torch.full((8, 8, 8), 2.0), ValueError, "target must hold occupancy"),
    ([[0]], torch.zeros(8, 8, 8), TypeError, "pred"),
])
def test_volume_iou_rejects_bad_grids(pred, target, error, fragment):
    with pytest.raises(error, match=fragment):
        volume_iou(pred, target)


# --- surface points of voxels -----------------------------------------------------------------------

def test_surface_points_lie_on_the_faces_of_occupied_voxels():
    one = torch.zeros(4, 4, 4)
    one[1, 2, 3] = 1  # spans x [-0.5, 0], y [0, 0.5], z [0.5, 1]
    points = surface_points_from_voxels(one, 200, generator=torch.Generator().manual_seed(0))
    assert points.shape == (200, 3) and points.dtype == torch.float32
    low, high = torch.tensor([-0.5, 0.0, 0.5]), torch.tensor([0.0, 0.5, 1.0])
    assert ((points >= low - 1e-6) & (points <= high + 1e-6)).all()
    on_a_face = ((points - low).abs() < 1e-6) | ((points - high).abs() < 1e-6)
    assert on_a_face.any(1).all()
    for axis in range(3):  # all six faces are drawn
        assert ((points[:, axis] - low[axis]).abs() < 1e-6).any() and ((points[:, axis] - high[axis]).abs() < 1e-6).any()
    again = surface_points_from_voxels(one, 200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(points, again)


def test_surface_points_of_a_primitive_are_close_to_its_analytic_surface():
    batch = PrimitivesDataset(split="heldout", size=5, resolution=32, num_points=1024).batch(range(5))
    points = surface_points_from_voxels(batch["shape"], 1024, generator=torch.Generator().manual_seed(0))
    assert points.shape == (5, 1024, 3)
    assert (chamfer_distance(points, batch["points"]) < 0.05).all()  # within a voxel (2 / 32) of the surface
    interior = surface_points_from_voxels(torch.ones(1, 8, 8, 8), 100)
    assert ((interior.abs() - 1.0).abs() < 1e-6).any(-1).all()  # a full grid's surface is the cube's


def test_surface_points_of_an_empty_grid_is_an_error():
    grids = torch.zeros(2, 8, 8, 8)
    grids[0, 3, 3, 3] = 1
    with pytest.raises(ValueError, match=r"voxels\[1\] is empty"):
        surface_points_from_voxels(grids, 10)
    with pytest.raises(ValueError, match="num_points"):
        surface_points_from_voxels(grids[:1], 0)


# --- Chamfer distance and F-score ---------------------------------------------------------------------

def test_chamfer_and_f_score_known_cases():
    points = torch.rand(3, 50, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert chamfer_distance(points, points).abs().max() < 1e-6 and (f_score(points, points) == 1.0).all()
    # L2, not squared: one point each, 0.5 apart
    a, b = torch.zeros(1, 3), torch.tensor([[0.3, 0.4, 0.0]])
    assert float(chamfer_distance(a, b)) == pytest.approx(0.5)
    assert float(f_score(a, b, threshold=0.6)) == 1.0 and float(f_score(a, b)) == 0.0
    # one direction at a time: a has an extra point 1 away from b
    a, b = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]), torch.zeros(1, 3)
    assert float(chamfer_distance(a, b)) == pytest.approx(0.25)
    assert float(f_score(a, b, threshold=0.1)) == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # precision 1/2, recall 1
    shifted = points + torch.tensor([0.02, 0.0, 0.0])
    assert (chamfer_distance(points, shifted) <= 0.02 + 1e-6).all() and (chamfer_distance(points, shifted) > 0).all()
    assert DEFAULT_F_SCORE_THRESHOLD == 0.05 and (f_score(points, shifted) == 1.0).all()


def test_chamfer_in_chunks_matches_one_pass(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(7, 40, 3, generator=generator), torch.rand(7, 30, 3, generator=generator)
    whole, whole_f = chamfer_distance(a, b), f_score(a, b, threshold=0.1)
    monkeypatch.setattr(metrics3d, "_CDIST_ELEMENTS", 2 * 40 * 30)  # two shapes per chunk
    assert torch.allclose(chamfer_distance(a, b), whole) and torch.equal(f_score(a, b, threshold=0.1), whole_f)
    single = torch.stack([chamfer_distance(a[i], b[i]) for i in range(7)])
    assert torch.allclose(single, whole)


@pytest.mark.parametrize(("a", "b", "error", "fragment"), [
    (torch.tensor([[0.0, float("nan"), 0.0]]), torch.zeros(1, 3), ValueError, "a holds NaN"),
    (torch.zeros(1, 3), torch.tensor([[float("inf"), 0.0, 0.0]]), ValueError, "b holds NaN"),
    (torch.zeros(2, 5, 3), torch.zeros(3, 5, 3), ValueError, "same number of point sets"),
    (torch.zeros(5, 2), torch.zeros(5, 3), ValueError, "a must be points"),
    (torch.zeros(5, 3, dtype=torch.long), torch.zeros(5, 3), TypeError, "a must be a float tensor"),
    (torch.zeros(0, 3), torch.zeros(5, 3), ValueError, "N >= 1"),
])
def test_point_metrics_reject_bad_points(a, b, error, fragment):
    with pytest.raises(error, match=fragment):
        chamfer_distance(a, b)
    with pytest.raises(error, match=fragment):
        f_score(a, b)


def test_f_score_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        f_score(torch.zeros(1, 3), torch.zeros(1, 3), threshold=0.0)


# --- the judge ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [16, 32])
def test_judge_reads_held_out_primitives(resolution):
    batch = PrimitivesDataset(split="heldout", size=100, resolution=resolution, num_points=1).batch(range(100))
    assert shape3d_adherence(batch["shape"], batch["class_id"]) >= 0.98
    assert shape3d_adherence(batch["shape"][:10].bool(), batch["class_id"][:10].tolist()) == 1.0  # bools, lists
    flips = torch.rand(batch["shape"].shape, generator=torch.Generator().manual_seed(0)) < 0.02
    assert shape3d_adherence(batch["shape"].bool() ^ flips, batch["class_id"]) >= 0.95  # speckled, as generated


def test_judge_moves_and_turns_do_not_matter_but_lying_down_does():
    batch = PrimitivesDataset(split="heldout", size=10, resolution=32, num_points=1).batch(range(10))
    names = [PRIMITIVES[c] for c in batch["class_id"]]
    assert judge_primitives(batch["shape"]) == names
    assert judge_primitives(batch["shape"].transpose(1, 2)) == names  # a mirror image across x = y
    assert judge_primitives(torch.roll(batch["shape"], shifts=(1, -1, 1), dims=(1, 2, 3))) == names
    assert judge_primitives(batch["shape"].flip(3))[3] != "cone"  # apex down is not what was asked
    lying = judge_primitives(batch["shape"].transpose(2, 3))  # z and y swapped: lying on its side
    assert lying[2] != "cylinder" and lying[3] != "cone" and lying[4] != "torus"
    assert lying[0] == "sphere"  # a sphere is a sphere any way up


def test_judge_says_none_for_empty_or_shattered_grids():
    assert judge_primitives(torch.zeros(2, 16, 16, 16)) == ["none", "none"]
    assert judge_primitives(torch.zeros(32, 32, 32, dtype=torch.bool)) == ["none"]
    speckles = torch.rand(2, 32, 32, 32, generator=torch.Generator().manual_seed(0)) < 0.05
    assert judge_primitives(speckles) == ["none", "none"]
    tiny = torch.zeros(1, 32, 32, 32)
    tiny[0, 10:12, 10:12, 10:12] = 1
    assert judge_primitives(tiny) == ["none"]


def test_judge_and_adherence_reject_bad_input():
    with pytest.raises(ValueError, match="voxels must be cubic"):
        judge_primitives(torch.zeros(2, 16, 16, 8))
    with pytest.raises(ValueError, match="voxels must hold occupancy"):
        judge_primitives(torch.rand(1, 16, 16, 16))
    with pytest.raises(ValueError, match="class_ids"):
        shape3d_adherence(torch.zeros(2, 16, 16, 16), [0])
    with pytest.raises(ValueError, match="class_ids"):
        shape3d_adherence(torch.zeros(1, 16, 16, 16), [5])
