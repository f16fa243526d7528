"""ShapeReport (nerf/shape_report.py) against hand-computed values: offsets, volume, edge/flat recall, floaters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from nerf.metrics import MeshDistances, _sample_surface, mesh_distances
from nerf.shape_report import (
    _signed_distance, floater_area_fraction, format_reports, segment_distance, shape_report, sharp_edges,
)

N = 20_000
HALF = 0.5 / math.sqrt(3.0)  # half side of a cube normalised to a unit diagonal


def cube(side: float = 1.0, centre=(0.0, 0.0, 0.0)) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=(side, side, side))
    mesh.apply_translation(centre)
    return mesh


def test_precision_and_recall_are_the_f_scores_halves():
    d = MeshDistances(pred_to_ref=np.array([0.0, 0.005, 0.02, 0.03]), ref_to_pred=np.array([0.0, 0.001, 0.009, 0.5]))
    assert (d.precision(0.01), d.recall(0.01)) == (0.5, 0.75)
    assert d.f_score(0.01) == pytest.approx(2 * 0.5 * 0.75 / 1.25)


@pytest.mark.parametrize("scale", [1.02, 0.98])
def test_a_scaled_cube_is_offset_by_the_gap_along_the_normal(scale):
    r = shape_report(cube(scale), cube(), n_samples=N)
    # Outside the ~4 % of the area next to the edges, every sample of the scaled cube lies (scale − 1) · half side
    # straight off a face of the unit one: 1 % of the half side is 0.577 % of the diagonal.
    gap = (scale - 1.0) * HALF
    assert [r.offset_p10, r.offset_p50, r.offset_p90] == pytest.approx([gap] * 3, rel=1e-6)
    assert r.volume_ratio == pytest.approx(scale**3, rel=1e-9) and r.volume_note == ""  # 1.061208 / 0.941192
    assert (r.precision, r.recall, r.f_score) == (1.0, 1.0, 1.0)  # the corners are exactly 1 % away at 1.02
    assert r.floater_area_fraction == 0.0 and r.ref_floater_area_fraction == 0.0


def test_report_agrees_with_mesh_distances_for_the_same_seed():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    r = shape_report(cube(0.9), sphere, n_samples=N, seed=3)
    d = mesh_distances(cube(0.9), sphere, n_samples=N, seed=3)
    assert r.chamfer_l1 == pytest.approx(d.chamfer_l1, rel=1e-9)
    assert (r.f_score, r.precision, r.recall) == pytest.approx((d.f_score(0.01), d.precision(0.01), d.recall(0.01)))
    # The sphere has no sharp edge: everything is "flat".
    assert r.recall_edges is None and r.edge_area_fraction == 0.0 and r.recall_flat == r.recall


def test_a_separate_small_cube_is_a_floater_and_costs_precision_not_recall():
    pred = trimesh.util.concatenate([cube(), cube(0.5, centre=(2.0, 0.0, 0.0))])  # areas 6 and 1.5
    r = shape_report(pred, cube(), n_samples=N)
    assert r.floater_area_fraction == pytest.approx(1.5 / 7.5)
    assert r.precision == pytest.approx(0.8, abs=0.01) and r.recall == 1.0
    assert r.volume_ratio == pytest.approx(1.125)
    assert r.offset_p50 == pytest.approx(0.0, abs=1e-9)
    assert r.offset_p90 >= 1.25 / math.sqrt(3.0)  # the small cube's nearest face is 1.25 off the unit one, outside

    swapped = shape_report(cube(), pred, n_samples=N)  # the prediction misses a part of the reference
    assert swapped.precision == 1.0 and swapped.recall == pytest.approx(0.8, abs=0.01)
    assert swapped.floater_area_fraction == 0.0 and swapped.ref_floater_area_fraction == pytest.approx(0.2)
    assert swapped.volume_ratio == pytest.approx(1.0 / 1.125)


def test_faces_inset_from_the_edges_are_recalled_on_flat_faces_and_not_near_edges():
    # The prediction: each face of the unit cube shrunk to a square inset by m = band + τ from its edges (open
    # sheets). A reference sample within the band of an edge is >= τ from it; one beyond the band is within τ,
    # except in the corner squares (band, m)² outside the quarter discs of radius τ around (m, m).
    band, tau = 0.02, 0.01
    side = 1.0 / math.sqrt(3.0)
    m = (band + tau) * math.sqrt(3.0)  # in the cube's own units
    squares = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            extents = [1.0 - 2 * m] * 3
            extents[axis] = 1e-9
            plate = trimesh.creation.box(extents=extents)
            keep = plate.face_normals[:, axis] * sign > 0.5  # the plate's outer face only: one square sheet
            sheet = trimesh.Trimesh(plate.vertices, plate.faces[keep])
            sheet.apply_translation(np.eye(3)[axis] * sign * (0.5 - 5e-10))
            squares.append(sheet)
    pred = trimesh.util.concatenate(squares)
    r = shape_report(pred, cube(), n_samples=N, threshold=tau, edge_band=band)
    flat_area = (side - 2 * band) ** 2
    assert r.recall_edges == 0.0
    assert r.recall_flat == pytest.approx(1.0 - 4 * tau**2 * (1 - math.pi / 4) / flat_area, abs=5e-4)  # 0.99970
    assert r.edge_area_fraction == pytest.approx(1.0 - flat_area / side**2, abs=0.01)  # 0.134
    assert r.precision == 1.0 and abs(r.offset_p10) < 1e-6 and abs(r.offset_p90) < 1e-6
    assert r.volume_ratio is None and r.volume_note == "pred is not watertight (24 open edges)"


def test_sharp_edges_of_a_cube_are_its_twelve_edges_not_the_face_diagonals():
    segments = sharp_edges(cube())
    assert len(segments) == 12
    np.testing.assert_allclose(np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1), 1.0)
    assert len(sharp_edges(trimesh.creation.icosphere(subdivisions=3))) == 0
    assert len(sharp_edges(cube(), angle_deg=95.0)) == 0


def test_segment_distance_is_exact_to_the_nearest_segment():
    segments = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]])
    points = np.array([[0.5, 0.3, 0.0], [2.0, 0.0, 0.0], [0.0, 0.8, 0.5], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(segment_distance(points, segments, spacing=0.05),
                               [0.3, 1.0, 0.2, 0.5], atol=1e-12)
    assert np.isinf(segment_distance(points, segments[:0], spacing=0.05)).all()


def test_signed_distance_off_convex_and_concave_edges_and_corners():
    # An L-shaped solid: [0, 2] × [0, 1] × [0, 1] ∪ [0, 1] × [0, 2] × [0, 1], concave edge along z at (1, 1).
    a, b = trimesh.creation.box(bounds=[[0, 0, 0], [2, 1, 1]]), trimesh.creation.box(bounds=[[0, 1, 0], [1, 2, 1]])
    verts = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [1, 1, 0], [1, 2, 0], [0, 2, 0]], dtype=float)
    l_shape = trimesh.creation.extrude_triangulation(verts[:, :2], [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 5]], 1.0)
    l_shape.merge_vertices()
    assert l_shape.is_watertight and l_shape.volume == pytest.approx(a.volume + b.volume)
    points = np.array([
        [2.1, 1.1, 0.5],  # off the convex edge at (2, 1): outside
        [2.1, 1.1, 1.1],  # off the corner (2, 1, 1): outside
        [1.1, 1.1, 0.5],  # in the notch by the concave edge: outside, equally near two faces
        [0.9, 0.9, 0.5],  # inside, nearest to the concave edge
        [0.5, 0.5, 0.5],  # inside, nearest to the faces z = 0, z = 1, x = 0, y = 0
    ])
    v = np.asarray(l_shape.vertices, dtype=float)
    samples, fid = _sample_surface(v[l_shape.faces], 2000, np.random.default_rng(0))
    signed = _signed_distance(points, samples, fid, v, l_shape, 8)
    np.testing.assert_allclose(signed, [math.sqrt(0.02), math.sqrt(0.03), 0.1, -math.sqrt(0.02), -0.5], atol=1e-12)


def test_floater_area_fraction_and_the_table():
    assert floater_area_fraction(cube()) == 0.0
    two = trimesh.util.concatenate([cube(), cube(1.0, centre=(0.0, 0.0, 0.5))])  # overlapping, not edge-joined
    assert floater_area_fraction(two) == pytest.approx(0.5)
    r = shape_report(cube(1.02), cube(), n_samples=2000)
    table = format_reports([("cube", r)])
    assert table.splitlines()[1].split() == ["cube", f"{100 * r.chamfer_l1:.3f}", "1.000", "1.000", "1.000",
                                             "0.58", "0.58", "0.58", "1.061", "1.000", "1.000",
                                             f"{100 * r.edge_area_fraction:.1f}", "0.00"]


def test_report_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        shape_report(cube(), cube(), threshold=0.0)
    with pytest.raises(ValueError, match="no faces"):
        shape_report(trimesh.Trimesh(), cube())
