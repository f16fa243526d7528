"""Open what the visual hull closes: concavities that photo-inconsistency gives away, carved along the rays.

The visual hull (``nerf.scene_box``) closes every concavity that no silhouette shows: the top of an open box is a
lid. Fitted as a solid (``nerf.trainers.hull_init``), such a lid is a local minimum of the photometric loss:
carving a layer of it uncovers more solid whose colour no view constrains. This module finds those regions before
training and empties the hull behind them, so that carving the lid uncovers empty space and the true far surfaces.

1. **Depth maps** of the hull in every view (:func:`nerf.unseen_interior.depth_maps`).
2. **Photo-consistency** of the hull's boundary points (hull points with an empty 6-neighbour): each is looked up
   in every view where it is the first hull point along its pixel's ray (within ``visible_cells`` cells of the
   depth map) and that pixel is solid foreground (alpha ≥ 0.99, no silhouette edge). A point of the true surface
   has one colour in all those views when the shading does not depend on the view (Lambert under fixed lights, an
   albedo); a point of a lid over a cavity shows whatever lies below it, a different surface per view. Points seen
   in at least ``min_views`` views whose colour standard deviation (RGB, mean over channels) exceeds
   ``colour_std`` are *inconsistent*.
3. **Regions, not edges**: a hull voxel on a sharp edge also mixes two faces' shades. Only inconsistent points
   whose neighbourhood (a cube of ``2·region_cells + 1`` points) is mostly inconsistent (share of the judged
   boundary points ≥ ``region_share``) and whose 26-connected patch holds at least ``region_min_share`` of the
   boundary points are kept: a lid is a wide patch of them, an edge a strip one or two points wide.
4. **Carving**: every foreground pixel whose first hull point is in a kept region casts its ray on through the
   hull; the hull points it crosses before leaving the hull that lie at least ``shell`` inside the hull's
   boundary are emptied. What stays is a shell: the lid (which photometric training then opens, since empty
   space lies behind it), the walls and the floor.
5. **Only large concavities**: when fewer than ``min_carved_share`` of the hull's points would go, nothing is
   carved (a false patch on a thin shape, where every boundary point is near an edge).

When something was carved, the trainer (:class:`nerf.trainers.photometric.ReconstructionTrainer`) fits the hull
for at least ``fit_steps`` steps and adds a volume pressure of at least ``lambda_volume``: the shells left behind
are one grid cell thick, and without both the photometric phase thickened the open box's walls and floor to
2–2.5× (issue 22: F@1 % 0.671 with the plain recipe, 0.875 with 150 fit steps, 0.924 with the pressure too; the
measurements are in ``benchmarks/README.md``).

The classic algorithm removes inconsistent voxels one layer at a time (Kutulakos & Seitz, "A theory of shape by
space carving", IJCV 2000); on grey Lambert views at 128² that either removed nothing or ate through edges (issue
22, ``benchmarks/README.md``). Carving whole rays from wide inconsistent patches needs one pass and leaves edges
alone. The emptied inside of a closed shape, if any, is filled before marching cubes where no view sees it
(``nerf.unseen_interior.fill_unseen``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from nerf.cameras import focal_from_fovy, get_rays
from nerf.sdf import signed_distance_grid
from nerf.unseen_interior import depth_maps

__all__ = ["CarveConfig", "CarveReport", "carve_inconsistent"]


@dataclass(frozen=True)
class CarveConfig:
    """Settings of :func:`carve_inconsistent` (lengths in the normalised frame, box ``[-1, 1]^3``)."""

    colour_std: float = 0.05
    """A boundary point is inconsistent above this RGB standard deviation across its views (colours in [0, 1])."""
    min_views: int = 3
    """Views a boundary point must be judged in (>= 2)."""
    visible_cells: float = 1.5
    """A point is the first hull point of its pixel when within this many cells of the pixel's depth (> 0)."""
    region_cells: int = 2
    """Half-size, in grid points, of the neighbourhood of step 3 (>= 0)."""
    region_share: float = 0.6
    """Share of inconsistent points among the judged boundary points of that neighbourhood, in (0, 1]."""
    region_min_share: float = 0.02
    """A region (26-connected) must hold this share of the hull's boundary points, in [0, 1)."""
    shell: float = 0.04
    """Only hull points at least this far inside the hull's boundary are carved (normalised units, > 0): the
    thickness of the lid and the far walls that training starts from."""
    min_carved_share: float = 0.2
    """Carve only when at least this share of the hull's points would go, in [0, 1): a concavity that the hull
    closes and the colours give away is large (the open box: 85 %); a few hundred points in a thin shape are not
    one (the shared human figure: 8 %, where the carved recipe costs F@1 % 0.996 → 0.850)."""
    fit_steps: int = 150
    """Hull-fit steps when anything was carved (the trainer uses the larger of this and its own), >= 0: the thin
    shells left behind need a saturated start, else photometric training thickens them inward."""
    lambda_volume: float = 0.1
    """Volume pressure when anything was carved (the trainer uses the larger of this and its own), >= 0: the inner
    faces of thin walls are flat, of one colour and inside every silhouette, so nothing else pins them."""

    def __post_init__(self) -> None:
        if not (self.colour_std > 0 and self.min_views >= 2 and self.visible_cells > 0 and self.region_cells >= 0
                and 0 < self.region_share <= 1 and 0 <= self.region_min_share < 1 and self.shell > 0
                and 0 <= self.min_carved_share < 1 and self.fit_steps >= 0 and self.lambda_volume >= 0):
            raise ValueError(f"CarveConfig: out of range: {self}")


