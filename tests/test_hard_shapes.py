"""The hard test shapes (benchmarks/hard_shapes.py): exact solids, hand-computed volumes, files that keep colours."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from lift3d.reconstruct.render_views import load_mesh
from nerf.mesh_render import MeshRenderConfig, render_mesh, spread_cameras
from nerf.shape_report import shape_report, sharp_edges

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("hard_shapes", ROOT / "benchmarks" / "hard_shapes.py")
hard_shapes = importlib.util.module_from_spec(spec)
sys.modules.setdefault("hard_shapes", hard_shapes)
spec.loader.exec_module(hard_shapes)

# Hand-computed from the dimensions in the module docstring.
VOLUMES = {
    "cube": 1.0,
    "box321": 1.2 * 0.8 * 0.4,
    # body + top + 4 feet − 2 recessed panels
    "cabinet": 0.6 * 0.44 * 0.8 + 0.66 * 0.48 * 0.04 + 4 * 0.05 * 0.05 * 0.06 - 2 * 0.255 * 0.015 * 0.72,
    "table": 1.0 * 0.6 * 0.04 + 4 * 0.03 * 0.03 * 0.71,
    "open_box": 1.0 * 0.8 * 0.6 - 0.96 * 0.76 * 0.58,
}
EXTENTS = {"cube": (1, 1, 1), "box321": (1.2, 0.8, 0.4), "cabinet": (0.66, 0.48, 0.9), "table": (1.0, 0.6, 0.75),
           "open_box": (1.0, 0.8, 0.6)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return hard_shapes.write_hard_shapes(tmp_path_factory.mktemp("hard"))


@pytest.mark.parametrize("name", list(VOLUMES))
def test_each_shape_is_a_closed_outward_solid_of_the_stated_size(name):
    shape = hard_shapes.hard_shape(name)
    mesh = shape.mesh
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(VOLUMES[name], rel=1e-9) and shape.volume == pytest.approx(VOLUMES[name])
    np.testing.assert_allclose(mesh.extents, EXTENTS[name], atol=1e-12)
    assert len(shape.face_part) == len(mesh.faces) and set(shape.face_part) == set(range(len(shape.parts)))


def test_thin_parts_are_3_and_2_percent_of_the_length():
    assert hard_shapes.hard_shape("table").thin == pytest.approx(0.03 * 1.0)
    assert hard_shapes.hard_shape("open_box").thin == pytest.approx(0.02 * 1.0)
    # A ray along x at mid-height crosses two legs' sides (y through their centres) and two walls of the box.
    for name, y, expected in (("table", -0.255, [-0.47, -0.44, 0.44, 0.47]),
                              ("open_box", 0.0, [-0.5, -0.48, 0.48, 0.5])):
        mesh = hard_shapes.hard_shape(name).mesh
        hits, _, _ = mesh.ray.intersects_location([[-2.0, y, 0.3]], [[1.0, 0.0, 0.0]], multiple_hits=True)
        np.testing.assert_allclose(np.sort(hits[:, 0]), expected, atol=1e-9)


def test_cabinet_parts_and_sharp_edges():
    shape = hard_shapes.hard_shape("cabinet")
    names = [n for n, _ in shape.parts]
    area = np.bincount(shape.face_part, weights=shape.mesh.area_faces)
    # The panels' faces: two recess floors 0.255 × 0.72 and their walls 0.015 deep.
    assert area[names.index("panels")] == pytest.approx(2 * (0.255 * 0.72 + 0.015 * 2 * (0.255 + 0.72)))
    assert len(sharp_edges(hard_shapes.hard_shape("cube").mesh)) == 12
    assert len(sharp_edges(shape.mesh)) > 100  # boxes, feet, recesses; the coplanar splits are not sharp


def test_files_are_deterministic_y_up_and_keep_one_colour_and_one_normal_per_face(files, tmp_path):
    again = hard_shapes.write_hard_shapes(tmp_path)
    for name, path in files.items():
        assert path.read_bytes() == again[name].read_bytes()
        shape = hard_shapes.hard_shape(name)
        loaded = load_mesh(path)  # what render_views and sds_oracle read
        np.testing.assert_allclose(loaded.extents, np.asarray(EXTENTS[name])[[0, 2, 1]], atol=1e-7)  # Y-up
        colours = np.asarray(loaded.visual.vertex_colors)[loaded.faces, :3]
        assert (colours == colours[:, :1]).all()  # no colour bleeds across a part boundary
        assert {tuple(c) for c in colours[:, 0]} == {rgb for _, rgb in shape.parts}
        normals = np.asarray(loaded.vertex_normals)[loaded.faces]
        np.testing.assert_allclose(normals, np.repeat(loaded.face_normals[:, None], 3, axis=1), atol=1e-9)
        merged = trimesh.Trimesh(loaded.vertices, loaded.faces)
        assert merged.is_watertight and merged.volume == pytest.approx(VOLUMES[name], rel=1e-6)


def test_renders_show_only_part_colours_and_flat_faces(files):
    mesh = load_mesh(files["cabinet"])
    mesh.vertices = mesh.vertices @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]).T  # Y-up file → z-up world
    cams = spread_cameras(2, distance=3.0, fovy_deg=30.0, elevation_range_deg=(20.0, 20.0))
    unlit = render_mesh(mesh, cams.c2w, 30.0, 48, 48, MeshRenderConfig(shading="color", supersample=1))
    hit = unlit[..., 3].numpy() > 0
    seen = {tuple(c) for c in np.round(unlit[..., :3].numpy()[hit] * 255).astype(int)}
    assert seen <= {rgb for _, rgb in hard_shapes.hard_shape("cabinet").parts} and len(seen) >= 2
    lit = render_mesh(mesh, cams.c2w, 30.0, 48, 48, MeshRenderConfig(supersample=1))[..., :3].numpy()[hit]
    assert len(np.unique(np.round(lit, 6), axis=0)) <= 12  # one shade per face direction, no gradients


def test_a_shape_against_itself_scores_perfectly():
    cabinet = hard_shapes.hard_shape("cabinet").mesh
    r = shape_report(cabinet, cabinet, n_samples=5000)
    assert (r.f_score, r.recall_edges, r.recall_flat, r.volume_ratio) == (1.0, 1.0, 1.0, 1.0)
    assert r.chamfer_l1 < 1e-9 and 0.2 < r.edge_area_fraction < 0.6


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="known: cube"):
        hard_shapes.hard_shape("sofa")
