"""Shapes out of a pipeline: occupancy grids → meshes, surface points, voxels; mesh files, previews and
`mmgen generate` for a shape pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
import trimesh

from mmgen.app.cli import main
from mmgen.meshes import MESH_FORMATS, occupancy_to_mesh, render_preview, sample_surface_points, write_mesh
from pipelines import ARShapePipelineOutput
from pipelines.outputs import POINTS_PER_SHAPE, check_output_type, make_output, to_output_shapes

R = 32
VOXEL = 2 / R
RADIUS, HALF_SIDE = 0.6, 0.5  # the cube's faces lie on voxel faces: exactly 16 voxels across


def centres(side: int = R) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(side) + 0.5) / side * 2 - 1
    return np.meshgrid(c, c, c, indexing="ij")


def sphere(radius: float = RADIUS) -> np.ndarray:
    x, y, z = centres()
    return (x**2 + y**2 + z**2 < radius**2).astype(np.float32)


def cube() -> np.ndarray:
    x, y, z = centres()
    return ((np.abs(x) < HALF_SIDE) & (np.abs(y) < HALF_SIDE) & (np.abs(z) < HALF_SIDE)).astype(np.float32)


@pytest.fixture(scope="module")
def meshes() -> list[trimesh.Trimesh]:
    return to_output_shapes(torch.from_numpy(np.stack([sphere(), cube()])), "mesh")["shapes"]


def test_meshes_are_closed_outward_and_match_the_analytic_volume(meshes):
    for mesh, volume in zip(meshes, (4 / 3 * np.pi * RADIUS**3, (2 * HALF_SIDE) ** 3)):
        assert isinstance(mesh, trimesh.Trimesh) and mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume == pytest.approx(volume, rel=0.04)  # > 0: the normals face outwards
        assert np.abs(mesh.vertices).max() <= 1
    radii = np.linalg.norm(meshes[0].vertices, axis=1)
    assert np.abs(radii - RADIUS).max() < VOXEL
    assert np.abs(meshes[1].vertices).max() == pytest.approx(HALF_SIDE)


def test_a_shape_filling_the_grid_is_closed_by_the_padding():
    mesh = occupancy_to_mesh(np.ones((8, 8, 8)))
    assert mesh.is_watertight and mesh.volume > 0
    np.testing.assert_allclose(mesh.bounds, [[-1, -1, -1], [1, 1, 1]])


def test_points_lie_on_the_surface_and_repeat():
    shapes = to_output_shapes(torch.from_numpy(np.stack([sphere(), cube()])), "points")["shapes"]
    assert [p.shape for p in shapes] == [(POINTS_PER_SHAPE, 3)] * 2 and all(p.dtype == np.float32 for p in shapes)
    assert np.abs(np.linalg.norm(shapes[0], axis=1) - RADIUS).max() < VOXEL
    assert np.abs(np.abs(shapes[1]).max(axis=1) - HALF_SIDE).max() < VOXEL  # each on a face (or a chamfered edge)
    again = to_output_shapes(torch.from_numpy(sphere()[None]), "points")["shapes"][0]
    np.testing.assert_array_equal(again, shapes[0])


def test_voxels_are_the_occupancy_above_one_half():
    soft = np.random.default_rng(0).random((2, 8, 8, 8)).astype(np.float32)
    voxels = to_output_shapes(torch.from_numpy(soft), "voxels")["shapes"]
    assert voxels.dtype == np.bool_ and voxels.shape == (2, 8, 8, 8)
    np.testing.assert_array_equal(voxels, soft > 0.5)
    np.testing.assert_array_equal(to_output_shapes(torch.from_numpy(cube()[None]), "voxels")["shapes"][0], cube() > 0.5)


def test_an_empty_grid_gives_an_empty_mesh_no_points_and_a_blank_preview():
    empty = torch.zeros(1, 8, 8, 8)
    mesh = to_output_shapes(empty, "mesh")["shapes"][0]
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.vertices) == 0 and len(mesh.faces) == 0
    assert to_output_shapes(empty, "points")["shapes"][0].shape == (0, 3)
    assert not to_output_shapes(empty, "voxels")["shapes"].any()
    assert len(np.unique(np.asarray(render_preview(mesh)).reshape(-1, 3), axis=0)) == 1


def test_make_output_for_shapes_and_tokens():
    tokenizer = SimpleNamespace(modality="shape")
    tokens = torch.zeros(1, 4, dtype=torch.long)
    out = make_output(tokenizer, torch.from_numpy(cube()[None]), tokens, output_type=None, return_dict=True)
    assert isinstance(out, ARShapePipelineOutput) and out.tokens is tokens and out.shapes[0].is_watertight
    assert make_output(tokenizer, None, tokens, output_type="tokens", return_dict=False) == (None, tokens)


def test_output_types_per_modality():
    assert check_output_type("shape", None) == "mesh"
    shape_types = ("mesh", "points", "voxels", "tokens")
    assert tuple(check_output_type("shape", t) for t in shape_types) == shape_types
    assert [check_output_type(modality, None) for modality in ("image", "audio", "video")] == ["pil", "np", "pil"]
    with pytest.raises(ValueError, match=r"output_type='pil' is not defined for shape; choose one of \('mesh', 'points', "
                                         r"'voxels', 'tokens'\)"):
        check_output_type("shape", "pil")
    for modality in ("image", "audio", "video"):
        with pytest.raises(ValueError, match=f"output_type='mesh' is not defined for {modality}"):
            check_output_type(modality, "mesh")
    with pytest.raises(ValueError, match=r"must be one of \('mesh', 'points', 'voxels', 'tokens'\) .*got 'latent'"):
        check_output_type("shape", "latent")


def test_bad_grids_are_refused_with_their_shape():
    with pytest.raises(ValueError, match=r"occupancy_RRR must be a cubic grid \[R, R, R\], got shape \(4, 4, 5\)"):
        occupancy_to_mesh(np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"occupancy grids \[B, R, R, R\], got shape \(4, 4, 4\)"):
        to_output_shapes(torch.zeros(4, 4, 4), "mesh")


@pytest.mark.parametrize("file_type", MESH_FORMATS)
def test_write_mesh_round_trips_atomically_and_keeps_what_exists(meshes, tmp_path, file_type):
    path = tmp_path / f"sphere.{file_type.upper()}"  # the suffix is read case-insensitively
    assert write_mesh(path, meshes[0]) == path
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(meshes[0].vertices) and loaded.is_watertight
    assert loaded.volume == pytest.approx(meshes[0].volume, rel=1e-4)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_mesh(path, meshes[1])
    write_mesh(path, meshes[1], overwrite=True)
    assert trimesh.load(path, force="mesh").volume == pytest.approx(meshes[1].volume, rel=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_write_mesh_refuses_an_unknown_suffix_and_a_non_mesh(meshes, tmp_path):
    with pytest.raises(ValueError, match=r"shape\.stl'.*one of \('ply', 'obj', 'glb'\)"):
        write_mesh(tmp_path / "shape.stl", meshes[0])
    with pytest.raises(TypeError, match="mesh must be a trimesh.Trimesh, got ndarray"):
        write_mesh(tmp_path / "shape.ply", cube())
    assert not list(tmp_path.iterdir())


def test_preview_is_a_shaded_deterministic_image_of_the_shape(meshes):
    sphere_png, cube_png = render_preview(meshes[0]), render_preview(cube())
    assert sphere_png.size == (256, 256) and sphere_png.mode == "RGB"
    pixels = np.asarray(sphere_png).astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # shaded, not a flat silhouette
    assert np.abs(pixels - np.asarray(cube_png)).sum(axis=-1).astype(bool).mean() > 0.05
    np.testing.assert_array_equal(pixels, np.asarray(render_preview(meshes[0])))
    assert render_preview(sphere(), size=64).size == (64, 64)
    with pytest.raises(ValueError, match="size must be a positive int, got 0"):
        render_preview(meshes[0], size=0)


def test_sample_surface_points_refuses_a_bad_count(meshes):
    with pytest.raises(ValueError, match="count must be a positive int, got 0"):
        sample_surface_points(meshes[0], count=0)


class _ShapePipeline:
    """What `mmgen generate` needs of a shape pipeline: spheres whose radius follows each sample's seed."""

    tokenizer = SimpleNamespace(modality="shape")

    def __call__(self, *, generator: list[torch.Generator], output_type: str, **options: Any) -> ARShapePipelineOutput:
        radii = [0.3 + 0.5 * torch.rand(1, generator=g).item() for g in generator]
        grids = torch.from_numpy(np.stack([sphere(r) for r in radii]))
        return ARShapePipelineOutput(**to_output_shapes(grids, output_type), tokens=None)


def test_generate_writes_a_mesh_and_a_preview_per_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mmgen.app.cli._load_pipeline", lambda source, device: _ShapePipeline())
    out = tmp_path / "out"
    argv = ["generate", str(tmp_path), "--num-samples", "2", "--mesh-format", "obj", "--out", str(out),
            "--device", "cpu"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modality"] == "shape" and len(manifest["samples"]) == 2
    for item in manifest["samples"]:
        assert item["file"].endswith(".obj") and item["preview"] == str(Path(item["file"]).with_suffix(".png"))
        assert trimesh.load(out / item["file"], force="mesh").is_watertight
        assert PIL.Image.open(out / item["preview"]).size == (256, 256)
    assert main(argv) == 2 and "already holds" in capsys.readouterr().err
