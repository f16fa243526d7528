"""The interior no training view sees: empty grid points behind every view's surface, filled before marching cubes.

A photometric NeRF started from a *shell* of the visual hull (``nerf.trainers.hull_init``) keeps the inside of a
closed object empty: no ray reaches it, so no loss fills it, and marching cubes meshes an inner surface. Where
training breaches the shell, that inner surface joins the outer one and survives the largest-component rule
(issue 22: the cube from a 0.07 shell had 0.2× its volume). The axis-ray rule of :mod:`nerf.interior` does not
help here: a box's open top or a breach lets one axis ray in.

Rule: an empty grid point (density at or below the threshold) is filled when both

1. **no view sees it**: in every view whose image it projects into, it lies more than ``margin_cells`` cells
   behind that view's *depth map* — per pixel, the distance along the pixel's ray to the first grid point above
   the threshold, taken as the nearest of the 3×3 pixels around (a one-pixel breach does not count as a view
   through the wall); and
2. **it is enclosed**: it belongs to a cavity of the occupied points grown by ``close_cells`` (an empty component
   not connected to the grid's boundary), grown back by as much: breaches narrower than about twice that are
   shut, and narrow gaps (between fingers) are no cavity.

The first alone fills the thin slab under a box's bottom face, which only the lowest views see at a grazing
angle (measured: the cube's surface moved out, F@1 % 0.900 → 0.770); the second alone would fill a closed
hollow that a view does see. Together they fill the hollow of a closed shell and leave an open box open.
Space carving by visibility is Kutulakos & Seitz, "A theory of shape by space carving" (IJCV 2000); the
closing is standard mathematical morphology (``scipy.ndimage``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from nerf.cameras import focal_from_fovy, get_rays

__all__ = ["depth_maps", "enclosed_mask", "fill_unseen", "unseen_mask"]


def _grid_points(n: int, box: np.ndarray) -> Tensor:
    """(n³, 3) float32 grid points over ``box`` (2, 3), flattened in [x, y, z] order."""
    lin = [torch.linspace(float(box[0, a]), float(box[1, a]), n) for a in range(3)]
    return torch.stack(torch.meshgrid(*lin, indexing="ij"), dim=-1).reshape(-1, 3)


def depth_maps(occupied: np.ndarray, box: np.ndarray, c2w: Tensor, fovy_deg: float, height: int,
               width: int) -> Tensor:
    """Distance along each pixel's ray to the first occupied grid point (nearest-point lookup).

    Args:
        occupied: bool array (n, n, n), grid points ``box[0] + (box[1] − box[0])·idx/(n − 1)``, indexed [x, y, z].
        box: (2, 3) float array, the grid's corners in the cameras' frame.
        c2w: Tensor (V, 4, 4), camera-to-world in the grid's frame (OpenGL axes, see ``nerf.cameras``).
        fovy_deg: vertical field of view, degrees.
        height, width: image size, pixels.

    Returns:
        float32 Tensor (V, H, W), distances in the grid's units (march step half the smallest cell; the error is
        at most that step plus half a cell); ``inf`` where the ray meets no occupied point.
    """
    n = occupied.shape[0]
    lo = torch.as_tensor(box[0], dtype=torch.float32)
    hi = torch.as_tensor(box[1], dtype=torch.float32)
    cell = (hi - lo) / (n - 1)
    origins, dirs = get_rays(c2w.float(), torch.tensor(float(fovy_deg)), height, width)
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) / safe, (hi - origins) / safe
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    flat = torch.from_numpy(np.ascontiguousarray(occupied)).reshape(-1)
    depth = torch.full((origins.shape[0],), float("inf"))
    rays = torch.nonzero(t_far > t_near)[:, 0]
    t = t_near[rays].clone()
    step = 0.5 * float(cell.min())
    while rays.numel() > 0:
        points = origins[rays] + t[:, None] * dirs[rays]
        ijk = ((points - lo) / cell).round().long().clamp_(0, n - 1)
        hit = flat[(ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]]
        depth[rays[hit]] = t[hit]
        t = t + step
        keep = ~hit & (t <= t_far[rays])
        rays, t = rays[keep], t[keep]
    return depth.reshape(c2w.shape[0], height, width)


def unseen_mask(occupied: np.ndarray, box: np.ndarray, c2w: Tensor, fovy_deg: float, height: int, width: int,
                margin_cells: float = 1.0, candidates: np.ndarray | None = None) -> np.ndarray:
    """Grid points that every view sees only behind its surface (condition 1 of the module doc).

    Args: as :func:`depth_maps`; ``margin_cells`` (>= 0) how far behind the depth map, in cells, a point must be;
        ``candidates`` (bool, like ``occupied``) the only points to test (None: all).

    Returns:
        bool array (n, n, n); a point that no view's image contains counts as unseen; False off the candidates.
    """
    n = occupied.shape[0]
    depth = depth_maps(occupied, box, c2w, fovy_deg, height, width)
    depth = -F.max_pool2d(-depth[:, None], 3, stride=1, padding=1)[:, 0]  # nearest of the 3×3 pixels
    test = np.ones(occupied.shape, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    index = torch.from_numpy(np.flatnonzero(test))
    points = _grid_points(n, box)[index]
    margin = margin_cells * float(np.max((box[1] - box[0]) / (n - 1)))
    focal = float(focal_from_fovy(fovy_deg, height))
    w2c = torch.linalg.inv(c2w.double()).float()
    unseen = torch.ones(points.shape[0], dtype=torch.bool)
    for v in range(c2w.shape[0]):
        cam = points @ w2c[v, :3, :3].T + w2c[v, :3, 3]
        z = -cam[:, 2]
        col = cam[:, 0] / z.clamp_min(1e-6) * focal + 0.5 * width
        row = -cam[:, 1] / z.clamp_min(1e-6) * focal + 0.5 * height
        inside = (z > 1e-6) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
        behind = cam.norm(dim=-1) > depth[v, row.long().clamp(0, height - 1), col.long().clamp(0, width - 1)] + margin
        unseen &= behind | ~inside
    out = np.zeros(n ** 3, dtype=bool)
    out[index.numpy()] = unseen.numpy()
    return out.reshape(n, n, n)


def enclosed_mask(occupied: np.ndarray, close_cells: int = 2) -> np.ndarray:
    """Empty grid points of the cavities that ``occupied`` encloses once breaches up to ~2·``close_cells`` wide are
    shut (condition 2 of the module doc). bool array like ``occupied``.

    The occupied points are grown by ``close_cells`` (>= 0) cells (a 3×3×3 structuring element); the empty
    components of the grown grid that do not touch the grid's boundary (6-neighbours) are the cavities, grown back
    by the same amount. A gap narrower than the growth (between two fingers) vanishes in the grown grid and is
    no cavity, so only hollows wider than ~2·``close_cells`` are filled.
    """
    cube = np.ones((3, 3, 3), dtype=bool)
    grown = ndimage.binary_dilation(occupied, cube, iterations=close_cells) if close_cells > 0 else occupied
    labels, _count = ndimage.label(~grown)
    faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    cavities = (labels > 0) & ~np.isin(labels, border)
    if close_cells > 0 and cavities.any():
        cavities = ndimage.binary_dilation(cavities, cube, iterations=close_cells)
    return cavities & ~occupied


def fill_unseen(volume: np.ndarray, box: np.ndarray, threshold: float, c2w: Tensor, fovy_deg: float, height: int,
                width: int, margin_cells: float = 1.0, close_cells: int = 2) -> np.ndarray:
    """A float32 copy of ``volume`` (n, n, n) whose unseen, enclosed empty points get twice ``threshold``.

    Args:
        volume: densities on the grid of :func:`depth_maps` (same units as ``threshold``).
        threshold: the isosurface threshold, > 0; points above it are occupied.
        Others: see :func:`unseen_mask` and :func:`enclosed_mask`.

    Raises:
        ValueError: a non-cubic volume, ``threshold`` <= 0, or negative margins.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or not threshold > 0 or margin_cells < 0 or close_cells < 0:
        raise ValueError(f"fill_unseen: need a cubic (n, n, n) volume, threshold > 0, margins >= 0; got "
                         f"{volume.shape}, {threshold}, {margin_cells}, {close_cells}")
    occupied = volume > threshold
    fill = enclosed_mask(occupied, close_cells)
    if fill.any():
        fill = unseen_mask(occupied, box, c2w, fovy_deg, height, width, margin_cells, candidates=fill)
    out = np.array(volume, dtype=np.float32, copy=True)
    out[fill] = np.float32(2.0 * threshold)
    return out
