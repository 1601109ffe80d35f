"""Built-in 3D data that needs no download: procedural primitives, and a user's folder of meshes.

Every dataset yields items ``{"shape": FloatTensor[R, R, R] of 0 / 1 occupancy, "points": FloatTensor[N, 3],
"normals": FloatTensor[N, 3], "class_id": int, "caption": str}`` (``class_id = -1`` and ``caption = ""``
where there is no label) and has ``batch(indices)`` returning the same keys stacked (``shape`` becomes
``[B, R, R, R]``, ``points`` and ``normals`` ``[B, N, 3]``, ``class_id`` a long tensor, ``caption`` a list).

Coordinates: the grid spans the cube ``[-1, 1]^3``; ``occ[i, j, k]`` is the voxel at ``(x, y, z)`` with
centre ``(i + 0.5) / R * 2 - 1`` per axis (:func:`voxel_centres`), and **z is vertical**. ``points`` lie on
the shape's surface in the same coordinates and ``normals`` are their unit outward normals, for
surface metrics (Chamfer distance, F-score in :mod:`mmgen.metrics.shapes3d`) and point-based tokenizers.
Every shape leaves at least one empty voxel at each border of the grid, so marching cubes gives closed meshes.

Primitives (sphere, cube, cylinder, cone, torus) are checkable by code from the occupancy alone (see
:func:`mmgen.metrics.judge_primitives`), so 3D generators trained on them can be scored for prompt adherence.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tokens import _check_positive, _check_real
from .images import SPLITS, _check_seed, _folder, _item_rng

__all__ = [
    "PRIMITIVES",
    "NUM_SHAPE3D_CLASSES",
    "SHAPE3D_CAPTIONS",
    "MIN_RESOLUTION",
    "MAX_RESOLUTION",
    "shape3d_caption",
    "parse_shape3d_caption",
    "voxel_centres",
    "primitive_sdf",
    "PrimitivesDataset",
    "MeshFolder",
    "MESH_SUFFIXES",
]

PRIMITIVES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
NUM_SHAPE3D_CLASSES = len(PRIMITIVES)
SHAPE3D_CAPTIONS: tuple[str, ...] = tuple(f"a {name}" for name in PRIMITIVES)
MIN_RESOLUTION, MAX_RESOLUTION = 8, 128  # powers of two in between: what 2x-downsampling tokenizers can take

# Every primitive fits in the box |x|, |y|, |z| <= _HALF_WIDTH: the grid less one voxel per side at
# resolution 8 (voxel side 0.25), so voxel centres on the border (|c| >= 0.875 at 8) are always empty.
_HALF_WIDTH = 1.0 - 2.0 / MIN_RESOLUTION
# Size ranges in grid units (the grid side is 2). Chosen so that at 16^3 (voxel side 0.125) every class
# stays recognisable: cubes at least 6 voxels wide, cylinder / cone radii at least 3.4 voxels, and a torus
# hole of radius >= 0.18 (1.4 voxels) in a tube at least 2.6 voxels thick. Bounding extents: 38-75% of the side.
_SPHERE_RADIUS = (0.45, 0.72)
_CUBE_HALF_SIDE = (0.38, 0.53)  # rotated by 45 degrees its footprint reaches 0.53 * sqrt(2) = 0.7495
_CYLINDER_RADIUS, _CYLINDER_HALF_HEIGHT = (0.42, 0.72), (0.4, 0.72)
_CONE_RADIUS, _CONE_HALF_HEIGHT = (0.45, 0.72), (0.45, 0.72)
_TORUS_OUTER, _TORUS_TUBE, _TORUS_MIN_HOLE = (0.56, 0.72), (0.16, 0.22), 0.18  # outer radius, tube radius, hole radius
_PRIMITIVE_STREAM = 22  # random streams 22, 23 for the train / heldout splits, apart from images' 0-2, tones' 16-19, video's 20, 21


def shape3d_caption(class_id: int) -> str:
    """Caption of a primitive class, ``"a {primitive}"`` (``class_id`` indexes ``PRIMITIVES``)."""
    if (isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer))
            or not 0 <= class_id < NUM_SHAPE3D_CLASSES):
        raise ValueError(f"class_id must be an int in [0, {NUM_SHAPE3D_CLASSES}), got {class_id!r}")
    return SHAPE3D_CAPTIONS[int(class_id)]


def parse_shape3d_caption(text: str) -> int:
    """Class id of a caption written as :func:`shape3d_caption` writes it (case and outer spaces ignored)."""
    normal = " ".join(text.strip().lower().split()) if isinstance(text, str) else None
    if normal not in SHAPE3D_CAPTIONS:
        raise ValueError(f"cannot parse 3D shape caption text={text!r}: expected one of {SHAPE3D_CAPTIONS}")
    return SHAPE3D_CAPTIONS.index(normal)


def _check_resolution(resolution: object) -> int:
    if (isinstance(resolution, bool) or not isinstance(resolution, int) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
            or resolution & (resolution - 1)):
        raise ValueError(f"resolution must be a power of two in [{MIN_RESOLUTION}, {MAX_RESOLUTION}] (voxels per side), "
                         f"got {resolution!r}")
    return resolution


def _voxel_axis(resolution: int) -> np.ndarray:
    """Voxel centres along one axis of an ``R^3`` grid over ``[-1, 1]^3``: ``(i + 0.5) / R * 2 - 1``."""
    return (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0


def voxel_centres(resolution: int) -> torch.Tensor:
    """Centres ``[R, R, R, 3]`` (float64) of the voxels of an ``R^3`` grid over ``[-1, 1]^3``, indexed ``(x, y, z)``."""
    _check_positive("resolution", resolution)
    axis = torch.from_numpy(_voxel_axis(resolution))
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


def _segment_distance(rho: np.ndarray, z: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """Distance in the (rho, z) half-plane from each point to the segment ``a``-``b``."""
    (a_r, a_z), (b_r, b_z) = a, b
    d_r, d_z = b_r - a_r, b_z - a_z
    t = np.clip(((rho - a_r) * d_r + (z - a_z) * d_z) / (d_r * d_r + d_z * d_z), 0.0, 1.0)
    return np.hypot(rho - a_r - t * d_r, z - a_z - t * d_z)


def _local_sdf(primitive: str, x: np.ndarray, y: np.ndarray, z: np.ndarray, dims: tuple[float, ...]) -> np.ndarray:
    """Signed distance (negative inside) at broadcastable coordinates in the primitive's own frame (centred, axis z).

    ``primitive`` and ``dims`` are checked already (:func:`_check_dims`, or drawn by the dataset).
    """
    rho = np.hypot(x, y)
    if primitive == "sphere":
        return np.sqrt(rho * rho + z * z) - dims[0]
    if primitive == "cube":
        q_x, q_y, q_z = np.abs(x) - dims[0], np.abs(y) - dims[0], np.abs(z) - dims[0]
        outside = np.sqrt(np.maximum(q_x, 0.0) ** 2 + np.maximum(q_y, 0.0) ** 2 + np.maximum(q_z, 0.0) ** 2)
        return outside + np.minimum(np.maximum(np.maximum(q_x, q_y), q_z), 0.0)
    if primitive == "cylinder":
        radius, half_height = dims
        q_r, q_z = rho - radius, np.abs(z) - half_height
        return np.minimum(np.maximum(q_r, q_z), 0.0) + np.hypot(np.maximum(q_r, 0.0), np.maximum(q_z, 0.0))
    if primitive == "cone":  # base disc at z = -h, apex at z = +h: a triangle revolved about the z axis
        radius, half_height = dims
        base = _segment_distance(rho, z, (0.0, -half_height), (radius, -half_height))
        slant = _segment_distance(rho, z, (radius, -half_height), (0.0, half_height))
        inside = (z >= -half_height) & (rho * 2.0 * half_height <= radius * (half_height - z))
        return np.where(inside, -1.0, 1.0) * np.minimum(base, slant)
    major, minor = dims  # the torus, lying flat: the ring in the z = 0 plane, the hole along z
    return np.hypot(rho - major, z) - minor


_DIMS = {"sphere": ("radius",), "cube": ("half_side",), "cylinder": ("radius", "half_height"),
         "cone": ("radius", "half_height"), "torus": ("major_radius", "minor_radius")}


def _check_dims(primitive: str, dims: Sequence[float]) -> tuple[float, ...]:
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown primitive {primitive!r}; expected one of {PRIMITIVES}")
    names = _DIMS[primitive]
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) != len(names):
        raise ValueError(f"dims of a {primitive} must be {names}, got {dims!r}")
    values = tuple(_check_real(f"{primitive} {name}", d, above=0.0) for name, d in zip(names, dims))
    if primitive == "torus" and values[1] >= values[0]:
        raise ValueError(f"a torus needs minor_radius < major_radius (a hole), got dims {dims!r}")
    return values


def _to_local(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float],
              rotation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates in the primitive's frame: translated by ``-centre``, rotated by ``-rotation`` about z."""
    cos, sin = math.cos(rotation), math.sin(rotation)
    x, y = x - centre[0], y - centre[1]
    return cos * x + sin * y, -sin * x + cos * y, z - centre[2]


