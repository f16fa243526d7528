"""The isosurface threshold fitted to the reference mask (nerf/silhouette.py), against hand-computed values."""

import math

import pytest
import torch

from nerf.cameras import CameraBatch
from nerf.silhouette import _box_interval, ray_max_density, silhouette_threshold


def test_threshold_on_a_hand_sorted_example():
    ray_max = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    # Mask = the two largest maxima: realisable exactly, the split lies between 3 and 2.
    fit = silhouette_threshold(ray_max, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert fit.iou == 1.0 and fit.mask_pixels == 2
    assert fit.threshold == pytest.approx(math.sqrt(3.0 * 2.0))
    # Mask = {4, 2}: the silhouettes {4}, {4,3}, {4,3,2}, {all} score 1/2, 1/3, 2/3, 1/2; the third wins.
    fit = silhouette_threshold(ray_max, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert fit.iou == pytest.approx(2.0 / 3.0)
    assert fit.threshold == pytest.approx(math.sqrt(2.0 * 1.0))


def test_ties_and_zero_density_are_never_split():
    ray_max = torch.tensor([5.0, 5.0, 0.0, 0.0])
    # The best IoU would take one of the two tied pixels, which no threshold can; nor can it split the zeros.
    fit = silhouette_threshold(ray_max, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert fit.iou == pytest.approx(1.0 / 3.0)
    assert fit.threshold == pytest.approx(2.5)  # half the lowest positive maximum


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no foreground"):
        silhouette_threshold(torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="field is empty"):
        silhouette_threshold(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="same shape"):
        silhouette_threshold(torch.ones(4), torch.ones(5))


def test_box_interval_and_misses():
    origins = torch.tensor([[0.0, 0.0, 5.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    near, far = _box_interval(origins, directions, radius=1.0)
    assert near[0].item() == 4.0 and near[2].item() == 0.0
    assert far[0].item() == 6.0 and far[2].item() == 1.0
    assert far[1] <= near[1]  # the second ray misses
    maxima = ray_max_density(lambda p: torch.ones(p.shape[0], dtype=p.dtype), origins, directions, 1.0, n_samples=4)
    assert maxima.tolist() == [1.0, 0.0, 1.0]


def test_gaussian_blob_threshold_matches_the_mask_radius():
    """rho(x) = A exp(-|x|^2 / s^2): the largest density on a ray with impact parameter b is A exp(-b^2 / s^2), so
    the mask {b < b0} is matched exactly by the threshold A exp(-b0^2 / s^2) = 56.98 (A = 100, s = 0.4, b0 = 0.3)."""
    amplitude, s, b0 = 100.0, 0.4, 0.3
    camera = CameraBatch.from_spherical(5.0, 30.0, 3.8, 20.0)
    rays_o, rays_d = (r[0].double() for r in camera.rays(64, 64))
    impact = torch.linalg.cross(rays_o, rays_d).norm(dim=-1) / rays_d.norm(dim=-1)  # distance of the ray to 0
    mask = (impact < b0).double()
    maxima = ray_max_density(lambda p: amplitude * torch.exp(-p.square().sum(-1) / s**2), rays_o, rays_d, radius=1.0,
                             n_samples=256)
    assert maxima.dtype == torch.float64 and maxima.shape == (64, 64)  # follows the rays
    fit = silhouette_threshold(maxima, mask)
    assert fit.iou == 1.0
    assert fit.threshold == pytest.approx(amplitude * math.exp(-b0**2 / s**2), rel=0.06)
