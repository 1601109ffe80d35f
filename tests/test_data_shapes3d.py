"""Built-in 3D data: primitive classes and captions, determinism, occupancy against the SDF, surface samples, mesh folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmgen.data import (
    MESH_SUFFIXES,
    NUM_SHAPE3D_CLASSES,
    PRIMITIVES,
    SHAPE3D_CAPTIONS,
    MeshFolder,
    PrimitivesDataset,
    parse_shape3d_caption,
    primitive_sdf,
    shape3d_caption,
    voxel_centres,
)
from mmgen.metrics import judge_primitives

pytestmark = pytest.mark.usefixtures("one_torch_thread")

trimesh = pytest.importorskip("trimesh")


def _border(grids_BRRR: torch.Tensor) -> torch.Tensor:
    """Occupied voxels on the six border faces of each grid."""
    return sum(grids_BRRR.select(axis, end).flatten(1).sum(1) for axis in (1, 2, 3) for end in (0, -1))


def _sdf(params: dict, points: torch.Tensor) -> np.ndarray:
    return primitive_sdf(params["primitive"], points, dims=params["dims"], centre=params["centre"],
                         rotation=params["rotation"])


# --- classes and captions ---------------------------------------------------------------------------

def test_classes_and_captions_round_trip():
    assert PRIMITIVES == ("sphere", "cube", "cylinder", "cone", "torus") and NUM_SHAPE3D_CLASSES == 5
    assert SHAPE3D_CAPTIONS == ("a sphere", "a cube", "a cylinder", "a cone", "a torus")
    for cid, name in enumerate(PRIMITIVES):
        assert shape3d_caption(cid) == f"a {name}" and parse_shape3d_caption(shape3d_caption(cid)) == cid
    assert parse_shape3d_caption("  A   Torus ") == 4


@pytest.mark.parametrize("text", ["a pyramid", "sphere", "a red sphere", "", "the cube"])
def test_parse_caption_rejects_other_text_naming_it_and_the_captions(text):
    with pytest.raises(ValueError, match="cannot parse 3D shape caption") as info:
        parse_shape3d_caption(text)
    assert repr(text) in str(info.value) and "'a torus'" in str(info.value)


@pytest.mark.parametrize("bad", [-1, 5, True, 1.0])
def test_caption_rejects_bad_class_ids(bad):
    with pytest.raises(ValueError, match="class_id"):
        shape3d_caption(bad)


# --- the dataset -------------------------------------------------------------------------------------

def test_items_are_deterministic_by_seed_and_split():
    def make(**kwargs: object) -> PrimitivesDataset:
        return PrimitivesDataset(size=20, resolution=16, num_points=64, **kwargs)

    first, again = make().batch(range(10)), make().batch(range(10))
    for key in ("shape", "points", "normals", "class_id"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["shape"], make(seed=1).batch(range(10))["shape"])
    assert not torch.equal(first["shape"], make(split="heldout").batch(range(10))["shape"])
    # an item does not depend on how it is batched
    item = make()[7]
    assert torch.equal(item["shape"], first["shape"][7]) and torch.equal(item["points"], first["points"][7])
    assert torch.equal(make().batch([7, 3])["points"][0], first["points"][7])


def test_items_have_the_documented_keys_classes_and_types():
    data = PrimitivesDataset(split="heldout", size=12, resolution=16, num_points=100)
    assert len(data) == 12 and data.modality == "shape"
    batch = data.batch(range(12))
    assert batch["shape"].shape == (12, 16, 16, 16) and batch["shape"].dtype == torch.float32
    assert set(batch["shape"].unique().tolist()) <= {0.0, 1.0}
    assert batch["points"].shape == batch["normals"].shape == (12, 100, 3)
    assert batch["class_id"].dtype == torch.long and batch["class_id"].tolist() == [i % 5 for i in range(12)]
    assert batch["caption"] == [SHAPE3D_CAPTIONS[i % 5] for i in range(12)]
    item = data[4]
    assert item["class_id"] == 4 and item["caption"] == "a torus" and item["shape"].shape == (16, 16, 16)


def test_class_mix_repeats_classes_in_the_cycle_and_the_default_is_the_plain_cycle():
    plain = PrimitivesDataset(size=12, resolution=16, num_points=32)
    assert torch.equal(PrimitivesDataset(size=12, resolution=16, num_points=32, class_mix=[1, 1, 1, 1, 1]).batch(range(12))["shape"],
                       plain.batch(range(12))["shape"])
    mixed = PrimitivesDataset(size=12, resolution=16, num_points=32, class_mix=(1, 4, 0, 1, 1))
    batch = mixed.batch(range(7))
    assert batch["class_id"].tolist() == [0, 1, 1, 1, 1, 3, 4]
    assert batch["caption"][1] == "a cube" and mixed.params(8)["primitive"] == "cube"
    assert judge_primitives(batch["shape"]) == [PRIMITIVES[c] for c in batch["class_id"].tolist()]


@pytest.mark.parametrize("mix", [[1, 1, 1, 1], [0, 0, 0, 0, 0], [1, -1, 1, 1, 1], [1, 1.5, 1, 1, 1], "11111"])
def test_class_mix_rejects_bad_counts_naming_it(mix):
    with pytest.raises(ValueError, match="class_mix must be 5 counts"):
        PrimitivesDataset(size=5, class_mix=mix)


def test_the_same_shape_at_every_resolution_and_point_count():
    coarse = PrimitivesDataset(size=5, resolution=16, num_points=10)
    fine = PrimitivesDataset(size=5, resolution=32, num_points=50)
    for index in range(5):
        assert coarse.params(index) == fine.params(index)
        assert torch.equal(coarse[index]["points"], fine[index]["points"][:10])


def test_occupancy_is_the_sdf_sign_at_voxel_centres():
    data = PrimitivesDataset(size=10, resolution=16, num_points=8)
    centres = voxel_centres(16)
    assert torch.allclose(centres[3, 0, 15], torch.tensor([3.5 / 8 - 1, 0.5 / 8 - 1, 15.5 / 8 - 1], dtype=torch.float64))
    batch = data.batch(range(10))
    for index in range(10):
        inside = torch.from_numpy(_sdf(data.params(index), centres) <= 0).float()
        assert torch.equal(batch["shape"][index], inside)


def test_points_lie_on_the_surface_with_unit_outward_normals():
    data = PrimitivesDataset(size=10, resolution=8, num_points=500)
    batch = data.batch(range(10))
    for index in range(10):
        params, points, normals = data.params(index), batch["points"][index], batch["normals"][index]
        assert np.abs(_sdf(params, points)).max() < 1e-5, params["primitive"]
        assert torch.allclose(normals.norm(dim=1), torch.ones(500), atol=1e-5)
        outward, inward = _sdf(params, points.double() + 1e-4 * normals), _sdf(params, points.double() - 1e-4 * normals)
        assert (outward > 0).all() and (inward < 0).mean() > 0.99  # inward a step may leave again near an edge


def test_points_are_uniform_by_area():
    """Caps, bases and the torus's inner half get their share of the area, not of the parameters."""
    data = PrimitivesDataset(size=5, resolution=8, num_points=20000)
    for index in (2, 3, 4):
        params, points = data.params(index), data[index]["points"].double()
        local_z = points[:, 2] - params["centre"][2]
        radius, second = params["dims"]
        if params["primitive"] == "cylinder":
            on_caps, expected = (local_z.abs() > second - 1e-5).double().mean(), radius / (radius + 2 * second)
        elif params["primitive"] == "cone":
            slant = math.hypot(radius, 2 * second)
            on_caps, expected = (local_z < -second + 1e-5).double().mean(), radius / (radius + slant)
        else:
            rho = (points[:, :2] - torch.tensor(params["centre"][:2], dtype=torch.float64)).norm(dim=1)
            on_caps, expected = (rho < radius).double().mean(), (math.pi * radius - 2 * second) / (2 * math.pi * radius)
        assert float(on_caps) == pytest.approx(expected, abs=0.015), params["primitive"]


