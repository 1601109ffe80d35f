"""Shapes as meshes: occupancy grids to closed triangle meshes, surface points, mesh files and a numpy preview.

Shape tokenizers decode to an occupancy grid ``[R, R, R]`` in [0, 1], indexed (x, y, z) with z up and voxel
centres at ``(i + 0.5) / R * 2 - 1``; everything here works in those [-1, 1] coordinates. numpy, trimesh,
scikit-image and PIL are imported inside the functions, so importing this module (``mmgen --help`` does, for
:data:`MESH_FORMATS`) stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgen.files import write_atomically

if TYPE_CHECKING:
    import numpy as np
    import PIL.Image
    import trimesh

__all__ = ["MESH_FORMATS", "occupancy_to_mesh", "sample_surface_points", "write_mesh", "render_preview"]

MESH_FORMATS = ("ply", "obj", "glb")
OCCUPIED = 0.5  # the iso-level of the surface; a voxel above it is inside
PREVIEW_AZIMUTH, PREVIEW_ELEVATION = 35.0, 25.0  # degrees; the camera looks at the origin from the front right, above
PREVIEW_BACKGROUND = (235, 235, 235)
PREVIEW_COLOUR = (0.55, 0.66, 0.85)  # RGB in [0, 1] of a lit surface, scaled by the shading
PREVIEW_AMBIENT = 0.3


def occupancy_to_mesh(occupancy_RRR: Any) -> trimesh.Trimesh:
    """The surface at occupancy 0.5 of a grid ``[R, R, R]`` (array or CPU tensor), by marching cubes, in [-1, 1].

    The grid is zero-padded by one voxel first, so a shape touching the border is still closed; with Lorensen's
    cases (scikit-image's Lewiner variant leaves holes in binary grids such as octree decodings) the mesh is
    watertight and its normals face outwards (positive volume). A grid with no voxel above 0.5 gives an empty
    Trimesh (no vertices, no faces) rather than an error, since a generator can produce one.
    """
    import numpy as np
    import trimesh
    from skimage.measure import marching_cubes

    grid = np.asarray(occupancy_RRR, dtype=np.float32)
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise ValueError(f"occupancy_RRR must be a cubic grid [R, R, R], got shape {grid.shape}")
    if not np.isfinite(grid).all():
        raise ValueError("occupancy_RRR holds NaN or infinite values; expected probabilities in [0, 1]")
    if not (grid > OCCUPIED).any():
        return trimesh.Trimesh()
    vertices, faces, _, _ = marching_cubes(np.pad(grid, 1), OCCUPIED, method="lorensen", gradient_direction="ascent")
    side = grid.shape[0]
    vertices = (vertices - 1 + 0.5) / side * 2 - 1  # padded index → voxel index → voxel-centre coordinate
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def sample_surface_points(mesh: trimesh.Trimesh, *, count: int = 2048, seed: int = 0) -> np.ndarray:
    """``count`` points drawn uniformly by area on the surface, float32 ``[count, 3]``; the same for the same seed.

    An empty mesh has no surface to draw from and gives ``[0, 3]``.
    """
    import numpy as np
    import trimesh

    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if len(mesh.faces) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float32)


def write_mesh(path: str | Path, mesh: trimesh.Trimesh, *, overwrite: bool = False) -> Path:
    """Write ``mesh`` as PLY, OBJ or GLB (by the suffix of ``path``) through a temporary sibling renamed into place,
    so ``path`` never holds half a mesh; an existing ``path`` is refused unless ``overwrite``. Returns the path."""
    import trimesh

    path = Path(path)
    file_type = path.suffix.lower().removeprefix(".")
    if file_type not in MESH_FORMATS:
        raise ValueError(f"path {str(path)!r}: a mesh is written as one of {MESH_FORMATS} (by the file's suffix)")
    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"path {str(path)!r} exists; pass overwrite=True to replace it")
    write_atomically(path, lambda tmp: mesh.export(tmp, file_type=file_type))  # tmp ends in .tmp: the type is explicit
    return path


def render_preview(shape: Any, *, size: int = 256) -> PIL.Image.Image:
    """A shaded RGB preview ``size`` × ``size`` of one shape (an occupancy grid ``[R, R, R]`` or a mesh in [-1, 1]).

    Rendered in numpy, so it needs no OpenGL: an orthographic camera at azimuth 35°, elevation 25° (z up) frames
    the whole [-1, 1] cube (shapes keep their size from preview to preview); triangles are rasterised with a
    z-buffer and shaded by Lambert's law with interpolated vertex normals (sharp edges where faces meet at more
    than 45°), lit from the camera side, plus an ambient term, on a light-grey background. Deterministic. An empty shape gives the bare background.
    """
    import numpy as np
    import PIL.Image
    import trimesh

    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    mesh = shape if isinstance(shape, trimesh.Trimesh) else occupancy_to_mesh(shape)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = np.asarray(PREVIEW_BACKGROUND, dtype=np.float32) / 255
    if len(mesh.faces):
        azimuth, elevation = np.radians(PREVIEW_AZIMUTH), np.radians(PREVIEW_ELEVATION)
        towards_camera = np.array([np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation),
                                   np.sin(elevation)])
        right = np.cross(-towards_camera, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, -towards_camera)
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        cube_corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        extent = 1.02 * np.abs(cube_corners @ np.stack([right, up], axis=1)).max()  # the [-1, 1] cube fills the view
        columns = (vertices @ right / extent + 1) / 2 * size
        rows = (1 - vertices @ up / extent) / 2 * size
        pixel, face, weights = _rasterise(np.stack([columns, rows], axis=1), vertices @ towards_camera,
                                          np.asarray(mesh.faces), size=size)
        normals = np.einsum("pk,pkd->pd", weights, _corner_normals(mesh)[face])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        light = towards_camera + 0.4 * up - 0.3 * right  # from the camera side, a little above and to the left
        lambert = np.clip(normals @ (light / np.linalg.norm(light)), 0, 1)
        shade = PREVIEW_AMBIENT + (1 - PREVIEW_AMBIENT) * lambert
        image.reshape(-1, 3)[pixel] = shade[:, None] * np.asarray(PREVIEW_COLOUR, dtype=np.float32)
    return PIL.Image.fromarray((image * 255).round().astype(np.uint8))  # [H, W, 3] uint8: RGB


def _corner_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per face corner ``[F, 3, 3]`` the vertex normal, or the face normal where they differ by more than 45°: smooth
    shading over the small steps of marching cubes, sharp edges on a box."""
    import numpy as np

    corner = np.asarray(mesh.vertex_normals)[np.asarray(mesh.faces)]
    face = np.asarray(mesh.face_normals)[:, None, :]
    smooth = (corner * face).sum(axis=-1, keepdims=True) >= np.cos(np.radians(45))
    return np.where(smooth, corner, face)


