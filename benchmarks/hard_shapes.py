"""Procedural hard test shapes (issue 22): flat faces of one colour, sharp edges, thin legs and walls.

Every shape is a union of axis-aligned boxes with boxes cut out of it, applied in order, and meshed *exactly* on
the grid of all the boxes' coordinates (:func:`box_solid`): a closed, consistently outward-wound 2-manifold
(watertight, volume exact), flat faces split only along other boxes' planes (no T-junctions), sharp 90° edges.
Each face carries the colour of its part; a face exposed by a cut takes the cut's part (a recessed panel, the
inside of a box).

Dimensions, z-up (x width, y depth, z height; arbitrary units — both benchmarks scale the mesh to a unit
bounding-box diagonal):

============ ==================== =====================================================================
name         extents x × y × z    parts
============ ==================== =====================================================================
``cube``     1 × 1 × 1            ``cube``
``box321``   1.2 × 0.8 × 0.4      ``box`` (3:2:1, lying on its largest face)
``cabinet``  0.66 × 0.48 × 0.90   ``body`` 0.60 × 0.44 × 0.80 on ``feet`` (4 × 0.05² × 0.06, inset 0.02); ``top``
                                  slab 0.04 thick overhanging 0.03 at front and sides, 0.01 at the back; two
                                  front ``panels`` 0.255 × 0.72 recessed 0.015
``table``    1.0 × 0.6 × 0.75     ``top`` 0.04 thick; 4 ``legs`` 0.03 × 0.03 (3 % of the length), inset 0.03
``open_box`` 1.0 × 0.8 × 0.6      ``box`` with walls and floor 0.02 thick (2 % of the length), open at the
                                  top; ``inside`` (the cut's faces)
============ ==================== =====================================================================

Files (:func:`write_hard_shapes`): ``NAME.obj`` in the Y-up convention of OBJ and glTF ((x, y, z) → (x, z, −y),
``nerf.export.Z_UP_TO_Y_UP``), which is what ``render_views`` and ``sds_oracle.py`` expect by default. Each
flat quad has its own four vertices with the quad's normal (``vn``) and the part's colour (``v x y z r g b``):
trimesh's loader merges vertices only where position *and* normal agree, so colours stay uniform per part
(no two parts meet in a common plane, checked in the tests) and ``nerf.mesh_render``'s Lambert mode, which
interpolates vertex normals, shades every flat face flat. Geometry checks (watertightness, volume) need the
vertices merged by position (``nerf.shape_report`` does it).

Usage::

    .venv/bin/python benchmarks/hard_shapes.py --out /tmp/hard_shapes    # prints one path per line
    .venv/bin/python benchmarks/sds_oracle.py --mesh $(.venv/bin/python benchmarks/hard_shapes.py --out /tmp/h)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nerf.export import Z_UP_TO_Y_UP  # noqa: E402

__all__ = ["HARD_SHAPES", "BoxOp", "HardShape", "box_solid", "hard_shape", "write_hard_shapes"]

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class BoxOp:
    """One step of a box solid: add the box ``[lo, hi]`` as part ``part``, or cut it out (``cut=True``)."""

    lo: Vec3
    hi: Vec3
    part: int
    cut: bool = False


@dataclass
class HardShape:
    """A generated shape in the z-up world.

    Attributes:
        name: file stem.
        mesh: watertight triangle mesh, vertices merged by position, face colours of the parts.
        face_part: int array with shape (n_faces,), index into ``parts`` of every face.
        parts: (name, RGB 0–255) per part.
        volume: exact volume (sum of the occupied grid cells).
        thin: the thinnest feature's size in the shape's units (leg side, wall), or None.
    """

    name: str
    mesh: trimesh.Trimesh
    face_part: np.ndarray
    parts: tuple[tuple[str, tuple[int, int, int]], ...]
    volume: float
    thin: float | None = None
    quads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # corners (Q, 4, 3), normals (Q, 3), part (Q,)


def box_solid(ops: list[BoxOp]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mesh the solid made by ``ops`` (applied in order) exactly on the grid of all box coordinates.

    A grid cell is inside when the last op whose box contains its centre adds it. Every cell face between an
    inside and an outside cell becomes a quad facing out of the inside cell, coloured by the inside cell's part,
    or by the cut that emptied the outside cell.

    Returns:
        corners: array (Q, 4, 3), counter-clockwise seen from outside; normals: (Q, 3) unit axis vectors;
        part: int array (Q,); volume: float.

    Raises:
        ValueError: an op's box is empty (lo >= hi on an axis).
    """
    for op in ops:
        if not all(a < b for a, b in zip(op.lo, op.hi)):
            raise ValueError(f"box_solid: empty box {op.lo}..{op.hi}")
    coords = [np.unique(np.concatenate([[op.lo[a], op.hi[a]] for op in ops])) for a in range(3)]
    centres = np.meshgrid(*[0.5 * (c[1:] + c[:-1]) for c in coords], indexing="ij")
    label = np.full(centres[0].shape, -1)
    cut_by = np.full(centres[0].shape, -1)
    for op in ops:
        inside = np.ones(label.shape, dtype=bool)
        for a in range(3):
            inside &= (centres[a] > op.lo[a]) & (centres[a] < op.hi[a])
        if op.cut:
            cut_by[inside & (label >= 0)] = op.part
            label[inside] = -1
        else:
            label[inside] = op.part
            cut_by[inside] = -1
    sizes = [np.diff(c) for c in coords]
    volume = float((label >= 0).astype(float).ravel() @ np.einsum("i,j,k->ijk", *sizes).ravel())

    padded_label = np.pad(label, 1, constant_values=-1)
    padded_cut = np.pad(cut_by, 1, constant_values=-1)
    corners, normals, parts = [], [], []
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3
        lower = [slice(1, -1)] * 3
        upper = [slice(1, -1)] * 3
        lower[a], upper[a] = slice(None, -1), slice(1, None)
        la, lb = padded_label[tuple(lower)], padded_label[tuple(upper)]
        ca, cb = padded_cut[tuple(lower)], padded_cut[tuple(upper)]
        for outward, inner, inner_cut in ((1.0, la, cb), (-1.0, lb, ca)):
            faces = (inner >= 0) & (((la >= 0) != (lb >= 0)))
            idx = np.argwhere(faces)  # (Q, 3): plane index along a, cell index along the others
            q = len(idx)
            lo_b, hi_b = coords[b][idx[:, b]], coords[b][idx[:, b] + 1]
            lo_c, hi_c = coords[c][idx[:, c]], coords[c][idx[:, c] + 1]
            quad = np.zeros((q, 4, 3))
            quad[:, :, a] = coords[a][idx[:, a]][:, None]
            quad[:, :, b] = np.stack([lo_b, hi_b, hi_b, lo_b], axis=1)
            quad[:, :, c] = np.stack([lo_c, lo_c, hi_c, hi_c], axis=1)
            if outward < 0:
                quad = quad[:, ::-1]
            normal = np.zeros((q, 3))
            normal[:, a] = outward
            cut = inner_cut[faces]
            corners.append(quad)
            normals.append(normal)
            parts.append(np.where(cut >= 0, cut, inner[faces]))
    return np.concatenate(corners), np.concatenate(normals), np.concatenate(parts), volume


