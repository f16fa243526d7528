"""Regularisers of threestudio's Zero123 system (``threestudio/systems/zero123.py``); their weights are
scheduled with :func:`nerf.schedules.ramp`.

Examples:
    >>> round(float(sparsity_loss(torch.zeros(2, 1))), 6)  # sqrt(0.01)
    0.1
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "disparity_curvature_loss",
    "distortion_loss",
    "normal_difference_sum",
    "normal_smoothness_2d",
    "normal_smoothness_3d",
    "opaque_loss",
    "orientation_loss",
    "orientation_sum",
    "sparsity_loss",
]


def orientation_sum(weights: Tensor, normals: Tensor, t_dirs: Tensor) -> Tensor:
    """Numerator of :func:`orientation_loss`, ``sum(weights.detach() * relu(normal . dir)^2)`` (a scalar), so that
    it can be summed chunk by chunk over the samples (shapes as there)."""
    facing_away = (normals * t_dirs).sum(-1).clamp_min(0.0)
    return (weights.detach() * facing_away.square()).sum()


def normal_difference_sum(normals: Tensor, perturbed_normals: Tensor) -> Tensor:
    """Numerator of :func:`normal_smoothness_3d`, ``sum(|normals - perturbed_normals|)`` over all S × 3 entries."""
    return (normals - perturbed_normals).abs().sum()


def orientation_loss(weights: Tensor, normals: Tensor, t_dirs: Tensor, opacity: Tensor) -> Tensor:
    """Penalise visible normals that face away from the camera (Ref-NeRF / DreamFusion orientation loss).

    ``sum(weights.detach() * relu(normal . dir)^2) / count(opacity > 0)``; with no ray of positive opacity the
    denominator is taken as 1.

    Args:
        weights: Tensor with shape (S,), packed rendering weights (detached here).
        normals: Tensor with shape (S, 3), unit outward normals.
        t_dirs: Tensor with shape (S, 3), ray directions of the samples (camera -> scene).
        opacity: Tensor with shape (..., 1), per-ray opacity.

    Returns:
        Scalar Tensor, >= 0, differentiable w.r.t. ``normals``.
    """
    n_visible = (opacity > 0).sum().clamp_min(1)
    return orientation_sum(weights, normals, t_dirs) / n_visible


def sparsity_loss(opacity: Tensor) -> Tensor:
    """``mean(sqrt(opacity^2 + 0.01))``, a smooth L1 pushing opacity to 0. Opacity: Tensor with shape (..., 1)."""
    return (opacity.square() + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the opacity, pushing it to 0 or 1.

    The opacity is clamped to ``[1e-3, 1 - 1e-3]`` and compared with itself by binary cross-entropy
    (threestudio ``binary_cross_entropy(o, o)``), i.e. ``mean(-(o log o + (1 - o) log(1 - o)))``.

    Args:
        opacity: Tensor with shape (..., 1), in [0, 1].

    Returns:
        Scalar Tensor in [0, log 2].
    """
    o = opacity.clamp(1.0e-3, 1.0 - 1.0e-3)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def normal_smoothness_2d(normal_map: Tensor) -> Tensor:
    """Squared differences of neighbouring pixels of rendered normal maps (threestudio ``loss_normal_smooth``).

    ``mean((n[:, 1:] − n[:, :−1])²) + mean((n[:, :, 1:] − n[:, :, :−1])²)``: vertical plus horizontal neighbours.

    Args:
        normal_map: Tensor with shape (B, H, W, 3), e.g. :attr:`nerf.renderer.RenderOutput.normal_map`
            (``(n + 1) / 2 · opacity``, in [0, 1]); H, W >= 2.

    Returns:
        Scalar Tensor >= 0, differentiable w.r.t. ``normal_map``.
    """
    vertical = (normal_map[:, 1:] - normal_map[:, :-1]).square().mean()
    horizontal = (normal_map[:, :, 1:] - normal_map[:, :, :-1]).square().mean()
    return vertical + horizontal