def test_every_shape_keeps_an_empty_border_voxel_at_the_smallest_resolution():
    data = PrimitivesDataset(size=200, resolution=8, num_points=256)
    batch = data.batch(range(200))
    assert _border(batch["shape"]).max() == 0
    assert batch["points"].abs().max() <= 0.75 + 1e-6  # inside the grid less one voxel of 8^3
    assert batch["shape"].flatten(1).sum(1).min() > 0  # and every shape shows


def test_primitives_are_upright_and_a_torus_has_an_open_hole_at_16():
    data = PrimitivesDataset(split="heldout", size=50, resolution=16, num_points=8)
    batch = data.batch(range(50))
    for index in range(50):
        grid, params = batch["shape"][index], data.params(index)
        column = grid[int((params["centre"][0] + 1) * 8), int((params["centre"][1] + 1) * 8)]
        if params["primitive"] == "torus":
            assert column.sum() == 0 and grid.sum() > 60
        else:
            assert column.sum() >= 5  # the axis through the middle is solid
        if params["primitive"] == "cone":  # apex up: more volume in the lower half
            heights = grid.sum((0, 1))
            occupied = heights.nonzero()[:, 0]
            middle = (occupied.min() + occupied.max() + 1) / 2
            below = heights[: int(middle)].sum()
            assert below > 0.7 * heights.sum()


