"""Which pixels of posed views a photometric trainer draws its rays from.

Pixels are named by flat indices ``frame * H * W + row * W + col`` into the views' stacked images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerf.datasets.blender import ViewDataset
from nerf.occupancy_grid import ray_aabb_intersect
from nerf.scene_box import SceneFrame

__all__ = ["interior_triplets", "useful_pixels"]


def useful_pixels(views: ViewDataset, frame: SceneFrame) -> Tensor:
    """Flat pixel indices (M,), int64, of the pixels whose rays meet the normalised box ``[-1, 1]^3``.

    Raises:
        ValueError: no ray meets the box.
    """
    n, h, w = views.num_views, views.height, views.width
    idx = torch.arange(n * h * w)
    keep = []
    for start in range(0, idx.shape[0], 1 << 20):  # bounded memory for large datasets
        part = idx[start : start + (1 << 20)]
        image, rest = part // (h * w), part % (h * w)
        rays_o, rays_d = views.rays(image, rest // w, rest % w)
        _, _, hit = ray_aabb_intersect(frame.to_normalised(rays_o), rays_d,
                                       torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))
        keep.append(part[hit])
    pixels = torch.cat(keep)
    if pixels.numel() == 0:
        raise ValueError("ReconstructionTrainer: no camera ray meets the scene box")
    return pixels


def interior_triplets(views: ViewDataset, stride: int) -> tuple[Tensor, Tensor]:
    """Row and column pixel triplets ``(c - o, c, c + o)`` fully inside the masks.

    Args:
        views: posed views; only those with alpha contribute.
        stride: pixels between a triplet's neighbours (>= 1).

    Returns:
        centres: Tensor with shape (M,), flat indices of the middle pixels whose triplet is fully covered
            (alpha >= 0.99 at all three).
        offsets: Tensor with shape (M,), ``stride`` for rows, ``stride * W`` for columns.
    """
    s = stride
    n, h, w = views.num_views, views.height, views.width
    full = (views.alpha[..., 0] >= 0.99) & views.has_alpha[:, None, None]  # (N, H, W)
    flat = torch.arange(n * h * w).reshape(n, h, w)
    rows = full[:, :, 2 * s:] & full[:, :, s:-s] & full[:, :, :-2 * s]
    cols = full[:, 2 * s:, :] & full[:, s:-s, :] & full[:, :-2 * s, :]
    centres = torch.cat([flat[:, :, s:-s][rows], flat[:, s:-s, :][cols]])
    offsets = torch.cat([torch.full((int(rows.sum()),), s), torch.full((int(cols.sum()),), s * w)])
    return centres, offsets