def normal_smoothness_3d(normals: Tensor, perturbed_normals: Tensor) -> Tensor:
    """Mean absolute difference between normals at sample points and at jittered copies of those points
    (threestudio ``loss_3d_normal_smooth``; its renderer jitters by N(0, 0.01²) in world units).

    Args:
        normals: Tensor with shape (S, 3), unit normals at the samples.
        perturbed_normals: Tensor with shape (S, 3), unit normals at the jittered samples.

    Returns:
        Scalar Tensor in [0, 2], differentiable w.r.t. both.
    """
    return normal_difference_sum(normals, perturbed_normals) / normals.numel()


def disparity_curvature_loss(depth: Tensor, opacity: Tensor, eps: float = 1e-3) -> Tensor:
    """Second-order smoothness of disparity along pixel triplets: an L1 prior that keeps flat faces flat.

    The inverse of the camera-space depth (distance along the optical axis) of a plane is an affine function of
    the pixel coordinates, so its second difference along three equally spaced pixels of one row or column is
    zero on any plane and large only across creases and depth edges. Its L1 norm is the total variation of the
    disparity's slope: it favours piecewise-planar surfaces with few creases (the second-order stereo prior of
    Woodford et al., "Global stereo reconstruction under second-order smoothness priors", TPAMI 2009), so an
    untextured face whose depth no colour pins settles on the plane through its edges instead of bulging or
    denting between them.

    Args:
        depth: Tensor with shape (T, 3): ``sum(w * z)`` of the three rays of each triplet, z the camera-space
            depth of a sample (ray length × cosine between ray and optical axis; any length unit).
        opacity: Tensor with shape (T, 3): their accumulated weights, in [0, 1]; the expected depth is
            ``depth / opacity``.
        eps: lower bound on the opacity and on the expected depth (same unit as ``depth``), > 0.

    Returns:
        Scalar Tensor: mean over triplets of ``|d0 - 2 d1 + d2| / d1`` with ``d = opacity / depth`` (dimensionless,
        >= 0; 0 when the three surface points lie on one plane).
    """
    expected = depth / opacity.clamp_min(eps)
    disparity = 1.0 / expected.clamp_min(eps)
    second = disparity[:, 0] - 2.0 * disparity[:, 1] + disparity[:, 2]
    return (second.abs() / disparity[:, 1].detach()).mean()


def distortion_loss(weights: Tensor, t_mid: Tensor, t_delta: Tensor | float, ray_indices: Tensor,
                    n_rays: int) -> Tensor:
    """Distortion loss of mip-NeRF 360 (Barron et al., CVPR 2022, eq. 15) on packed samples: small when each ray's
    weight sits in one short interval, so a surface becomes a step in density rather than a ramp.

    ``L = sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i`` per ray, the double sum computed in O(S) with
    exclusive prefix sums inside each ray: ``sum_ij w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_i - (wm)_i)`` with
    ``W_i``, ``(wm)_i`` the sums over the ray's earlier samples.

    Args:
        weights: Tensor with shape (S,), packed sample weights in [0, 1].
        t_mid: Tensor with shape (S,), interval midpoints along the ray (length units of the ray), increasing
            within a ray.
        t_delta: Tensor with shape (S,) or a float, interval lengths (same unit).
        ray_indices: Tensor with shape (S,), int64, each sample's ray, sorted (samples of one ray contiguous).
        n_rays: rays in the batch (> 0).

    Returns:
        Scalar Tensor: mean over rays, in the length unit of ``t_mid`` (>= 0; 0 for empty rays).
    """
    if weights.numel() == 0:
        return weights.sum()
    wm = weights * t_mid
    cum_w, cum_wm = torch.cumsum(weights, 0) - weights, torch.cumsum(wm, 0) - wm  # exclusive, over the batch
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    start = torch.cummax(torch.where(first, torch.arange(first.numel(), device=first.device), 0), 0).values
    before_w, before_wm = cum_w - cum_w[start], cum_wm - cum_wm[start]  # within the sample's own ray
    pairs = 2.0 * weights * (t_mid * before_w - before_wm)
    return (pairs.sum() + (weights.square() * t_delta).sum() / 3.0) / n_rays