def _to_world(local_N3: np.ndarray, centre: Sequence[float] | None, rotation: float) -> np.ndarray:
    """The inverse of :func:`_to_local` (with ``centre=None``, a rotation only: for normals)."""
    cos, sin = math.cos(rotation), math.sin(rotation)
    turned = np.stack([cos * local_N3[:, 0] - sin * local_N3[:, 1], sin * local_N3[:, 0] + cos * local_N3[:, 1],
                       local_N3[:, 2]], axis=1)
    return turned if centre is None else turned + np.asarray(centre, dtype=np.float64)


def primitive_sdf(primitive: str, points: np.ndarray | torch.Tensor, *, dims: Sequence[float],
                  centre: Sequence[float] = (0.0, 0.0, 0.0), rotation: float = 0.0) -> np.ndarray:
    """Signed distance (negative inside, float64 ``[...]``) from ``points [..., 3]`` to a primitive's surface.

    The primitive is built about the origin with its axis along z, then rotated by ``rotation`` radians
    about z and moved to ``centre``. ``dims``: sphere ``(radius,)``, cube ``(half_side,)``, cylinder and cone
    ``(radius, half_height)`` (the cone's base at the bottom, apex up), torus ``(major_radius, minor_radius)``
    (lying flat, hole along z). Exact distances, so points on the surface are exactly where it is 0.
    """
    values = _check_dims(primitive, dims)
    array = points.detach().cpu().double().numpy() if isinstance(points, torch.Tensor) else np.asarray(points, np.float64)
    if array.ndim < 1 or array.shape[-1] != 3:
        raise ValueError(f"points must be an array [..., 3] of (x, y, z), got shape {array.shape}")
    if not isinstance(centre, Sequence) or len(centre) != 3:
        raise ValueError(f"centre must be (x, y, z), got {centre!r}")
    centre3 = tuple(_check_real("centre", c) for c in centre)
    return _local_sdf(primitive, *_to_local(array[..., 0], array[..., 1], array[..., 2], centre3,
                                            _check_real("rotation", rotation)), values)


