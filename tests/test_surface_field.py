"""The surface field (issue 22): VolSDF density, finite-difference derivatives, the hull's signed distance, and a
reconstruction meshed at its zero level."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerf.datasets.blender import load_views
from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.renderer import RendererConfig, VolumeRenderer
from nerf.samples import interval_points
from nerf.sdf import (SurfaceConfig, SurfaceField, fit_surface_to_hull, interval_alpha, laplace_density,
                      log_laplace_cdf, sdf_derivatives, signed_distance_grid, surface_losses)
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer

SMALL = FieldConfig(radius=1.0, hash_grid=HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
                                                         base_resolution=4, per_level_scale=1.6),
                    n_neurons=32, n_hidden_layers=1, density_bias="none")


def test_laplace_density_by_hand() -> None:
    beta = 0.1
    s = torch.tensor([0.0, 0.1, -0.1, 1.0, -1.0])
    expected = torch.tensor([0.5, 0.5 * math.exp(-1.0), 1.0 - 0.5 * math.exp(-1.0), 0.5 * math.exp(-10.0),
                             1.0 - 0.5 * math.exp(-10.0)]) / beta
    torch.testing.assert_close(laplace_density(-s, beta), expected)
    # the optical depth through the whole outside half-space is 0.5: transmittance exp(-0.5) at the zero level
    t = torch.linspace(0.0, 2.0, 200001)
    outside = laplace_density(-t, beta)
    assert float(torch.trapezoid(outside, t)) == pytest.approx(0.5, rel=1e-4)


def test_finite_differences_of_a_sphere_and_a_plane() -> None:
    def sphere(p):
        return p.norm(dim=-1) - 0.5

    points = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, -0.8], [0.3, 0.4, 0.0]], dtype=torch.float64)
    grad, laplacian = sdf_derivatives(sphere, points, 1e-3)
    torch.testing.assert_close(grad, points / points.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # Laplacian of |x| - r in 3-D is 2 / |x|: 4, 2.5, 4
    torch.testing.assert_close(laplacian, torch.tensor([4.0, 2.5, 4.0], dtype=torch.float64), atol=1e-5, rtol=0)
    normal = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3.0
    grad, laplacian = sdf_derivatives(lambda p: p @ normal - 0.1, points, 0.05)
    torch.testing.assert_close(grad, normal.expand(3, 3))
    torch.testing.assert_close(laplacian, torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_signed_distance_grid_of_a_slab() -> None:
    inside = torch.zeros(10, 4, 4, dtype=torch.bool)
    inside[3:7] = True
    signed = signed_distance_grid(inside, 0.5)
    # along x: outside points 3, 2, 1 spacings from the first inside one, inside 1, 2 from the first outside one
    expected = torch.tensor([2.5, 1.5, 0.5, -0.5, -1.5, -1.5, -0.5, 0.5, 1.5, 2.5]) * 0.5
    torch.testing.assert_close(signed[:, 1, 2], expected)
    with pytest.raises(ValueError, match="no boundary"):
        signed_distance_grid(torch.ones(3, 3, 3, dtype=torch.bool), 1.0)


def test_surface_field_meshes_at_its_zero_level_with_outward_normals() -> None:
    field = SurfaceField(SMALL, seed=0, beta=0.05, beta_min=0.01)
    assert field.surface_density == pytest.approx(10.0, rel=1e-6)
    g = 33
    lin = torch.linspace(-1.0, 1.0, g)
    grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1)
    hull = grid.norm(dim=-1) <= 0.6
    loss = fit_surface_to_hull(field, hull, 300, 4096, 1e-2, torch.Generator().manual_seed(0), clamp=0.2)
    assert loss < 0.02
    assert float(field.beta.detach()) == pytest.approx(0.05, rel=1e-6)  # the hull fit leaves beta alone
    with torch.no_grad():
        axis = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.0, 0.0], [0.0, -0.75, 0.0], [0.9, 0.9, 0.9]])
        s = field.sdf(axis)
        out = field(torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, -0.6]]), with_normal=True)
    assert float(s[0]) < -0.15 and float(s[1]) < 0 < float(s[2]) and float(s[3]) > 0.15
    torch.testing.assert_close(out.normal, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), atol=0.15, rtol=0)
    # density and signed distance agree through the VolSDF map
    torch.testing.assert_close(field.density(axis), laplace_density(-s, field.beta.detach()))


def test_surface_losses_weigh_eikonal_and_curvature() -> None:
    field = SurfaceField(SMALL, seed=1)
    config = SurfaceConfig(lambda_eikonal=0.1, lambda_curvature=0.01, points=64, uniform_points=16)
    near = torch.rand(200, 3, generator=torch.Generator().manual_seed(2)) - 0.5
    total, terms = surface_losses(field, near, config, torch.Generator().manual_seed(3))
    assert float(total) == pytest.approx(0.1 * float(terms["eikonal"]) + 0.01 * float(terms["curvature"]), rel=1e-5)
    total.backward()
    assert field.encoding.parameters().__next__().grad.abs().sum() > 0
    with_pressure = SurfaceConfig(lambda_eikonal=0.1, lambda_curvature=0.01, lambda_pressure=0.5, points=300,
                                  uniform_points=16)
    total, terms = surface_losses(field, near, with_pressure, torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected_pressure = -float(field.sdf(near).mean())  # all 200 near points (fewer than 300)
    assert float(terms["pressure"]) == pytest.approx(expected_pressure, rel=1e-5)
    assert float(total) == pytest.approx(0.1 * float(terms["eikonal"]) + 0.01 * float(terms["curvature"])
                                         + 0.5 * expected_pressure, rel=1e-5)
    with pytest.raises(ValueError, match="SurfaceConfig"):
        SurfaceConfig(beta=0.001, beta_min=0.001)
    with pytest.raises(ValueError, match="SurfaceConfig"):
        SurfaceConfig(lambda_pressure=-1.0)
    with pytest.raises(ValueError, match="SurfaceConfig"):
        SurfaceConfig(neus_from=1.5)


def test_sphere_round_trip_with_a_surface_field(sphere_views) -> None:
    """The zero level of a surface field fitted to 16 views of a sphere of radius 0.5 is that sphere (measured:
    mean radius 0.5056, standard deviation 0.0125 after 40 steps; 0.5052 / 0.0072 from the hull fit alone)."""
    config = ReconstructionConfig(max_steps=20, batch_rays=512, hull_init_steps=60, hull_resolution=64,
                                  surface=SurfaceConfig(points=512, uniform_points=128))
    trainer = ReconstructionTrainer(load_views(sphere_views), config)
    history = trainer.train()
    assert history[-1].losses["rgb"] < history[0].losses["rgb"]
    assert 0 < history[-1].losses["beta"] < 0.02  # beta starts at 0.02 and sharpens
    mesh = trainer.extract_mesh()
    assert trainer.isosurface_threshold == pytest.approx(trainer.field.surface_density)
    radii = np.linalg.norm(mesh.vertices - [0.2, 0.1, -0.1], axis=1)
    assert radii.mean() == pytest.approx(0.5, rel=0.02)
    assert radii.std() < 0.015


def test_interval_alpha_by_hand() -> None:
    beta = 0.01
    start = torch.tensor([0.02, -0.05, 0.01, 0.3, 0.0])
    end = torch.tensor([-0.02, -0.06, 0.02, 0.29, 0.0])
    crossing = 1.0 - (0.5 * math.exp(-2.0)) / (1.0 - 0.5 * math.exp(-2.0))  # Psi(-0.02) / Psi(0.02)
    inside = 1.0 - math.exp(-1.0)  # both ends inside: 1 - exp(-(0.06 - 0.05) / beta)
    far = 1.0 - (1.0 - 0.5 * math.exp(-29.0)) / (1.0 - 0.5 * math.exp(-30.0))
    expected = torch.tensor([crossing, inside, 0.0, far, 0.0])  # leaving the surface (3rd) is transparent
    torch.testing.assert_close(interval_alpha(start, end, beta), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(log_laplace_cdf(torch.tensor([-0.01, 0.0, 0.01]), beta),
                               torch.tensor([math.log(0.5) - 1.0, math.log(0.5), math.log(1 - 0.5 * math.exp(-1))]))


def test_a_grazing_ray_is_half_opaque_at_the_zero_level_whatever_the_step() -> None:
    """NeuS opacity of a ray skimming a plane: 1 - Psi(d) for its smallest distance d, for any interval length."""
    beta = 0.02
    for n in (4, 32, 256):
        t = torch.linspace(-1.0, 1.0, n + 1, dtype=torch.float64)
        for d in (0.0, 0.01):
            s = d + 0.3 * t * t  # distance along a ray tangent to a curved surface at t = 0
            alpha = interval_alpha(s[:-1], s[1:], beta)
            opacity = 1.0 - torch.prod(1.0 - alpha)
            cdf_min, cdf_first = (1.0 - 0.5 * math.exp(-x / beta) for x in (d, d + 0.3))
            expected = 1.0 - cdf_min / cdf_first  # ~ 0.5 exp(-d / beta): 0.5 on the zero level
            assert float(opacity) == pytest.approx(expected, abs=1e-9)


def test_interval_points_share_the_ends_of_touching_intervals() -> None:
    rays_o = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    ray_indices = torch.tensor([0, 0, 0, 1, 1])
    t_starts = torch.tensor([0.0, 0.1, 0.3, 0.0, 0.1])
    t_ends = torch.tensor([0.1, 0.2, 0.4, 0.1, 0.2])  # ray 0: a gap between 0.2 and 0.3
    t_dirs = torch.tensor([[0.0, 0.0, 1.0]]).expand(5, 3)
    points, start, end = interval_points(rays_o, t_dirs, ray_indices, t_starts, t_ends, 1e-6)
    assert points.shape == (8, 3)  # 5 starts + the ends at 0.2 and 0.4 on ray 0 and 0.2 on ray 1
    assert start.tolist() == [0, 1, 2, 3, 4] and end.tolist() == [1, 5, 6, 4, 7]
    origins = rays_o[ray_indices]
    torch.testing.assert_close(points[end], origins + t_dirs * t_ends[:, None])
    torch.testing.assert_close(points[start], origins + t_dirs * t_starts[:, None])


def test_renderer_takes_interval_opacity_from_a_surface_field() -> None:
    """Rays through a fitted sphere: NeuS opacity is ~1 head-on and the weights of one ray add up to it; switching
    ``interval_opacity`` off renders the VolSDF density instead (another, biased, depth)."""
    field = SurfaceField(SMALL, seed=0, beta=0.01, beta_min=0.001)
    lin = torch.linspace(-1.0, 1.0, 33)
    hull = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).norm(dim=-1) <= 0.6
    fit_surface_to_hull(field, hull, 300, 4096, 1e-2, torch.Generator().manual_seed(0), clamp=0.2)
    renderer = VolumeRenderer(field, RendererConfig(num_samples_per_ray=128, grid=OccupancyGridConfig(resolution=32)))
    generator = torch.Generator().manual_seed(0)
    for step in range(0, 128, 16):  # each update draws one point per cell: a few passes find every surface cell
        renderer.update_occupancy(step, generator=generator)
    rays_o, rays_d = torch.tensor([[0.0, 0.0, -1.5], [0.0, 0.9, -1.5]]), torch.tensor([[0.0, 0.0, 1.0]] * 2)
    with torch.no_grad():
        neus = renderer(rays_o, rays_d)
        field.interval_opacity = False
        volsdf = renderer(rays_o, rays_d)
    assert float(neus.opacity[0]) == pytest.approx(1.0, abs=1e-3) and float(neus.opacity[1]) < 1e-3
    with torch.no_grad():
        s = field.sdf(torch.tensor([[0.0, 0.0, -1.5 + float(neus.depth[0])]]))
    assert abs(float(s)) < 0.02  # the head-on NeuS depth sits on the zero level
    assert float(volsdf.depth[0]) != pytest.approx(float(neus.depth[0]), abs=1e-4)


def test_small_grid_config_is_accepted() -> None:
    config = ReconstructionConfig(max_steps=1, field=SMALL, surface=SurfaceConfig(), grid=OccupancyGridConfig(8))
    assert config.surface is not None and config.surface.lambda_eikonal == 0.1
