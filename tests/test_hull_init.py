"""Hull initialisation of the photometric trainer (nerf/trainers/hull_init.py): solid and shell targets, the fit."""

from __future__ import annotations

import pytest
import torch

from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig, ImplicitVolume
from nerf.trainers.hull_init import fit_density_to_hull, hull_targets
from nerf.trainers.photometric import ReconstructionConfig

SMALL = FieldConfig(radius=1.0, hash_grid=HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
                                                          base_resolution=8, per_level_scale=1.5),
                    n_neurons=32, n_hidden_layers=1, density_bias="none")


def _cube_hull(g: int = 12, lo: int = 2, hi: int = 10) -> torch.Tensor:
    hull = torch.zeros(g, g, g, dtype=torch.bool)
    hull[lo:hi, lo:hi, lo:hi] = True  # an 8³ block of grid points
    return hull


def test_solid_and_shell_targets_by_hand() -> None:
    hull = _cube_hull()
    spacing = 2.0 / 11
    assert float(hull_targets(hull).sum()) == 512.0
    assert float(hull_targets(hull, occupancy=0.5).sum()) == 256.0
    # Depth below the boundary (which runs half a spacing outside the last hull point): layer k (1 = outermost)
    # sits at (k - 0.5) spacings. A shell of 2 spacings keeps layers 1 and 2: 8³ - 4³ points.
    shell = hull_targets(hull, shell=2.0 * spacing)
    assert float(shell.sum()) == 512.0 - 64.0
    assert float(shell[6, 6, 6]) == 0.0 and float(shell[2, 6, 6]) == 1.0 and float(shell[3, 6, 6]) == 1.0
    assert float(shell[4, 6, 6]) == 0.0
    # A shell of 0.9 spacings keeps the outer layer only: 8³ - 6³.
    assert float(hull_targets(hull, shell=0.9 * spacing).sum()) == 512.0 - 216.0
    # A shell thicker than half the block is the solid hull again.
    assert torch.equal(hull_targets(hull, shell=1.0), hull_targets(hull))


def test_bad_targets_and_config_are_rejected() -> None:
    with pytest.raises(ValueError, match="occupancy"):
        hull_targets(_cube_hull(), occupancy=0.0)
    with pytest.raises(ValueError, match="shell"):
        hull_targets(_cube_hull(), shell=-0.1)
    with pytest.raises(ValueError, match="hull_init_shell"):
        ReconstructionConfig(hull_init_shell=-0.01)
    assert ReconstructionConfig().hull_init_shell == 0.0  # off (issue 22 tables in benchmarks/README.md)


def test_fit_to_a_shell_leaves_the_inside_empty() -> None:
    torch.manual_seed(0)
    g = 17
    hull = torch.zeros(g, g, g, dtype=torch.bool)
    hull[3:14, 3:14, 3:14] = True  # a cube of half-size 0.625 (points at ±0.625, spacing 0.125)
    targets = hull_targets(hull, shell=0.25)
    field = ImplicitVolume(SMALL, seed=0)
    loss = fit_density_to_hull(field, targets, steps=100, n_points=2048, lr=1e-2,
                               generator=torch.Generator().manual_seed(0))
    delta = 2.0 / (g - 1)
    with torch.no_grad():
        points = torch.tensor([[0.0, 0.0, 0.0], [0.55, 0.0, 0.0], [0.0, -0.55, 0.1], [0.9, 0.0, 0.0]])
        occupancy = 1.0 - torch.exp(-field.density(points) * delta)
    assert loss < 0.2
    assert float(occupancy[0]) < 0.1  # the centre, 0.625 deep: empty
    assert float(occupancy[1]) > 0.9 and float(occupancy[2]) > 0.9  # inside the shell
    assert float(occupancy[3]) < 0.1  # outside the hull
    assert fit_density_to_hull(field, targets, steps=0, n_points=1, lr=1e-2,
                               generator=torch.Generator()) == 0.0
