"""Chamfer-L1, F-score and PSNR against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from nerf.metrics import _point_triangle_distance, chamfer_l1, f_score, mesh_distances, psnr


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=0.5)


def test_chamfer_of_a_mesh_with_itself_is_about_zero(sphere):
    assert chamfer_l1(sphere, sphere, n_samples=20_000) < 2e-4
    assert f_score(sphere, sphere, threshold=0.001, n_samples=20_000) == 1.0


def test_sphere_against_one_scaled_by_1_01_gives_the_radius_gap_over_the_diagonal(sphere):
    bigger = sphere.copy()
    bigger.apply_scale(1.01)
    d = mesh_distances(bigger, sphere, n_samples=20_000)
    # Every point is 0.01 r from the other sphere; normalised by the reference diagonal 2 r sqrt(3).
    expected = 0.01 * 0.5 / (2.0 * 0.5 * math.sqrt(3.0))
    assert d.chamfer_l1 == pytest.approx(expected, rel=0.02)
    assert d.f_score(0.01) == 1.0  # the 0.29 % gap is inside 1 %
    assert d.f_score(0.002) == 0.0  # ... and outside 0.2 %


def test_each_normalisation_ignores_scale_and_offset(sphere):
    moved = sphere.copy()
    moved.apply_scale(3.0)
    moved.apply_translation([1.0, -2.0, 0.5])
    assert chamfer_l1(moved, sphere, n_samples=20_000, normalize="each") < 2e-4
    assert chamfer_l1(moved, sphere, n_samples=20_000, normalize="reference") > 0.1


def test_point_triangle_distance_in_every_voronoi_region():
    tri = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]).repeat(5, axis=0)
    points = np.array([
        [0.2, 0.2, 0.5],  # above the face: height
        [-1.0, -1.0, 0.0],  # vertex A region
        [2.0, 0.0, 1.0],  # vertex B region
        [0.5, -1.0, 0.0],  # edge AB region
        [1.0, 1.0, 0.0],  # edge BC region: distance to the line x + y = 1
    ])
    expected = [0.5, math.sqrt(2.0), math.sqrt(2.0), 1.0, math.sqrt(0.5)]
    np.testing.assert_allclose(_point_triangle_distance(points, tri), expected, atol=1e-12)


def test_psnr_known_values():
    a = torch.zeros(4, 4, 3)
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    b = a.clone()
    b[0, 0] = 1.0  # one wrong pixel, masked out
    mask = torch.ones(4, 4)
    mask[0, 0] = 0
    assert psnr(b, a, mask=mask) == float("inf")
    with pytest.raises(ValueError):
        psnr(a, torch.zeros(4, 4, 4))
