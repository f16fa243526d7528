"""Filling a density grid's hidden interior before marching cubes (``nerf/interior.py``, issue 22)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf.interior import fill_hidden, hidden_mask
from nerf.mesh import IsosurfaceConfig, extract_mesh


def hollow_cube(n: int = 12, wall: int = 2, density: float = 100.0) -> np.ndarray:
    volume = np.zeros((n, n, n), np.float32)
    volume[1:-1, 1:-1, 1:-1] = density
    volume[1 + wall:-1 - wall, 1 + wall:-1 - wall, 1 + wall:-1 - wall] = 0.0
    return volume


def test_a_sealed_cavity_is_hidden_and_the_outside_is_not():
    volume = hollow_cube()
    hidden = hidden_mask(volume, (0.1, 0.1, 0.1), optical_depth=4.6)
    assert hidden[3:-3, 3:-3, 3:-3].all()  # the cavity: behind τ = 10 from every side
    assert not hidden[0].any() and not hidden[:, :, -1].any()  # the empty border
    # the wall's outer layer: τ = ½ · 100 · 0.1 = 5 in front of its centre from its own side (hidden, already dense)
    assert hidden[1, 5, 5] and not hidden[0, 5, 5]
    # thinner walls or a weaker density let the rays through
    assert not hidden_mask(volume, (0.1, 0.1, 0.1), optical_depth=25.0).any()
    assert not hidden_mask(hollow_cube(density=1.0), (0.1, 0.1, 0.1), optical_depth=4.6).any()


def test_a_cavity_open_along_an_axis_stays_empty():
    volume = hollow_cube()
    volume[4:8, 4:8, 9:] = 0.0  # a shaft from the cavity up through the top wall: a box open at the top
    filled = fill_hidden(volume, (0.1, 0.1, 0.1), optical_depth=4.6, fill_value=50.0)
    assert (filled[4:8, 4:8, 4:] == 0.0).all()  # the shaft and the column below it see the sky
    assert (filled[3, 3, 3] == 50.0) and (filled[8, 8, 4] == 50.0)  # the cavity's corners do not: filled
    np.testing.assert_array_equal(filled[volume > 50.0], volume[volume > 50.0])  # dense points kept as they were


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        hidden_mask(np.zeros((4, 4)), (0.1, 0.1, 0.1), 1.0)
    with pytest.raises(ValueError):
        hidden_mask(np.zeros((4, 4, 4)), (0.1, 0.0, 0.1), 1.0)
    with pytest.raises(ValueError):
        hidden_mask(np.zeros((4, 4, 4)), (0.1, 0.1, 0.1), 0.0)
    with pytest.raises(ValueError):
        IsosurfaceConfig(fill_hidden_optical_depth=-1.0)


def shell_density(points: torch.Tensor) -> torch.Tensor:
    """A sphere of radius 0.6 with a sealed spherical cavity of radius 0.4: density 100 in the shell, 0 elsewhere,
    smooth steps of width ~0.02 crossing 50 at both radii."""
    r = points.norm(dim=-1)
    return 100.0 * torch.sigmoid((0.6 - r) / 0.02) * torch.sigmoid((r - 0.4) / 0.02)


def test_extraction_meshes_the_cavity_without_the_fill_and_the_solid_with_it():
    base = IsosurfaceConfig(resolution=48, threshold=50.0, keep_largest_component=False, coarse_to_fine=False)
    hollow = extract_mesh(shell_density, radius=1.0, config=base)
    solid = extract_mesh(shell_density, radius=1.0,
                         config=IsosurfaceConfig(**{**base.__dict__, "fill_hidden_optical_depth": 4.6}))
    outer, inner = 4.0 / 3.0 * math.pi * 0.6**3, 4.0 / 3.0 * math.pi * 0.4**3
    assert hollow.volume == pytest.approx(outer - inner, rel=0.03)
    assert solid.volume == pytest.approx(outer, rel=0.03)
    assert len(solid.split(only_watertight=False)) == 1 and len(hollow.split(only_watertight=False)) == 2