def test_primitive_sdf_known_values():
    assert primitive_sdf("sphere", [[1.0, 0, 0]], dims=(0.5,))[0] == pytest.approx(0.5)
    assert primitive_sdf("cube", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dims=(0.5,)) == pytest.approx([math.sqrt(3) / 2, -0.5])
    assert primitive_sdf("cylinder", [[0.0, 0.0, 1.0], [0.8, 0.0, 0.0]], dims=(0.5, 0.5)) == pytest.approx([0.5, 0.3])
    assert primitive_sdf("cone", [[0.0, 0.0, 0.5], [0.0, 0.0, -0.6]], dims=(0.5, 0.5)) == pytest.approx([0.0, 0.1])
    assert primitive_sdf("torus", [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dims=(0.5, 0.2)) == pytest.approx([-0.2, 0.3])
    # a turn of 45 degrees about z puts the cube's corner on the x axis; the centre moves the shape
    turned = primitive_sdf("cube", [[0.7, 0.0, 0.0]], dims=(0.5,), rotation=math.pi / 4)[0]
    assert turned < 0 < primitive_sdf("cube", [[0.7, 0.0, 0.0]], dims=(0.5,))[0]
    assert primitive_sdf("sphere", torch.tensor([[0.3, 0.0, 0.0]]), dims=(0.1,), centre=(0.3, 0.0, 0.0))[0] == pytest.approx(-0.1)


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: primitive_sdf("pyramid", [[0.0, 0, 0]], dims=(1.0,)), "unknown primitive"),
    (lambda: primitive_sdf("cylinder", [[0.0, 0, 0]], dims=(1.0,)), "dims"),
    (lambda: primitive_sdf("torus", [[0.0, 0, 0]], dims=(0.2, 0.5)), "minor_radius"),
    (lambda: primitive_sdf("sphere", [[0.0, 0]], dims=(1.0,)), "points"),
    (lambda: primitive_sdf("sphere", [[0.0, 0, 0]], dims=(1.0,), centre=(0.0, 0.0)), "centre"),
])
def test_primitive_sdf_rejects_bad_arguments(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"resolution": 12}, ValueError, "resolution"),
    ({"resolution": 4}, ValueError, "resolution"),
    ({"resolution": 256}, ValueError, "resolution"),
    ({"resolution": "32"}, ValueError, "resolution"),
    ({"resolution": True}, ValueError, "resolution"),
    ({"size": 0}, ValueError, "size"),
    ({"num_points": 0}, ValueError, "num_points"),
    ({"split": "test"}, ValueError, "split"),
    ({"seed": "0"}, TypeError, "seed"),
])
def test_dataset_rejects_bad_arguments_naming_them(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        PrimitivesDataset(**{"size": 5, **kwargs})


def test_dataset_rejects_bad_indices():
    data = PrimitivesDataset(size=5, resolution=8)
    with pytest.raises(IndexError, match="out of range"):
        data[5]
    with pytest.raises(ValueError, match="indices"):
        data.batch([])
    assert data[-1]["class_id"] == 4


# --- mesh folders ------------------------------------------------------------------------------------

def _analytic_box(extents: tuple[float, float, float], resolution: int) -> torch.Tensor:
    """The box MeshFolder should make of a mesh box of these extents: longest side spanning 2 - 2.5 voxels."""
    half = 1.0 - 1.25 * 2.0 / resolution
    scaled = voxel_centres(resolution) / torch.tensor(extents, dtype=torch.float64) * (max(extents) / (2 * half))
    return torch.from_numpy(primitive_sdf("cube", scaled, dims=(0.5,)) <= 0)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum() / (a | b).sum())


