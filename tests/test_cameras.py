"""Camera conventions: hand-computed poses and rays."""

import math

import pytest
import torch

from nerf.random_cameras import RandomCameraConfig, RandomCameraSampler, ResolutionSchedule
from nerf.cameras import CameraBatch, c2w_from_spherical, focal_from_fovy, get_rays, look_at


def test_camera_at_azimuth_zero_sits_on_plus_x_with_y_to_its_right():
    c2w = c2w_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))[0]
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]))  # right
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))  # up
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]))  # back (camera looks along -z)


def test_elevation_and_azimuth_place_camera_on_sphere():
    c2w = c2w_from_spherical(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([3.8]))[0]
    expected = torch.tensor([0.0, 3.8 * math.cos(math.radians(30)), 3.8 * math.sin(math.radians(30))])
    torch.testing.assert_close(c2w[:3, 3], expected, atol=1e-6, rtol=0)
    rotation = c2w[:3, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.det(rotation).item() == pytest.approx(1.0, abs=1e-6)


def test_centre_ray_points_at_origin_and_corner_ray_matches_fovy():
    cams = CameraBatch.from_spherical(5.0, 0.0, 3.8, 20.0)
    rays_o, rays_d = cams.rays(2, 2)
    mean_dir = rays_d[0].reshape(-1, 3).mean(0)
    mean_dir = mean_dir / mean_dir.norm()
    to_origin = -rays_o[0, 0, 0] / rays_o[0, 0, 0].norm()
    torch.testing.assert_close(mean_dir, to_origin, atol=1e-6, rtol=0)
    # Top-left pixel centre of a 2x2 image is half a pixel from the centre: tan = 0.5 / focal in each axis.
    focal = focal_from_fovy(20.0, 2).item()
    assert focal == pytest.approx(1.0 / math.tan(math.radians(10.0)))
    _, d = get_rays(torch.eye(4)[None], torch.tensor([20.0]), 2, 2, normalize=False)
    torch.testing.assert_close(d[0, 0, 0], torch.tensor([-0.5 / focal, 0.5 / focal, -1.0]))


def test_look_at_rejects_degenerate_poses():
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([[0.0, 0.0, 2.0]]))
    with pytest.raises(ValueError, match="coincides"):
        look_at(torch.zeros(1, 3))


def test_fovy_from_camera_angle_x_square_image_is_identity():
    assert CameraBatch.fovy_from_camera_angle_x(math.radians(40), 64, 64) == pytest.approx(40.0)
    # A wide image: the vertical fov is narrower than the horizontal one.
    assert CameraBatch.fovy_from_camera_angle_x(math.radians(40), 64, 128) < 40.0


def test_random_cameras_follow_schedule_and_ranges():
    cfg = RandomCameraConfig(schedule=ResolutionSchedule(sizes=(8, 16), batch_sizes=(4, 2), milestones=(10,)))
    sampler = RandomCameraSampler(cfg, torch.Generator().manual_seed(0))
    cams, size = sampler.sample(0)
    assert (len(cams), size) == (4, 8)
    cams, size = sampler.sample(10)
    assert (len(cams), size) == (2, 16)
    elevations = torch.cat([sampler.sample(0)[0].elevation_deg for _ in range(200)])
    assert elevations.min() >= -10.0 and elevations.max() <= 80.0
    assert elevations.max() - elevations.min() > 60.0
    again = RandomCameraSampler(cfg, torch.Generator().manual_seed(0)).sample(0)[0]
    first = RandomCameraSampler(cfg, torch.Generator().manual_seed(0)).sample(0)[0]
    torch.testing.assert_close(again.c2w, first.c2w)
