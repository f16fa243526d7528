"""A mesh file → RGBA views on a sphere + ``transforms.json``: the function behind ``lift3d render-views``.

Writes ``images/NNN.png``, ``transforms.json`` and ``reference.glb`` (the mesh in the world frame of the views,
written the way ``reconstruct`` writes ``model.glb``) into a directory, each file atomically — test and benchmark
data for :func:`lift3d.reconstruct.reconstruct`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from PIL import Image

from lift3d.errors import InvalidInputError
from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.storage import LocalStore
from nerf.datasets.blender import write_transforms
from nerf.export import Z_UP_TO_Y_UP
from nerf.mesh_render import MeshRenderConfig, render_mesh, spread_cameras

__all__ = ["RenderViewsOptions", "load_mesh", "render_views", "to_world"]


@dataclass
class RenderViewsOptions:
    """User options of :func:`render_views`."""

    num_views: int = 32
    """Number of views (1–1000)."""
    resolution: int = 128
    """Square image side in pixels (16–2048)."""
    layout: Literal["even", "random"] = "even"
    """Cameras on a Fibonacci lattice of the elevation band ("even") or area-uniform random ("random")."""
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0)
    """Elevation band in degrees."""
    fovy_deg: float = 40.0
    """Vertical field of view in degrees (0–120)."""
    distance: float | None = None
    """Camera distance from the origin; None: the bounding sphere fills the view with a 5 % margin."""
    shading: Literal["lambert", "color"] = "lambert"
    """"lambert" (grey, fixed world lights) or "color" (unlit vertex/texture/material colour)."""
    normalize: bool = True
    """Centre the mesh's bounding box at the origin and scale its diagonal to 1 before rendering."""
    y_up: bool = True
    """The mesh file is Y-up (OBJ, glTF convention): rotate (x, y, z) → (x, −z, y) into the z-up world."""
    seed: int = 0
    """For the "random" layout."""
    supersample: int = 2
    """Anti-aliasing rays per pixel along each axis (1–4)."""

    def check(self) -> None:
        """Raise :class:`InvalidInputError` naming the first out-of-range option."""
        if not 1 <= self.num_views <= 1000:
            raise InvalidInputError(f"num views must be in 1..1000, got {self.num_views}")
        if not 16 <= self.resolution <= 2048:
            raise InvalidInputError(f"resolution must be in 16..2048, got {self.resolution}")
        if self.layout not in ("even", "random"):
            raise InvalidInputError(f"layout must be 'even' or 'random', got {self.layout!r}")
        if self.shading not in ("lambert", "color"):
            raise InvalidInputError(f"shading must be 'lambert' or 'color', got {self.shading!r}")
        low, high = self.elevation_range_deg
        if not -89.0 <= low <= high <= 89.0:
            raise InvalidInputError(f"elevation range must satisfy -89 <= low <= high <= 89, got {low}, {high}")
        if not 0.0 < self.fovy_deg < 120.0:
            raise InvalidInputError(f"fovy must be in (0, 120) degrees, got {self.fovy_deg}")
        if self.distance is not None and not self.distance > 0:
            raise InvalidInputError(f"distance must be > 0, got {self.distance}")
        if not 1 <= self.supersample <= 4:
            raise InvalidInputError(f"supersample must be in 1..4, got {self.supersample}")


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a mesh file (OBJ, PLY, STL, GLB, ...) as one triangle mesh.

    Raises:
        InvalidInputError: the file is missing, unreadable or has no triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"mesh file not found: {path}")
    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as exc:  # trimesh raises many types for malformed files
        raise InvalidInputError(f"cannot read mesh {path}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InvalidInputError(f"mesh {path} has no triangles")
    return mesh


def render_views(mesh_path: str | Path, out_dir: str | Path, options: RenderViewsOptions | None = None
                 ) -> dict[str, Path]:
    """Render RGBA views of a mesh and write ``transforms.json``, ``images/NNN.png`` and ``reference.glb``.

    Args:
        mesh_path: the mesh file.
        out_dir: output directory (created if missing).
        options: see :class:`RenderViewsOptions`.

    Returns:
        name → path of the files written (``transforms.json``, ``reference.glb``, ``images/000.png``, ...).

    Raises:
        InvalidInputError: bad options or an unreadable mesh.
    """
    # 1. check inputs
    options = options or RenderViewsOptions()
    options.check()
    mesh = load_mesh(mesh_path)
    out = Path(out_dir).resolve()
    writer = ArtifactWriter(LocalStore(out))

    # 2. the mesh in the z-up world of the views
    mesh = to_world(mesh, y_up=options.y_up, normalize=options.normalize)
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    distance = options.distance or 1.05 * radius / math.sin(math.radians(0.5 * options.fovy_deg))

    # 3. cameras and images
    cameras = spread_cameras(options.num_views, distance, options.fovy_deg, options.elevation_range_deg,
                             options.layout, options.seed)
    config = MeshRenderConfig(shading=options.shading, supersample=options.supersample)
    names = []
    for start in range(0, len(cameras), 8):  # bounded memory at large resolutions
        rgba = render_mesh(mesh, cameras.c2w[start : start + 8], options.fovy_deg, options.resolution,
                           options.resolution, config)
        for i, image in enumerate(rgba):
            name = f"images/{start + i:03d}.png"
            pixels = (image.numpy() * 255.0).round().astype(np.uint8)
            writer.png(name, Image.fromarray(pixels, mode="RGBA"))
            names.append(name)

    # 4. transforms.json and the reference mesh
    write_transforms(out / "transforms.json", math.radians(options.fovy_deg), names, cameras.c2w, extra={
        "lift3d": {"source_mesh": str(Path(mesh_path).resolve()), "camera_distance": distance,
                   "elevation_deg": cameras.elevation_deg.tolist(), "azimuth_deg": cameras.azimuth_deg.tolist(),
                   **asdict(options)},
    })
    writer.model(mesh, recenter=False, name="reference.glb")
    return {**{key: out / key for key in writer.keys}, "transforms.json": out / "transforms.json"}


def to_world(mesh: trimesh.Trimesh, *, y_up: bool, normalize: bool) -> trimesh.Trimesh:
    """A copy of ``mesh`` in the z-up world: rotated from Y-up if asked, then optionally unit-diagonal centred.

    The Y-up → z-up rotation is the inverse of :data:`nerf.export.Z_UP_TO_Y_UP`, so exporting the result to GLB
    gives back the file's orientation.
    """
    mesh = mesh.copy()
    if y_up:
        transform = np.eye(4)
        transform[:3, :3] = Z_UP_TO_Y_UP.T
        mesh.apply_transform(transform)
    if normalize:
        lo, hi = mesh.bounds
        mesh.apply_translation(-0.5 * (lo + hi))
        mesh.apply_scale(1.0 / float(np.linalg.norm(hi - lo)))
    return mesh
