"""Start a density field from the visual hull: fit it to the hull's occupancy before any photometric step.

The visual hull (``nerf.scene_box``) is a solid: every grid point that projects into every mask. Fitting the
density to it makes rays stop at the hull's surface from the first photometric step (few samples per ray). What
the photometric loss can then still change depends on what lies *behind* that surface. Behind a saturated solid
it can only carve by uncovering more solid, whose colour no view has constrained: a concavity the hull fills
(the lid over an open box, a recessed panel) is a local minimum. With a *shell* — the hull's cells within
``shell`` of its boundary occupied, the deeper ones empty — carving a lid uncovers empty space and the far walls,
and the photometric loss opens it. No view sees the empty inside of a closed shape, so nothing fills it in
training; the trainer fills it before marching cubes (``nerf.unseen_interior``), else it would be meshed as a
second, inner surface wherever training breaches the shell. ``ReconstructionConfig.hull_init_shell`` is 0 (off)
by default: from few, small views the shell is breached wider than the fill can close (issue 22 tables in
``benchmarks/README.md``).

Targets per hull grid point: ``occupancy`` inside the hull (within ``shell`` of its boundary when ``shell > 0``),
0 elsewhere; the field's occupancy of one hull cell, ``1 − exp(−σ·δ)`` (``δ`` the cell size), is fitted to them
by binary cross-entropy at uniform random points of the box, each taking its nearest grid point's target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.field import ImplicitVolume
from nerf.sdf import signed_distance_grid

__all__ = ["fit_density_to_hull", "hull_targets"]


def hull_targets(hull: Tensor, occupancy: float = 1.0, shell: float = 0.0) -> Tensor:
    """Target occupancy per hull grid point.

    Args:
        hull: bool Tensor with shape (G, G, G), indexed ``[x, y, z]``, grid points spanning ``[-1, 1]`` per axis
            (the normalised frame), G >= 2.
        occupancy: target inside, in (0, 1].
        shell: > 0: only hull points whose distance to the hull's boundary is below ``shell`` (normalised units;
            the boundary runs half a spacing outside the last hull point) are occupied; 0: the solid hull.

    Returns:
        float32 Tensor with shape (G, G, G), on the hull's device.

    Raises:
        ValueError: ``occupancy`` outside (0, 1] or ``shell`` < 0.
    """
    if not 0.0 < occupancy <= 1.0 or not shell >= 0.0:
        raise ValueError(f"hull_targets: need 0 < occupancy <= 1 and shell >= 0, got {occupancy}, {shell}")
    inside = hull.bool()
    targets = inside.float() * occupancy
    if shell > 0 and bool(inside.any()) and not bool(inside.all()):
        depth = -signed_distance_grid(inside, 2.0 / (hull.shape[0] - 1)).to(hull.device)  # > 0 inside
        targets[inside & (depth >= shell)] = 0.0
    return targets


def fit_density_to_hull(field: ImplicitVolume, targets: Tensor, steps: int, n_points: int, lr: float,
                        generator: torch.Generator) -> float:
    """Fit ``1 − exp(−σ·δ)`` to ``targets`` (BCE) at ``n_points`` uniform points per step.

    Args:
        field: the density field (normalised frame, radius 1); its parameters are updated in place.
        targets: float Tensor with shape (G, G, G) in [0, 1] (:func:`hull_targets`); ``δ = 2 / (G − 1)``.
        steps: Adam steps (``lr``, betas 0.9 / 0.99, eps 1e-15, a fresh optimiser); 0 does nothing.
        n_points: points per step, >= 1.
        lr: learning rate.
        generator: CPU generator for the points.

    Returns:
        the last loss value (0.0 when ``steps`` is 0).
    """
    g = targets.shape[0]
    delta = 2.0 / (g - 1)
    labels = targets.reshape(-1).float()
    device = next(field.parameters()).device
    optimizer = torch.optim.Adam(field.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    loss = torch.zeros(())
    for _ in range(steps):
        points = torch.rand(n_points, 3, generator=generator) * 2.0 - 1.0
        ijk = ((points + 1.0) / delta).round().long().clamp_(0, g - 1)
        target = labels[(ijk[:, 0] * g + ijk[:, 1]) * g + ijk[:, 2]].to(device)
        density = field.density(points.to(device))
        occupancy = (1.0 - torch.exp(-density * delta)).clamp(1e-5, 1.0 - 1e-5)
        loss = F.binary_cross_entropy(occupancy, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
