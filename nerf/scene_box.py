"""The normalised scene box of multi-view reconstruction: where the object is, from masks or cameras.

The engine's box is ``[-r, r]^3`` around the origin, so posed views are mapped into a *normalised frame*
``x_n = (x_world - centre) / scale`` in which the box is ``[-1, 1]^3``. With masks (RGBA views), centre and scale
come from the *visual hull* (Laurentini 1994): points of a grid that project into the foreground (any alpha
coverage) of every view that sees them; the hull's bounding box, enlarged by a margin, becomes the box. Without
masks they come from the cameras: the point closest to all optical axes (least squares) and the largest sphere
around it that every camera sees entirely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.cameras import focal_from_fovy
from nerf.datasets.blender import ViewDataset

__all__ = ["SceneFrame", "scene_frame"]


@dataclass
class SceneFrame:
    """Similarity between the world frame of the views and the engine's normalised frame.

    ``x_world = centre + scale * x_normalised``; the engine box ``[-1, 1]^3`` is ``centre ± scale`` in the world.

    Attributes:
        centre: Tensor with shape (3,), world units.
        scale: world units per normalised unit, > 0.
        hull: Tensor with shape (G, G, G), bool, the visual hull over the normalised box (None without masks).
    """

    centre: Tensor
    scale: float
    hull: Tensor | None = None

    def to_normalised(self, points: Tensor) -> Tensor:
        """World points (..., 3) → normalised frame."""
        return (points - self.centre.to(points)) / self.scale

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Normalised points (..., 3) → world frame (numpy)."""
        return self.centre.double().numpy() + self.scale * points


def scene_frame(views: ViewDataset, margin: float = 1.1, hull_resolution: int = 96,
                dilation_px: float = 0.0, alpha_threshold: float = 0.01) -> SceneFrame:
    """Choose the normalised frame from the masks (visual hull) or, without masks, from the cameras.

    Args:
        views: posed images; frames with ``has_alpha`` carve the hull.
        margin: box half-size / object half-size (>= 1).
        hull_resolution: grid points per axis of the hull (>= 8).
        dilation_px: mask dilation before carving, pixels.
        alpha_threshold: alpha above which a pixel is foreground for carving.

    Returns:
        :class:`SceneFrame`.

    Raises:
        ValueError: the masks carve everything away (inconsistent masks or poses).
    """
    centre, radius = _camera_sphere(views)
    if not bool(views.has_alpha.any()):
        return SceneFrame(centre=centre, scale=radius * margin)
    # Carve a box around the camera sphere (grown while the hull touches its sides), take the hull's bounds,
    # then carve again inside the final box.
    for _ in range(4):
        inside = _carve(views, centre, radius, hull_resolution, dilation_px, alpha_threshold)
        if not bool(inside.any()):
            raise ValueError("scene_frame: the visual hull is empty; the masks and camera poses are inconsistent")
        sides = torch.stack([inside[0], inside[-1], inside[:, 0], inside[:, -1], inside[:, :, 0], inside[:, :, -1]])
        if not bool(sides.any()):
            break
        radius *= 1.5
    idx = torch.nonzero(inside).float()
    step = 2.0 * radius / (hull_resolution - 1)
    lo = centre - radius + (idx.amin(0) - 1.0) * step
    hi = centre - radius + (idx.amax(0) + 1.0) * step
    centre = 0.5 * (lo + hi)
    scale = float(0.5 * (hi - lo).max()) * margin
    hull = _carve(views, centre, scale, hull_resolution, dilation_px, alpha_threshold)
    return SceneFrame(centre=centre, scale=scale, hull=hull)


def _camera_sphere(views: ViewDataset) -> tuple[Tensor, float]:
    """Least-squares point nearest to all optical axes, and the largest sphere around it seen by every camera."""
    c2w = views.c2w.double()
    origins = c2w[:, :3, 3]
    axes = -c2w[:, :3, 2]
    axes = axes / axes.norm(dim=-1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3)
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if abs(float(torch.linalg.det(a))) < 1e-9:  # parallel axes: fall back to a point ahead of the cameras
        centre = (origins + axes).mean(0)
    else:
        centre = torch.linalg.solve(a, b)
    dist = (centre - origins).norm(dim=-1)
    half_fov = math.radians(0.5 * min(views.fovy_deg, math.degrees(views.camera_angle_x)))
    radius = float((dist * math.sin(half_fov)).min())
    return centre.float(), radius


def _carve(views: ViewDataset, centre: Tensor, half: float, g: int, dilation_px: float,
           alpha_threshold: float) -> Tensor:
    """Visual hull on a g³ grid over ``centre ± half``: (g, g, g) bool.

    A point is kept when it projects into the foreground of every view that sees it, and every view whose mask
    stays clear of the image border (an uncropped object) sees it. The pixel containing the projection decides.
    """
    lin = torch.linspace(-1.0, 1.0, g)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3) * half + centre
    masks = views.alpha[..., 0] > alpha_threshold
    if dilation_px > 0:
        k = 2 * int(math.ceil(dilation_px)) + 1
        masks = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=k // 2)[:, 0] > 0
    focal = float(focal_from_fovy(views.fovy_deg, views.height))
    # A view whose mask does not touch the image border shows the whole object, so points outside its frustum
    # are outside the object; a cropped view says nothing about points it does not see.
    border = masks[:, 0].any(-1) | masks[:, -1].any(-1) | masks[:, :, 0].any(-1) | masks[:, :, -1].any(-1)
    inside = torch.ones(pts.shape[0], dtype=torch.bool)
    w2c = torch.linalg.inv(views.c2w.double()).float()
    for i in torch.nonzero(views.has_alpha)[:, 0].tolist():  # one pass per view, vectorised over points
        cam = pts @ w2c[i, :3, :3].T + w2c[i, :3, 3]
        z = -cam[:, 2]
        front = z > 1e-6
        col = cam[:, 0] / z.clamp_min(1e-6) * focal + 0.5 * views.width
        row = -cam[:, 1] / z.clamp_min(1e-6) * focal + 0.5 * views.height
        seen = front & (col >= 0) & (col < views.width) & (row >= 0) & (row < views.height)
        ci = col.long().clamp(0, views.width - 1)
        ri = row.long().clamp(0, views.height - 1)
        inside &= masks[i, ri, ci] & seen if not bool(border[i]) else ~seen | masks[i, ri, ci]
    return inside.reshape(g, g, g)