def _torus_tube_angles(u_N: np.ndarray, major: float, minor: float) -> np.ndarray:
    """Tube angles ``v`` with density proportional to ``major + minor cos v`` (uniform over the torus's area).

    Inverts the CDF ``(major v + minor sin v) / (2 pi major)`` by Newton's method (monotone: ``minor < major``).
    """
    target = 2.0 * math.pi * major * u_N
    v = 2.0 * math.pi * u_N
    for _ in range(12):
        v = np.clip(v - (major * v + minor * np.sin(v) - target) / (major + minor * np.cos(v)), 0.0, 2.0 * math.pi)
    return v


def _local_surface(primitive: str, dims: tuple[float, ...], count: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points drawn uniformly by area on a primitive's surface in its own frame, and their outward normals.

    Point ``n`` uses row ``n`` of one ``[count, 4]`` uniform draw, so the first ``k`` points are the same
    for every ``count >= k``.
    """
    u = rng.random((count, 4))
    if primitive == "sphere":  # Archimedes: height and longitude uniform give a uniform point on the sphere
        height, longitude = u[:, 0] * 2.0 - 1.0, 2.0 * math.pi * u[:, 1]
        ring = np.sqrt(1.0 - height * height)
        normals = np.stack([ring * np.cos(longitude), ring * np.sin(longitude), height], axis=1)
        return dims[0] * normals, normals
    if primitive == "cube":  # six faces of equal area
        face = np.minimum((u[:, 3] * 6.0).astype(np.int64), 5)
        axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
        points = (u[:, :3] * 2.0 - 1.0) * dims[0]
        rows = np.arange(count)
        points[rows, axis] = sign * dims[0]
        normals = np.zeros((count, 3))
        normals[rows, axis] = sign
        return points, normals
    phi = 2.0 * math.pi * u[:, 0]
    cos, sin = np.cos(phi), np.sin(phi)
    if primitive == "torus":
        major, minor = dims
        v = _torus_tube_angles(u[:, 1], major, minor)
        normals = np.stack([np.cos(v) * cos, np.cos(v) * sin, np.sin(v)], axis=1)
        ring = np.stack([major * cos, major * sin, np.zeros(count)], axis=1)
        return ring + minor * normals, normals
    radius, half_height = dims
    disc_rho = radius * np.sqrt(u[:, 1])  # uniform on a disc of this radius
    if primitive == "cylinder":
        side, cap = 2.0 * math.pi * radius * 2.0 * half_height, math.pi * radius * radius
        part = np.searchsorted(np.cumsum([side, cap, cap]) / (side + 2.0 * cap), u[:, 2], side="right")
        on_side = part == 0
        top = np.where(part == 1, 1.0, -1.0)
        rho = np.where(on_side, radius, disc_rho)
        z = np.where(on_side, (u[:, 1] * 2.0 - 1.0) * half_height, top * half_height)
        n_r, n_z = np.where(on_side, 1.0, 0.0), np.where(on_side, 0.0, top)
    else:  # cone: lateral area pi r L, base pi r^2
        slant = math.hypot(radius, 2.0 * half_height)
        lateral, base = math.pi * radius * slant, math.pi * radius * radius
        on_side = u[:, 2] < lateral / (lateral + base)
        t = np.sqrt(u[:, 1])  # distance from the apex as a fraction of the slant: area grows linearly with it
        rho = np.where(on_side, radius * t, disc_rho)
        z = np.where(on_side, half_height - 2.0 * half_height * t, -half_height)
        n_r = np.where(on_side, 2.0 * half_height / slant, 0.0)
        n_z = np.where(on_side, radius / slant, -1.0)
    points = np.stack([rho * cos, rho * sin, z], axis=1)
    return points, np.stack([n_r * cos, n_r * sin, n_z], axis=1)


def _occupancy(primitive: str, dims: tuple[float, ...], centre: Sequence[float], rotation: float,
               axis_R: np.ndarray) -> torch.Tensor:
    """0 / 1 occupancy ``[R, R, R]``: the primitive's SDF <= 0 at the voxel centres (``axis_R`` per axis).

    The turn is about z only, so the frame change is done on the ``[R, R, 1]`` xy plane and ``[1, 1, R]`` z
    line, and the SDF broadcasts them to the grid.
    """
    local = _to_local(axis_R[:, None, None], axis_R[None, :, None], axis_R[None, None, :], centre, rotation)
    return torch.from_numpy(_local_sdf(primitive, *local, dims) <= 0.0).float()


class PrimitivesDataset(Dataset):
    """Procedural 3D primitives: one of 5 classes (``PRIMITIVES``) with random size, position and turn about z.

    Sizes are drawn per class (bounding extents 38-75% of the grid side), the turn about the vertical
    z axis uniformly (it shows on cubes only: the rest are round about z), and the position uniformly where
    the shape stays inside the grid less one voxel per side at resolution 8. Cylinders and cones stand
    upright (apex up); a torus lies flat, its hole along z. Item ``i`` is a pure function of
    ``(seed, split, i)``, the same analytic shape at every ``resolution`` and ``num_points``; classes cycle
    with the index (``class_id = i % 5``). ``class_mix`` (one count per class) repeats classes in that cycle:
    ``(1, 4, 1, 1, 1)`` makes every second item a cube, for a model whose hard class needs more of the
    steps; the default (one each) is the plain cycle. Occupancy is the SDF's sign at voxel centres; points are drawn
    uniformly by area on the analytic surface.
    """

    modality = "shape"  # batches hold the samples under this key

    def __init__(self, *, split: str = "train", size: int, resolution: int = 32, num_points: int = 2048,
                 seed: int = 0, class_mix: Sequence[int] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _check_positive("size", size)
        _check_positive("num_points", num_points)
        self.split, self.size, self.num_points = split, size, num_points
        self.resolution = _check_resolution(resolution)
        self.seed = _check_seed(seed)
        self._axis_R = _voxel_axis(self.resolution)
        self._class_cycle = _class_cycle(class_mix)

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> tuple[int, np.random.Generator]:
        """The item's index in ``[0, size)`` and its own generator: the shape's draws, then its surface points'."""
        if isinstance(index, bool):
            raise TypeError(f"index must be an int, got {index!r}")
        index = operator.index(index)
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a PrimitivesDataset of size {self.size}")
        index %= self.size
        return index, _item_rng(self.seed, _PRIMITIVE_STREAM + SPLITS.index(self.split), index)

    def params(self, index: int) -> dict[str, Any]:
        """The drawn parameters of item ``index``: ``primitive``, ``class_id``, and what :func:`primitive_sdf` takes."""
        index, rng = self._rng(index)
        return self._draw(index, rng)

    def _draw(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """The parameters of item ``index``: the first draws of its generator (its surface points come after)."""
        cid = self._class_cycle[index % len(self._class_cycle)]
        primitive = PRIMITIVES[cid]
        rotation = float(rng.uniform(0.0, 2.0 * math.pi))
        if primitive == "sphere":
            dims = (rng.uniform(*_SPHERE_RADIUS),)
            reach_xy, reach_z = dims[0], dims[0]
        elif primitive == "cube":
            dims = (rng.uniform(*_CUBE_HALF_SIDE),)
            reach_xy, reach_z = dims[0] * (abs(math.cos(rotation)) + abs(math.sin(rotation))), dims[0]
        elif primitive == "torus":
            outer = rng.uniform(*_TORUS_OUTER)
            minor = rng.uniform(_TORUS_TUBE[0], min(_TORUS_TUBE[1], (outer - _TORUS_MIN_HOLE) / 2.0))
            dims = (outer - minor, minor)
            reach_xy, reach_z = outer, minor
        else:
            radius_range, half_height_range = ((_CYLINDER_RADIUS, _CYLINDER_HALF_HEIGHT) if primitive == "cylinder"
                                               else (_CONE_RADIUS, _CONE_HALF_HEIGHT))
            dims = (rng.uniform(*radius_range), rng.uniform(*half_height_range))
            reach_xy, reach_z = dims
        slack = np.array([_HALF_WIDTH - reach_xy, _HALF_WIDTH - reach_xy, _HALF_WIDTH - reach_z])
        centre = tuple(float(c) for c in rng.uniform(-1.0, 1.0, 3) * slack)
        return {"primitive": primitive, "class_id": cid, "dims": tuple(float(d) for d in dims), "centre": centre,
                "rotation": rotation}

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = self.batch([index])
        return {"shape": batch["shape"][0], "points": batch["points"][0], "normals": batch["normals"][0],
                "class_id": int(batch["class_id"][0]), "caption": batch["caption"][0]}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``shape [B, R, R, R]``, ``points`` / ``normals [B, N, 3]``, ``class_id [B]``, ``caption``."""
        if not len(indices):
            raise ValueError("indices must not be empty")
        shapes, points, normals, cids = [], [], [], []
        for index in indices:
            index, rng = self._rng(index)
            p = self._draw(index, rng)
            shapes.append(_occupancy(p["primitive"], p["dims"], p["centre"], p["rotation"], self._axis_R))
            local_points, local_normals = _local_surface(p["primitive"], p["dims"], self.num_points, rng)
            points.append(_to_world(local_points, p["centre"], p["rotation"]))
            normals.append(_to_world(local_normals, None, p["rotation"]))
            cids.append(p["class_id"])
        return {"shape": torch.stack(shapes), "points": torch.from_numpy(np.stack(points)).float(),
                "normals": torch.from_numpy(np.stack(normals)).float(), "class_id": torch.tensor(cids),
                "caption": [SHAPE3D_CAPTIONS[c] for c in cids]}


def _class_cycle(class_mix: Sequence[int] | None) -> tuple[int, ...]:
    """The class ids items cycle through: class c repeated ``class_mix[c]`` times (each once by default)."""
    if class_mix is None:
        return tuple(range(NUM_SHAPE3D_CLASSES))
    counts = list(class_mix) if isinstance(class_mix, (list, tuple)) else None
    if (counts is None or len(counts) != NUM_SHAPE3D_CLASSES
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts) or not sum(counts)):
        raise ValueError(f"class_mix must be {NUM_SHAPE3D_CLASSES} counts >= 0 (one per class of {PRIMITIVES}), "
                         f"not all 0, got {class_mix!r}")
    return tuple(c for c, n in enumerate(counts) for _ in range(n))


MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
_COLUMN_JITTER = (1.234567e-7, 2.345678e-7)  # ray columns sit off mesh edges and vertices that fall exactly on them


def _require_trimesh() -> Any:
    try:
        import trimesh
    except ImportError as err:
        raise ImportError("MeshFolder needs trimesh to read meshes: pip install 'trimesh>=4'") from err
    return trimesh


def _normalise(vertices_V3: np.ndarray, resolution: int) -> np.ndarray:
    """Vertices centred on their bounding box, the longest side spanning the grid less 1.25 voxels per side.

    One voxel per side stays empty; the extra quarter voxel keeps faces of grid-aligned meshes off voxel
    centres and voxel boundaries, where inside tests and shells are ambiguous.
    """
    low, high = vertices_V3.min(0), vertices_V3.max(0)
    longest = float((high - low).max())
    half = 1.0 - 1.25 * 2.0 / resolution
    return (vertices_V3 - (low + high) / 2.0) * (2.0 * half / longest)


def _solid_voxels(triangles_F33: np.ndarray, resolution: int) -> np.ndarray:
    """Occupancy ``[R, R, R]`` of a closed mesh by ray parity: a vertical ray up each voxel column counts crossings.

    Each triangle is tested only against the columns in its footprint's bounding box; a voxel is inside
    when an odd number of faces crosses its column below its centre. Columns are shifted by a negligible
    ``_COLUMN_JITTER`` so none passes exactly through a shared edge or vertex (which would count twice).
    """
    step = 2.0 / resolution
    xy = triangles_F33[:, :, :2]
    first = np.clip(np.ceil((xy.min(1) + 1.0) / step - 0.5), 0, resolution).astype(np.int64)  # [F, 2]
    last = np.clip(np.floor((xy.max(1) + 1.0) / step - 0.5), -1, resolution - 1).astype(np.int64)
    span = np.maximum(last - first + 1, 0)
    count = span[:, 0] * span[:, 1]
    tri = np.repeat(np.arange(len(triangles_F33)), count)
    local = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    ix = first[tri, 0] + local % np.maximum(span[tri, 0], 1)
    iy = first[tri, 1] + local // np.maximum(span[tri, 0], 1)
    px = (ix + 0.5) * step - 1.0 + _COLUMN_JITTER[0]
    py = (iy + 0.5) * step - 1.0 + _COLUMN_JITTER[1]
    a, b, c = triangles_F33[tri, 0], triangles_F33[tri, 1], triangles_F33[tri, 2]
    w_a = (b[:, 0] - px) * (c[:, 1] - py) - (c[:, 0] - px) * (b[:, 1] - py)  # twice the signed sub-areas
    w_b = (c[:, 0] - px) * (a[:, 1] - py) - (a[:, 0] - px) * (c[:, 1] - py)
    w_c = (a[:, 0] - px) * (b[:, 1] - py) - (b[:, 0] - px) * (a[:, 1] - py)
    area = w_a + w_b + w_c
    hit = (area != 0) & (((w_a >= 0) & (w_b >= 0) & (w_c >= 0)) | ((w_a <= 0) & (w_b <= 0) & (w_c <= 0)))
    z = (w_a * a[:, 2] + w_b * b[:, 2] + w_c * c[:, 2])[hit] / area[hit]
    above = np.clip(np.ceil((z + 1.0) / step - 0.5), 0, resolution).astype(np.int64)  # first voxel centre above z
    crossings = np.zeros((resolution, resolution, resolution + 1), dtype=np.int64)
    np.add.at(crossings, (ix[hit], iy[hit], above), 1)
    return (np.cumsum(crossings, axis=2)[:, :, :resolution] % 2).astype(bool)


def _shell_voxels(vertices_V3: np.ndarray, faces_F3: np.ndarray, resolution: int) -> np.ndarray:
    """Voxels ``[R, R, R]`` the surface passes through: the faces split until every edge is under half a voxel,
    then the voxels holding their vertices (a voxel only grazed at a corner may be missed)."""
    trimesh = _require_trimesh()
    step = 2.0 / resolution
    fine_vertices, _ = trimesh.remesh.subdivide_to_size(vertices_V3, faces_F3, max_edge=step / 2.0, max_iter=24)
    index = np.clip(np.floor((fine_vertices + 1.0) / step), 0, resolution - 1).astype(np.int64)
    shell = np.zeros((resolution, resolution, resolution), dtype=bool)
    shell[index[:, 0], index[:, 1], index[:, 2]] = True
    return shell


class MeshFolder(Dataset):
    """Every mesh under ``root`` (recursive; obj, ply, glb, gltf, stl, off), as occupancy and surface samples.

    Each mesh (a scene's parts joined) is centred and scaled so its longest side spans the grid less one
    voxel per side (:func:`_normalise`), then voxelised: a closed mesh is solid (inside test at voxel
    centres by ray parity), and ``points`` / ``normals`` are ``num_points`` area-uniform surface samples
    (a fixed seed per mesh) with their faces' normals. Files are sorted by path, so indices are stable;
    meshes load lazily, and a mesh that is not watertight is an error when it loads unless ``allow_open``,
    which voxelises only its surface shell (an open mesh has no inside).
    """

    modality = "shape"  # batches hold the samples under this key

    def __init__(self, root: str | Path, *, resolution: int = 32, num_points: int = 2048, allow_open: bool = False) -> None:
        self.resolution = _check_resolution(resolution)
        _check_positive("num_points", num_points)
        if not isinstance(allow_open, bool):
            raise TypeError(f"allow_open must be a bool, got {allow_open!r}")
        self.root = _folder("root", root, "mesh")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
        if not self.paths:
            raise ValueError(f"mesh folder {str(self.root)!r} holds no meshes (looked for {', '.join(MESH_SUFFIXES)}, recursively)")
        self.num_points, self.allow_open = num_points, allow_open

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        shape, points, normals = self._load(self.paths[index])
        return {"shape": shape, "points": points, "normals": normals, "class_id": -1, "caption": ""}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """Items ``indices`` stacked: ``shape [B, R, R, R]``, ``points`` / ``normals [B, N, 3]``, ``class_id`` (all -1), ``caption`` (all empty)."""
        items = [self._load(self.paths[int(i)]) for i in indices]
        if not items:
            raise ValueError("indices must not be empty")
        shapes, points, normals = (torch.stack(parts) for parts in zip(*items))
        return {"shape": shapes, "points": points, "normals": normals, "class_id": torch.full((len(items),), -1),
                "caption": [""] * len(items)}

    def _load(self, path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        trimesh = _require_trimesh()
        try:
            mesh = trimesh.load(path, force="mesh")
        except Exception as err:  # trimesh's loaders raise many kinds of errors on bad files
            raise ValueError(f"cannot read mesh {str(path)!r}: {type(err).__name__}: {err}") from err
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
            raise ValueError(f"cannot read mesh {str(path)!r}: trimesh found no faces with any extent in it")
        closed = bool(mesh.is_watertight)
        if not closed and not self.allow_open:
            raise ValueError(f"mesh {str(path)!r} is not closed (not watertight), so it has no inside to fill; "
                             f"MeshFolder(..., allow_open=True) voxelises only its surface shell instead")
        mesh = trimesh.Trimesh(_normalise(np.asarray(mesh.vertices, np.float64), self.resolution), mesh.faces, process=False)
        if closed:
            mesh.fix_normals()  # consistent, outward winding: outward normals for the samples
            occupancy = _solid_voxels(np.asarray(mesh.triangles, np.float64), self.resolution)
        else:
            occupancy = _shell_voxels(np.asarray(mesh.vertices), np.asarray(mesh.faces), self.resolution)
        points, face_index = trimesh.sample.sample_surface(mesh, self.num_points, seed=0)
        normals = np.asarray(mesh.face_normals)[face_index]
        return (torch.from_numpy(occupancy).float(), torch.from_numpy(np.asarray(points)).float(),
                torch.from_numpy(normals).float())