def _cube() -> tuple[list[BoxOp], list, float | None]:
    return [BoxOp((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), 0)], [("cube", (200, 70, 60))], None


def _box321() -> tuple[list[BoxOp], list, float | None]:
    return [BoxOp((-0.6, -0.4, 0.0), (0.6, 0.4, 0.4), 0)], [("box", (70, 100, 170))], None


def _cabinet() -> tuple[list[BoxOp], list, float | None]:
    ops = [BoxOp((-0.30, -0.22, 0.06), (0.30, 0.22, 0.86), 0),  # body
           BoxOp((-0.33, -0.25, 0.86), (0.33, 0.23, 0.90), 1)]  # top: overhang 0.03 front/sides, 0.01 back
    for x in (-0.28, 0.23):  # feet, 0.05 square, inset 0.02 from the body's corners
        for y in (-0.20, 0.15):
            ops.append(BoxOp((x, y, 0.0), (x + 0.05, y + 0.05, 0.06), 2))
    for x0, x1 in ((-0.27, -0.015), (0.015, 0.27)):  # two doors, recessed 0.015 into the front (y = -0.22)
        ops.append(BoxOp((x0, -0.23, 0.10), (x1, -0.205, 0.82), 3, cut=True))
    parts = [("body", (150, 110, 70)), ("top", (110, 80, 50)), ("feet", (40, 40, 40)), ("panels", (175, 135, 90))]
    return ops, parts, 0.015