@dataclass(frozen=True)
class CarveReport:
    """What :func:`carve_inconsistent` found, in grid points: the hull's ``boundary`` points, those ``judged``
    (seen in enough views), ``inconsistent`` ones, those in kept patches (``region``), the ``candidates`` to carve
    and the points ``carved`` (0 when the candidates were fewer than ``min_carved_share`` of the hull)."""

    boundary: int
    judged: int
    inconsistent: int
    region: int
    candidates: int
    carved: int


def _grid_points(index: np.ndarray, n: int) -> Tensor:
    """(K, 3) float32 coordinates in [-1, 1] of flat indices ``index`` of an n³ grid ([x, y, z] order)."""
    ijk = np.stack(np.unravel_index(index, (n, n, n)), axis=-1)
    return torch.from_numpy(ijk.astype(np.float32) * (2.0 / (n - 1)) - 1.0)


def _project(points: Tensor, w2c: Tensor, focal: float, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel row, column (long) and distance to the camera of ``points`` (K, 3); rows < 0 off the image."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = -cam[:, 2]
    col = cam[:, 0] / z.clamp_min(1e-6) * focal + 0.5 * width
    row = -cam[:, 1] / z.clamp_min(1e-6) * focal + 0.5 * height
    inside = (z > 1e-6) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    row = torch.where(inside, row.long(), torch.full_like(row, -1, dtype=torch.long))
    return row, col.long().clamp(0, width - 1), cam.norm(dim=-1)


def carve_inconsistent(hull: Tensor, rgb: Tensor, alpha: Tensor, c2w: Tensor, fovy_deg: float,
                       config: CarveConfig | None = None) -> tuple[Tensor, CarveReport]:
    """The hull with the photo-inconsistent concavities' insides emptied (module doc, steps 1–4).

    Args:
        hull: bool Tensor (G, G, G), indexed [x, y, z], grid points spanning ``[-1, 1]`` per axis, G >= 8.
        rgb: float Tensor (V, H, W, 3) in [0, 1], straight colour of the views.
        alpha: float Tensor (V, H, W, 1) in [0, 1].
        c2w: Tensor (V, 4, 4), camera-to-world in the hull's (normalised) frame, OpenGL axes.
        fovy_deg: vertical field of view, degrees.
        config: thresholds (default :class:`CarveConfig`).

    Returns:
        (bool Tensor (G, G, G) on the CPU: the hull minus the carved points, :class:`CarveReport`).
    """
    cfg = config or CarveConfig()
    n = hull.shape[0]
    cell = 2.0 / (n - 1)
    occupied = hull.cpu().numpy().astype(bool)
    v_count, height, width = rgb.shape[:3]
    box = np.array([[-1.0] * 3, [1.0] * 3])
    c2w = c2w.float().cpu()
    depth = depth_maps(occupied, box, c2w, fovy_deg, height, width)  # (V, H, W)
    solid = alpha[..., 0].cpu() >= 0.99
    rgb = rgb.cpu().float()

    # 2. colour statistics of the boundary points over the views that see them first
    boundary = occupied & ~ndimage.binary_erosion(occupied, border_value=0)
    index = np.flatnonzero(boundary)
    points = _grid_points(index, n)
    focal = float(focal_from_fovy(fovy_deg, height))
    w2c = torch.linalg.inv(c2w.double()).float()
    total = torch.zeros(len(index), 3)
    square = torch.zeros(len(index), 3)
    count = torch.zeros(len(index))
    for v in range(v_count):
        row, col, dist = _project(points, w2c[v], focal, height, width)
        seen = row >= 0
        r = row.clamp_min(0)
        seen &= (dist - depth[v, r, col]).abs() <= cfg.visible_cells * cell
        seen &= solid[v, r, col]
        colour = rgb[v, r, col] * seen[:, None]
        total += colour
        square += colour * colour
        count += seen.float()
    judged = count >= cfg.min_views
    mean = total / count.clamp_min(1.0)[:, None]
    std = (square / count.clamp_min(1.0)[:, None] - mean * mean).clamp_min(0.0).sqrt().mean(-1)
    bad = judged & (std > cfg.colour_std)

    # 3. keep wide inconsistent patches
    def grid_of(values: Tensor) -> np.ndarray:
        out = np.zeros(n ** 3, dtype=np.float32)
        out[index] = values.float().numpy()
        return out.reshape(n, n, n)

    size = 2 * cfg.region_cells + 1
    bad_sum = ndimage.uniform_filter(grid_of(bad), size, mode="constant")
    judged_sum = ndimage.uniform_filter(grid_of(judged), size, mode="constant")
    region = grid_of(bad).astype(bool) & (bad_sum >= cfg.region_share * np.maximum(judged_sum, 1e-9))
    labels, _ = ndimage.label(region, np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    big = np.flatnonzero(sizes >= cfg.region_min_share * len(index))
    region = np.isin(labels, big[big > 0])
    region_np = ndimage.binary_dilation(region, iterations=1)  # the depth lookup is off by up to a cell

    # 4. carve along the rays whose first hull point is in a region
    carved = np.zeros(n ** 3, dtype=bool)
    if region.any():
        flat_hull = torch.from_numpy(occupied.reshape(-1))
        flat_region = torch.from_numpy(region_np.reshape(-1))
        deep = torch.from_numpy((-signed_distance_grid(hull.cpu().bool(), cell).cpu().numpy() >= cfg.shell).reshape(-1))
        origins, dirs = get_rays(c2w, torch.tensor(float(fovy_deg)), height, width)
        step = 0.5 * cell
        for v in range(v_count):
            o, d, t0 = origins[v].reshape(-1, 3), dirs[v].reshape(-1, 3), depth[v].reshape(-1)
            ok = torch.isfinite(t0) & solid[v].reshape(-1)
            rays = torch.nonzero(ok)[:, 0]
            if rays.numel() == 0:
                continue
            hit = o[rays] + t0[rays, None] * d[rays]
            ijk = ((hit + 1.0) / cell).round().long().clamp_(0, n - 1)
            rays = rays[flat_region[(ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]]]
            if rays.numel() == 0:
                continue
            ts = torch.arange(0.0, 2.0 * 3 ** 0.5 + step, step)  # offsets past the entry
            pts = o[rays, None] + (t0[rays, None, None] + ts[None, :, None]) * d[rays, None]
            ijk = ((pts + 1.0) / cell).round().long()
            in_box = ((ijk >= 0) & (ijk < n)).all(-1)
            flat = (ijk.clamp(0, n - 1) * torch.tensor([n * n, n, 1])).sum(-1)
            inside = flat_hull[flat] & in_box
            # the exit: the first sample past the entry shell that is outside the hull
            past = ts[None, :] >= cfg.shell
            leave = (~inside & past).float()
            first_out = torch.where(leave.any(-1), leave.argmax(-1), torch.full((len(rays),), len(ts) - 1))
            carve = past & (ts[None, :] < ts[first_out][:, None]) & deep[flat]
            carved[flat[carve].numpy()] = True
    carved &= occupied.reshape(-1)
    candidates = int(carved.sum())
    if candidates < cfg.min_carved_share * int(occupied.sum()):
        carved[:] = False
    out = torch.from_numpy(occupied.reshape(-1) & ~carved).reshape(n, n, n)
    report = CarveReport(boundary=int(boundary.sum()), judged=int(judged.sum()), inconsistent=int(bad.sum()),
                         region=int(region.sum()), candidates=candidates, carved=int(carved.sum()))
    return out, report