def test_mesh_folder_voxelises_closed_meshes(tmp_path):
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(tmp_path / "a_box.stl")
    trimesh.creation.icosphere(subdivisions=3, radius=3.0).export(tmp_path / "b_ball.obj")
    (tmp_path / "notes.txt").write_text("not a mesh")
    data = MeshFolder(tmp_path, resolution=32, num_points=300)
    assert len(data) == 2 and [p.name for p in data.paths] == ["a_box.stl", "b_ball.obj"] and data.modality == "shape"
    batch = data.batch([0, 1])
    assert batch["shape"].shape == (2, 32, 32, 32) and batch["points"].shape == batch["normals"].shape == (2, 300, 3)
    assert batch["class_id"].tolist() == [-1, -1] and batch["caption"] == ["", ""]
    assert _iou(batch["shape"][0], _analytic_box((1.0, 0.6, 0.8), 32)) > 0.97
    half = 1.0 - 1.25 * 2.0 / 32
    ball = torch.from_numpy(primitive_sdf("sphere", voxel_centres(32), dims=(half,)) <= 0)
    assert _iou(batch["shape"][1], ball) > 0.95
    assert _border(batch["shape"]).max() == 0
    radii = batch["points"][1].norm(dim=1)
    assert (radii - half).abs().max() < 0.02 and batch["points"][0].abs().amax(0)[0] == pytest.approx(half, abs=1e-5)
    assert torch.allclose(batch["normals"].norm(dim=2), torch.ones(2, 300), atol=1e-5)
    assert ((batch["normals"][1] * batch["points"][1]).sum(1) > 0).all()  # outward
    item = data[1]
    assert torch.equal(item["shape"], batch["shape"][1]) and item["class_id"] == -1 and item["caption"] == ""
    assert torch.equal(data[1]["points"], item["points"])  # a fixed seed per mesh


def test_mesh_folder_reads_scenes_and_other_formats(tmp_path):
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(tmp_path / "cube.glb")
    trimesh.creation.box(extents=(1.0, 1.0, 1.0)).export(tmp_path / "cube.off")
    batch = MeshFolder(tmp_path, resolution=16, num_points=10).batch([0, 1])
    assert torch.equal(batch["shape"][0], batch["shape"][1]) and _iou(batch["shape"][0], _analytic_box((1, 1, 1), 16)) == 1.0


def test_open_mesh_is_refused_unless_allow_open_which_voxelises_its_shell(tmp_path):
    ball = trimesh.creation.icosphere(subdivisions=3)
    ball.update_faces(np.arange(len(ball.faces)) != 0)  # one face missing: not closed
    path = tmp_path / "open.ply"
    ball.export(path)
    with pytest.raises(ValueError, match="not closed") as info:
        MeshFolder(tmp_path, resolution=16)[0]
    assert str(path) in str(info.value) and "allow_open=True" in str(info.value)
    shell = MeshFolder(tmp_path, resolution=16, num_points=50, allow_open=True)[0]["shape"]
    centres = voxel_centres(16)
    radius = centres.norm(dim=-1)
    half = 1.0 - 1.25 * 2.0 / 16
    assert shell[8, 8, 8] == 0 and shell[radius < half - 0.25].sum() == 0  # hollow
    assert shell[(radius - half).abs() < 0.05].float().mean() > 0.9  # the surface's voxels are on
    assert _border(shell[None]).max() == 0


def test_mesh_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="root"):
        MeshFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no meshes") as info:
        MeshFolder(tmp_path)
    assert str(tmp_path) in str(info.value) and ".obj" in str(info.value)
    (tmp_path / "broken.ply").write_text("not a ply file")
    (tmp_path / "empty.obj").write_text("# nothing here\n")
    data = MeshFolder(tmp_path)
    for index, name in enumerate(["broken.ply", "empty.obj"]):
        with pytest.raises(ValueError, match="cannot read mesh") as info:
            data[index]
        assert name in str(info.value)
    with pytest.raises(ValueError, match="resolution"):
        MeshFolder(tmp_path, resolution=24)
    with pytest.raises(TypeError, match="allow_open"):
        MeshFolder(tmp_path, allow_open="yes")
    assert set(MESH_SUFFIXES) == {".obj", ".ply", ".glb", ".gltf", ".stl", ".off"}