def _rasterise(points_V2: np.ndarray, depth_V: np.ndarray, faces_F3: np.ndarray, *,
               size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every covered pixel (its centre inside a triangle) the nearest triangle: flat pixel indices, face indices
    and barycentric weights ``[P, 3]``.

    Vectorised over triangles: each is tested against the pixels of a square around it, in batches of triangles
    whose squares have the same side (marching cubes gives thousands of small ones, a box mesh a few big ones),
    and the z-buffer is a sort by (pixel, -depth).
    """
    import numpy as np

    corners = points_V2[faces_F3]  # [F, 3, 2] in pixels, (column, row); pixel j covers [j, j + 1)
    low = np.clip(np.floor(corners.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # first candidate pixel
    high = np.clip(np.ceil(corners.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # last candidate pixel
    sides = (high - low + 1).max(axis=1)
    found: list[tuple[np.ndarray, ...]] = []
    for side in np.unique(sides):
        members = np.flatnonzero(sides == side)
        per_batch = max(1, (1 << 21) // int(side) ** 2)  # candidate (triangle, pixel) pairs per batch: ~2M
        for first in range(0, len(members), per_batch):
            chunk = members[first:first + per_batch]
            dx, dy = (offset.ravel() for offset in np.meshgrid(np.arange(side), np.arange(side)))
            column, row = low[chunk, 0, None] + dx, low[chunk, 1, None] + dy  # [T, side²]
            weights = _barycentric(corners[chunk], column + 0.5, row + 0.5)  # [T, side², 3]
            inside = (weights >= 0).all(axis=-1) & (column <= high[chunk, 0, None]) & (row <= high[chunk, 1, None])
            t, k = np.nonzero(inside)
            depth = (weights[t, k] * depth_V[faces_F3[chunk[t]]]).sum(axis=1)
            found.append((row[t, k] * size + column[t, k], chunk[t], weights[t, k], depth))
    pixel, face, weights, depth = (np.concatenate(parts) for parts in zip(*found))
    nearest = np.lexsort((-depth, pixel))  # by pixel, then the nearest (largest depth towards the camera) first
    pixel, face, weights = pixel[nearest], face[nearest], weights[nearest]
    first_of_pixel = np.ones(len(pixel), dtype=bool)
    first_of_pixel[1:] = pixel[1:] != pixel[:-1]
    return pixel[first_of_pixel], face[first_of_pixel], weights[first_of_pixel]


def _barycentric(corners_T32: np.ndarray, x_TK: np.ndarray, y_TK: np.ndarray) -> np.ndarray:
    """Barycentric weights ``[T, K, 3]`` of points (x, y) in triangles ``[T, 3, 2]``, whatever their winding; all
    three are >= 0 exactly inside. A degenerate triangle gives -inf / NaN weights: it covers nothing."""
    import numpy as np

    (ax, ay), (bx, by), (cx, cy) = (corners_T32[:, k, :, None].transpose(1, 0, 2) for k in range(3))  # each [T, 1]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    with np.errstate(divide="ignore", invalid="ignore"):
        wa = ((cx - bx) * (y_TK - by) - (cy - by) * (x_TK - bx)) / area
        wb = ((ax - cx) * (y_TK - cy) - (ay - cy) * (x_TK - cx)) / area
    return np.stack([wa, wb, 1 - wa - wb], axis=-1)
