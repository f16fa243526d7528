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

__all__ = ["Z_UP_TO_Y_UP", "export_glb", "glb_bytes"]

#: Rotation taking z-up world coordinates to glTF's y-up: (x, y, z) → (x, z, −y). Read-only.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
Z_UP_TO_Y_UP.setflags(write=False)


def glb_bytes(mesh: trimesh.Trimesh, *, z_up_to_y_up: bool = True, recenter: bool = True) -> bytes:
    """``mesh`` as binary glTF (GLB) bytes with vertex normals and, if present, vertex colours (``COLOR_0``) or
    its texture material. The input mesh is not modified.

    Args:
        mesh: triangle mesh in world coordinates (z-up, metres); vertex colours, if any, as uint8 RGBA.
        z_up_to_y_up: rotate (x, y, z) → (x, z, −y) for glTF's y-up convention.
        recenter: translate so the axis-aligned bounding-box centre is at the origin (after rotating). Keep
            False when the asset must stay registered to the input cameras.

    Raises:
        ValueError: the mesh has no faces.
    """
    if len(mesh.faces) == 0:
        raise ValueError("glb_bytes: the mesh has no faces")
    out = mesh.copy()
    if z_up_to_y_up:
        transform = np.eye(4)
        transform[:3, :3] = Z_UP_TO_Y_UP
        out.apply_transform(transform)
    if recenter:
        out.apply_translation(-out.bounds.mean(axis=0))
    return out.export(file_type="glb", include_normals=True)


def export_glb(mesh: trimesh.Trimesh, path: str | Path, *, z_up_to_y_up: bool = True, recenter: bool = True) -> Path:
    """Write :func:`glb_bytes` of ``mesh`` to ``path`` atomically (temporary sibling, then rename), so readers
    never see a partial file; missing parent directories are created.

    Returns:
        The absolute ``Path`` written.

    Raises:
        ValueError: the mesh has no faces. OSError: the file cannot be written.
    """
    data = glb_bytes(mesh, z_up_to_y_up=z_up_to_y_up, recenter=recenter)
    return write_atomic(Path(path).expanduser().resolve(), data)