def _table() -> tuple[list[BoxOp], list, float | None]:
    ops = [BoxOp((-0.5, -0.3, 0.71), (0.5, 0.3, 0.75), 0)]
    for x in (-0.47, 0.44):
        for y in (-0.27, 0.24):
            ops.append(BoxOp((x, y, 0.0), (x + 0.03, y + 0.03, 0.71), 1))
    return ops, [("top", (160, 120, 80)), ("legs", (60, 60, 60))], 0.03


def _open_box() -> tuple[list[BoxOp], list, float | None]:
    ops = [BoxOp((-0.5, -0.4, 0.0), (0.5, 0.4, 0.6), 0), BoxOp((-0.48, -0.38, 0.02), (0.48, 0.38, 0.6), 1, cut=True)]
    return ops, [("box", (190, 160, 110)), ("inside", (150, 120, 80))], 0.02


HARD_SHAPES: dict[str, Callable[[], tuple[list[BoxOp], list, float | None]]] = {
    "cube": _cube, "box321": _box321, "cabinet": _cabinet, "table": _table, "open_box": _open_box,
}
"""Name → recipe (ops, parts, thinnest feature). Deterministic: no randomness anywhere."""


def hard_shape(name: str) -> HardShape:
    """Build the shape ``name`` (a key of :data:`HARD_SHAPES`) in the z-up world.

    Raises:
        ValueError: unknown name.
    """
    if name not in HARD_SHAPES:
        raise ValueError(f"hard_shape: unknown shape {name!r}; known: {', '.join(HARD_SHAPES)}")
    ops, parts, thin = HARD_SHAPES[name]()
    corners, normals, part, volume = box_solid(ops)
    triangles = np.concatenate([corners[:, [0, 1, 2]], corners[:, [0, 2, 3]]])  # (2Q, 3, 3)
    face_part = np.concatenate([part, part])
    colours = np.array([rgb + (255,) for _, rgb in parts], dtype=np.uint8)[face_part]
    mesh = trimesh.Trimesh(triangles.reshape(-1, 3), np.arange(3 * len(triangles)).reshape(-1, 3),
                           face_colors=colours, process=False)
    mesh.merge_vertices()
    return HardShape(name, mesh, face_part, tuple(parts), volume, thin, (corners, normals, part))


def obj_mesh(shape: HardShape) -> trimesh.Trimesh:
    """The file's mesh: Y-up, four vertices per quad with its normal and its part's colour (see the module doc)."""
    corners, normals, part = shape.quads
    rotation = np.asarray(Z_UP_TO_Y_UP)
    vertices = corners.reshape(-1, 3) @ rotation.T
    vertex_normals = np.repeat(normals @ rotation.T, 4, axis=0)
    rgb = np.array([c for _, c in shape.parts], dtype=np.uint8)[np.repeat(part, 4)]
    base = 4 * np.arange(len(corners))[:, None]
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
    return trimesh.Trimesh(vertices, faces, vertex_normals=vertex_normals,
                           vertex_colors=np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)]), process=False)


def write_hard_shapes(directory: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write ``NAME.obj`` (Y-up, per-part colours, flat normals) for each name (default: all) into ``directory``.

    Byte-identical on every call; an existing file with the same bytes is left alone.

    Returns:
        name → path.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names or list(HARD_SHAPES):
        data = obj_mesh(hard_shape(name)).export(file_type="obj", include_normals=True, include_color=True)
        data = data.encode() if isinstance(data, str) else data
        path = out / f"{name}.obj"
        if not path.is_file() or path.read_bytes() != data:
            tmp = path.with_suffix(".obj.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for NAME.obj")
    parser.add_argument("--names", nargs="+", default=list(HARD_SHAPES), choices=list(HARD_SHAPES))
    args = parser.parse_args()
    for name, path in write_hard_shapes(args.out, args.names).items():
        shape = hard_shape(name)
        extents = shape.mesh.extents
        diag = float(np.linalg.norm(extents))
        thin = f", thinnest {shape.thin:g} ({100 * shape.thin / diag:.1f} % of the diagonal)" if shape.thin else ""
        print(f"{name}: extents {' × '.join(f'{e:g}' for e in extents)}, volume {shape.volume:.5f}, "
              f"{len(shape.mesh.faces)} faces{thin}", file=sys.stderr)
        print(path)


if __name__ == "__main__":
    main()
