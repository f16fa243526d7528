"""Cameras and rays.

Conventions (shared by the whole project, the same as threestudio and the NeRF-synthetic/Blender data):

- World frame is **z-up**. A camera at elevation ``el`` and azimuth ``az`` (degrees) and distance ``d`` sits at
  ``d * (cos(el) cos(az), cos(el) sin(az), sin(el))`` and looks at the origin. Azimuth 0° is the +x axis,
  azimuth grows counter-clockwise seen from +z; elevation 0° is the xy-plane, 90° looks straight down.
  Source: threestudio ``threestudio/data/uncond.py`` (RandomCameraIterableDataset.collate).
- Camera-to-world matrices (``c2w``, shape ``(..., 4, 4)``) use **OpenGL camera axes**: x right, y up, the
  camera looks down its −z axis.
- ``fovy`` is the full vertical field of view in degrees; focal length in pixels is
  ``0.5 * height / tan(0.5 * fovy)``.
- Pixel centres are at half-integer coordinates; image row 0 is the top of the image.

Examples:
    >>> c2w = c2w_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]))
    >>> rays_o, rays_d = get_rays(c2w, fovy_deg=torch.tensor([40.0]), height=4, width=4)
    >>> rays_o.shape, rays_d.shape
    (torch.Size([1, 4, 4, 3]), torch.Size([1, 4, 4, 3]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CameraBatch",
    "c2w_from_spherical",
    "focal_from_fovy",
    "get_rays",
    "look_at",
    "spherical_to_cartesian",
]


def spherical_to_cartesian(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera positions on a sphere around the origin.

    Args:
        elevation_deg: Tensor with shape (B,), degrees, any range (−90..90 is meaningful).
        azimuth_deg: Tensor with shape (B,), degrees, any range.
        distance: Tensor with shape (B,), scene units (metres), > 0.

    Returns:
        Tensor with shape (B, 3): ``distance * (cos el cos az, cos el sin az, sin el)`` (z-up).
    """
    el = torch.deg2rad(elevation_deg)
    az = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [distance * torch.cos(el) * torch.cos(az), distance * torch.cos(el) * torch.sin(az), distance * torch.sin(el)],
        dim=-1,
    )


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices (OpenGL axes) for cameras at ``eye`` looking at ``target``.

    Args:
        eye: Tensor with shape (B, 3), camera centres in world units.
        target: Tensor with shape (B, 3) or (3,); defaults to the origin.
        up: Tensor with shape (3,); world up, defaults to +z.

    Returns:
        Tensor with shape (B, 4, 4): columns are (right, up, back, eye), last row (0, 0, 0, 1).

    Raises:
        ValueError: if ``eye`` coincides with ``target`` or the view direction is parallel to ``up``.
    """
    if target is None:
        target = torch.zeros(3, dtype=eye.dtype, device=eye.device)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    forward = target - eye
    if bool((forward.norm(dim=-1) < 1e-8).any()):
        raise ValueError("look_at: camera position coincides with its target")
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up.expand_as(forward), dim=-1)
    if bool((right.norm(dim=-1) < 1e-6).any()):
        raise ValueError("look_at: view direction is parallel to the up vector (elevation of ±90°)")
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def c2w_from_spherical(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera-to-world matrices, shape (B, 4, 4), for cameras on a sphere looking at the origin (z-up).

    Args: see :func:`spherical_to_cartesian`. Elevation must stay strictly inside (−90°, 90°).
    """
    return look_at(spherical_to_cartesian(elevation_deg, azimuth_deg, distance))


def focal_from_fovy(fovy_deg: Tensor | float, height: int) -> Tensor:
    """Focal length in pixels, ``0.5 * height / tan(0.5 * fovy)``; fovy in degrees (0, 180)."""
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float32)
    return 0.5 * height / torch.tan(0.5 * torch.deg2rad(fovy))


def get_rays(
    c2w: Tensor,
    fovy_deg: Tensor,
    height: int,
    width: int,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """World-space rays through every pixel centre of a pinhole camera.

    Args:
        c2w: Tensor with shape (B, 4, 4) or (B, 3, 4), camera-to-world, OpenGL axes.
        fovy_deg: Tensor with shape (B,) or a scalar tensor, vertical field of view in degrees.
        height, width: image size in pixels. Square pixels; principal point at the image centre.
        normalize: return unit-length directions (default). Else directions have camera-space z = −1.

    Returns:
        rays_o: Tensor with shape (B, H, W, 3), ray origins (the camera centre).
        rays_d: Tensor with shape (B, H, W, 3), ray directions.
    """
    batch = c2w.shape[0]
    device, dtype = c2w.device, c2w.dtype
    focal = focal_from_fovy(fovy_deg, height).to(device=device, dtype=dtype).reshape(-1).expand(batch)
    j, i = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    # Camera-space directions with OpenGL axes: +x right, +y up (image rows grow downward), look along -z.
    x = (i[None] - 0.5 * width) / focal[:, None, None]
    y = -(j[None] - 0.5 * height) / focal[:, None, None]
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    rays_d = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs_cam)
    if normalize:
        rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


@dataclass
class CameraBatch:
    """A batch of pinhole cameras on a sphere around the origin.

    Attributes:
        elevation_deg: Tensor with shape (B,), degrees.
        azimuth_deg: Tensor with shape (B,), degrees.
        distance: Tensor with shape (B,), scene units.
        fovy_deg: Tensor with shape (B,), degrees.
        c2w: Tensor with shape (B, 4, 4), camera-to-world (OpenGL axes).
    """

    elevation_deg: Tensor
    azimuth_deg: Tensor
    distance: Tensor
    fovy_deg: Tensor
    c2w: Tensor

    @classmethod
    def from_spherical(
        cls,
        elevation_deg: Tensor | float,
        azimuth_deg: Tensor | float,
        distance: Tensor | float,
        fovy_deg: Tensor | float,
    ) -> "CameraBatch":
        """Build a batch; scalars broadcast to the batch size of the longest argument."""
        tensors = [torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in
                   (elevation_deg, azimuth_deg, distance, fovy_deg)]
        batch = max(t.shape[0] for t in tensors)
        el, az, dist, fovy = (t.expand(batch).clone() for t in tensors)
        return cls(el, az, dist, fovy, c2w_from_spherical(el, az, dist))

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def rays(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Unit-direction rays, each with shape (B, H, W, 3); see :func:`get_rays`."""
        return get_rays(self.c2w, self.fovy_deg, height, width)

    @staticmethod
    def fovy_from_camera_angle_x(camera_angle_x_rad: float, height: int, width: int) -> float:
        """Vertical fov in degrees from a horizontal fov in radians (NeRF-synthetic ``camera_angle_x``)."""
        focal = 0.5 * width / math.tan(0.5 * camera_angle_x_rad)
        return math.degrees(2.0 * math.atan(0.5 * height / focal))
