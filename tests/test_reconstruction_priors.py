"""Options of the photometric trainer for hard shapes (issue 22): the flat-face prior, the soft hull, the volume
penalty, the distortion loss and the silhouette-fitted isosurface threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf.cameras import look_at
from nerf.datasets.blender import ViewDataset
from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig
from nerf.losses import disparity_curvature_loss, distortion_loss
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer


def test_disparity_curvature_by_hand() -> None:
    ones = torch.ones(1, 3)
    assert float(disparity_curvature_loss(torch.tensor([[2.0, 2.0, 2.0]]), ones)) == 0.0
    # disparities 1, 1/2, 1/4: |1 - 1 + 1/4| / (1/2) = 0.5, whatever the opacity scaling of depth
    assert float(disparity_curvature_loss(torch.tensor([[1.0, 2.0, 4.0]]), ones)) == pytest.approx(0.5)
    assert float(disparity_curvature_loss(torch.tensor([[0.5, 1.0, 2.0]]), 0.5 * ones)) == pytest.approx(0.5)
    # mean over triplets: (0 + 0.5) / 2
    both = disparity_curvature_loss(torch.tensor([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]]), torch.ones(2, 3))
    assert float(both) == pytest.approx(0.25)


def test_plane_has_zero_curvature_and_a_crease_does_not() -> None:
    """A tilted plane seen through three pixels of a row: camera-space depth makes the prior exactly 0; a roof
    ridge between the outer pixels does not (its slope change divided by the middle disparity)."""
    focal, xs = 100.0, torch.tensor([-2.0, 0.0, 2.0]) / 100.0  # pixel offsets 2 apart, camera looking along -z
    dirs = torch.stack([xs, torch.zeros(3), -torch.ones(3)], dim=-1)
    normal, c = torch.tensor([0.3, 0.1, 1.0]), -3.0  # plane n · p = c
    z = c / (dirs @ normal)  # camera-space depth of the ray's hit (dirs have z = -1)
    assert float(disparity_curvature_loss(z[None], torch.ones(1, 3))) == pytest.approx(0.0, abs=1e-6)
    ray_length = z * dirs.norm(dim=-1)  # along unit rays the plane is not affine: a small non-zero value
    assert float(disparity_curvature_loss(ray_length[None], torch.ones(1, 3))) > 1e-6
    ridge = torch.tensor([3.0, 2.9, 3.0])  # the middle pixel sees a point 0.1 nearer
    expected = abs(1 / 3.0 - 2 / 2.9 + 1 / 3.0) * 2.9
    assert float(disparity_curvature_loss(ridge[None], torch.ones(1, 3))) == pytest.approx(expected, rel=1e-5)
    del focal


def _tiny_views(alpha_value: float) -> ViewDataset:
    n, h, w = 2, 8, 10
    eye = torch.tensor([[3.0, 0.0, 0.5], [0.0, 3.0, 0.5]])
    alpha = torch.zeros(n, h, w, 1)
    alpha[:, 2:6, 1:9] = alpha_value
    return ViewDataset(rgb=torch.full((n, h, w, 3), 0.5), alpha=alpha, has_alpha=torch.tensor([True, False]),
                       c2w=look_at(eye, torch.zeros(3)), fovy_deg=40.0, image_paths=[])


def test_triplets_lie_inside_the_masks_of_views_with_alpha() -> None:
    views = _tiny_views(1.0)
    small = FieldConfig(radius=1.0, hash_grid=HashGridConfig(n_levels=4, n_features_per_level=2, log2_hashmap_size=10,
                                                             base_resolution=4, per_level_scale=1.5),
                        n_neurons=16, n_hidden_layers=1, density_bias="none")
    config = ReconstructionConfig(max_steps=1, lambda_flat=1.0, flat_stride=2, hull_init_steps=0, hull_resolution=16,
                                  field=small, batch_rays=64, num_samples_per_ray=32,
                                  grid=OccupancyGridConfig(resolution=8))
    trainer = ReconstructionTrainer(views, config)
    centres, offsets = trainer._triplets
    # view 0 only (view 1 has no alpha); rows 2..5 x centres 3..6 along rows (4 x 4) + rows 4..3 along columns:
    # column triplets need rows r-2, r, r+2 inside 2..5: none; so 16 row triplets of offset 2
    assert centres.shape[0] == 16 and set(offsets.tolist()) == {2}
    hw = 8 * 10
    assert int((centres // hw).max()) == 0
    rows, cols = (centres % hw) // 10, centres % 10
    assert set(rows.tolist()) == {2, 3, 4, 5} and set(cols.tolist()) == {3, 4, 5, 6}
    # partial coverage is not "inside"
    assert ReconstructionTrainer(_tiny_views(0.9), config)._triplets[0].numel() == 0
    stats = trainer.train_step()
    assert "flat" in stats.losses and math.isfinite(stats.losses["flat"])
    with_distortion = ReconstructionTrainer(views, ReconstructionConfig(**{**config.__dict__, "lambda_distortion": 0.1}))
    assert with_distortion.train_step().losses["distortion"] >= 0.0


def test_flat_prior_is_validated() -> None:
    with pytest.raises(ValueError, match="lambda_flat"):
        ReconstructionConfig(lambda_flat=-1.0)
    with pytest.raises(ValueError, match="flat_stride"):
        ReconstructionConfig(flat_stride=0)


def test_distortion_loss_by_hand() -> None:
    """Ray 0: weights 0.5 / 0.5 at t = 0 and 1, intervals 0.1: 2 * 0.25 * 1 + (0.25 + 0.25) * 0.1 / 3 = 0.51667;
    ray 1: weight 1 at t = 5: 0.1 / 3; mean over the two rays 0.275. All weight in one interval costs less than
    the same weight spread along the ray."""
    weights, t_mid = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([0.0, 1.0, 5.0])
    rays = torch.tensor([0, 0, 1])
    assert float(distortion_loss(weights, t_mid, 0.1, rays, 2)) == pytest.approx(0.275, abs=1e-6)
    step = distortion_loss(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.5, 1.0]), 0.1, torch.zeros(3).long(), 1)
    ramp = distortion_loss(torch.full((3,), 1 / 3), torch.tensor([0.0, 0.5, 1.0]), 0.1, torch.zeros(3).long(), 1)
    assert float(step) == pytest.approx(0.1 / 3) and float(ramp) == pytest.approx(2 * (0.5 + 1.0 + 0.5) / 9 + 0.1 / 9)


def test_volume_penalty_and_soft_hull_are_validated() -> None:
    with pytest.raises(ValueError, match="lambda_volume"):
        ReconstructionConfig(lambda_volume=-0.1)
    with pytest.raises(ValueError, match="lambda_distortion"):
        ReconstructionConfig(lambda_distortion=-0.1)
    with pytest.raises(ValueError, match="hull_init_occupancy"):
        ReconstructionConfig(hull_init_occupancy=0.0)


def test_silhouette_fit_picks_the_threshold_whose_surface_matches_the_masks() -> None:
    """Views of a sphere of radius 0.5; a density ramp whose t-isosurface is a sphere of radius
    ``R * (1.5 - t / 100)`` (R the true radius in the normalised frame): only t = 50 reproduces the masks."""
    import trimesh

    from nerf.mesh_render import MeshRenderConfig, render_mesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    az = torch.arange(8.0) * 45.0
    el = torch.tensor([10.0, 40.0] * 4)
    el_r, az_r = torch.deg2rad(el), torch.deg2rad(az)
    eye = 3.0 * torch.stack([torch.cos(el_r) * torch.cos(az_r), torch.cos(el_r) * torch.sin(az_r), torch.sin(el_r)], -1)
    c2w = look_at(eye, torch.zeros(3))
    rgba = render_mesh(sphere, c2w, 30.0, 48, 48, MeshRenderConfig(supersample=2))
    views = ViewDataset(rgb=rgba[..., :3], alpha=rgba[..., 3:], has_alpha=torch.ones(8, dtype=torch.bool), c2w=c2w,
                        fovy_deg=30.0, image_paths=[])
    small = FieldConfig(radius=1.0, hash_grid=HashGridConfig(n_levels=2, n_features_per_level=2, log2_hashmap_size=8,
                                                             base_resolution=4, per_level_scale=1.5),
                        n_neurons=8, n_hidden_layers=1, density_bias="none")
    config = ReconstructionConfig(max_steps=1, field=small, hull_resolution=24, silhouette_resolution=48,
                                  silhouette_thresholds=(20.0, 35.0, 50.0, 65.0, 80.0))
    trainer = ReconstructionTrainer(views, config)
    centre = -trainer.frame.centre / trainer.frame.scale  # the world origin in the normalised frame
    radius = 0.5 / trainer.frame.scale
    trainer.field.density = lambda p: 100.0 * (1.5 - (p - centre).norm(dim=-1) / radius).clamp_min(0.0)
    best, scores = trainer.silhouette_threshold(config.silhouette_thresholds)
    assert best == 50.0
    assert scores[50.0] > 0.97 and scores[20.0] < scores[35.0] < scores[50.0] > scores[65.0] > scores[80.0]
    mesh = trainer.extract_mesh()
    assert trainer.isosurface_threshold == 50.0 and trainer.silhouette_scores == scores
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(0.5, rel=0.03)
