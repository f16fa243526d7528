"""Write meshes as binary glTF (GLB).

glTF 2.0 is Y-up with metres as the unit (Khronos glTF 2.0 specification, "Coordinate System and Units"); the
project's world is z-up (``nerf/cameras.py``), so by default points are rotated by +90° about x:
``(x, y, z) → (x, z, −y)``. That is a proper rotation (determinant +1), so face winding and outward normals are
kept. Scale is unchanged (scene units are metres).

Examples:
    >>> mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    >>> path = export_glb(mesh, "/tmp/sphere.glb")
    >>> path.suffix
    '.glb'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from nerf.io import write_atomic

__all__ = ["Z_UP_TO_Y_UP", "export_glb"]

#: Rotation taking z-up world coordinates to glTF's y-up: (x, y, z) → (x, z, −y). Read-only.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
Z_UP_TO_Y_UP.setflags(write=False)


def export_glb(mesh: trimesh.Trimesh, path: str | Path, *, z_up_to_y_up: bool = True, recenter: bool = True) -> Path:
    """Write ``mesh`` to ``path`` as GLB with vertex normals and, if present, vertex colours (``COLOR_0``).

    The input mesh is not modified. The file is written to a temporary file in the same directory and renamed
    into place, so readers never see a partial file. Missing parent directories are created.

    Args:
        mesh: triangle mesh in world coordinates (z-up, metres); vertex colours, if any, as uint8 RGBA.
        path: destination file, conventionally ending in ``.glb``.
        z_up_to_y_up: rotate (x, y, z) → (x, z, −y) for glTF's y-up convention.
        recenter: translate so the axis-aligned bounding-box centre is at the origin (after rotating). Keep
            False when the asset must stay registered to the input cameras.

    Returns:
        The absolute ``Path`` written.

    Raises:
        ValueError: the mesh has no faces.
        OSError: the file cannot be written.
    """
    if len(mesh.faces) == 0:
        raise ValueError("export_glb: the mesh has no faces")
    out = mesh.copy()
    if z_up_to_y_up:
        transform = np.eye(4)
        transform[:3, :3] = Z_UP_TO_Y_UP
        out.apply_transform(transform)
    if recenter:
        out.apply_translation(-out.bounds.mean(axis=0))
    data = out.export(file_type="glb", include_normals=True)

    return write_atomic(Path(path).expanduser().resolve(), data)
