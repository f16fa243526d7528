"""Packed volume rendering: transmittance, weights and accumulation along rays (nerfacc 0.5 semantics).

Samples are *packed*: flat tensors of shape (S,) — ``t_starts``, ``t_ends``, per-sample densities or
opacities — plus ``ray_indices`` (int64, shape (S,), sorted ascending) saying which of ``n_rays`` rays each sample
belongs to. Rays may own zero samples. Every function here is differentiable w.r.t. densities / opacities /
values (not w.r.t. ``t_starts``, ``t_ends`` or ``ray_indices``) and contains no Python loop over rays or samples.

The quadrature is the standard emission-absorption model (Max 1995; Mildenhall et al. 2020)::

    alpha_i = 1 - exp(-sigma_i * (t_end_i - t_start_i))
    T_i     = prod_{j < i, same ray} (1 - alpha_j)
    w_i     = T_i * alpha_i

matching ``nerfacc/volrend.py`` (``render_weight_from_density``, ``accumulate_along_rays``).

Examples:
    >>> alphas = torch.tensor([0.0, 0.0, 0.3, 0.8, 0.8])
    >>> render_transmittance_from_alpha(alphas, torch.zeros(5, dtype=torch.long), n_rays=1)
    tensor([1.0000, 1.0000, 1.0000, 0.7000, 0.1400])
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "accumulate_along_rays",
    "exclusive_sum_per_ray",
    "render_transmittance_from_alpha",
    "render_transmittance_from_density",
    "render_visibility_from_density",
    "render_weight_from_alpha",
    "render_weight_from_density",
    "visible_in_rounds",
]


def exclusive_sum_per_ray(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Segmented exclusive cumulative sum: for every sample, the sum of the earlier samples of its ray.

    The running sum is taken in float64 over the whole packed tensor and each ray's offset is subtracted, so
    long batches keep full float32 precision per ray.

    Args:
        values: Tensor with shape (S,), any float dtype.
        ray_indices: Tensor with shape (S,), int64, sorted ascending, each in [0, n_rays).
        n_rays: number of rays R.

    Returns:
        Tensor with shape (S,), dtype of ``values``; the first sample of each ray gets 0. Differentiable w.r.t.
        ``values``.
    """
    if values.numel() == 0:
        return values.clone()
    v64 = values.to(torch.float64)
    exclusive = torch.cumsum(v64, dim=0) - v64
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, dim=0) - counts  # (R,) index of each ray's first sample
    return (exclusive - exclusive[first[ray_indices]]).to(values.dtype)


def render_transmittance_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Transmittance before each sample, the exclusive product of ``(1 - alpha)`` along its ray.

    Computed as ``exp(exclusive_sum(log(1 - alpha)))`` in float64; an opacity of exactly 1 is clamped to
    ``1 - 1e-300`` inside the log, so later samples get a transmittance of ~0 (not NaN) and that sample receives no
    gradient through the transmittance of its successors.

    Args:
        alphas: Tensor with shape (S,), opacities in [0, 1].
        ray_indices: Tensor with shape (S,), int64, sorted ascending.
        n_rays: number of rays.

    Returns:
        Tensor with shape (S,), in [0, 1], dtype of ``alphas``.

    Examples:
        >>> render_transmittance_from_alpha(torch.tensor([0.4, 0.8, 0.1, 0.8]), torch.tensor([0, 0, 0, 1]), 2)
        tensor([1.0000, 0.6000, 0.1200, 1.0000])
    """
    log_keep = torch.log1p(-alphas.to(torch.float64)).clamp_min(-690.0)  # exp(-690) ~ 1e-300
    return torch.exp(exclusive_sum_per_ray(log_keep, ray_indices, n_rays)).to(alphas.dtype)


def render_transmittance_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor]:
    """Transmittance and opacity of every sample from densities.

    Args:
        t_starts: Tensor with shape (S,), interval starts along the ray (world units).
        t_ends: Tensor with shape (S,), interval ends (>= ``t_starts``).
        sigmas: Tensor with shape (S,), densities >= 0 (1 / world units).
        ray_indices: Tensor with shape (S,), int64, sorted ascending.
        n_rays: number of rays.

    Returns:
        transmittance: Tensor with shape (S,), ``exp(-sum of sigma * dt over earlier samples of the ray)``.
        alphas: Tensor with shape (S,), ``1 - exp(-sigma * dt)``.
    """
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = -torch.expm1(-sigmas_dt)
    transmittance = torch.exp(-exclusive_sum_per_ray(sigmas_dt, ray_indices, n_rays))
    return transmittance, alphas


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Volume-rendering weights from densities (nerfacc ``render_weight_from_density``).

    Args:
        t_starts, t_ends: Tensors with shape (S,), interval bounds along the ray (world units).
        sigmas: Tensor with shape (S,), densities >= 0.
        ray_indices: Tensor with shape (S,), int64, sorted ascending.
        n_rays: number of rays.

    Returns:
        weights: Tensor with shape (S,), ``T * alpha`` in [0, 1]; per ray they sum to the opacity (<= 1).
        transmittance: Tensor with shape (S,).
        alphas: Tensor with shape (S,).

    Examples:
        >>> w, t, a = render_weight_from_density(
        ...     torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]),
        ...     torch.tensor([0, 0]), n_rays=1)
        >>> w  # (1 - e^-1), e^-1 (1 - e^-1)
        tensor([0.6321, 0.2325])
    """
    transmittance, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return transmittance * alphas, transmittance, alphas


def render_weight_from_alpha(alphas: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Weights ``T * alpha`` and transmittance ``T`` from opacities, each a Tensor with shape (S,)."""
    transmittance = render_transmittance_from_alpha(alphas, ray_indices, n_rays)
    return transmittance * alphas, transmittance


@torch.no_grad()
def render_visibility_from_density(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
) -> Tensor:
    """Which samples matter: ``T >= early_stop_eps`` and, if ``alpha_thre > 0``, ``alpha >= alpha_thre``.

    Same rule as nerfacc ``render_visibility_from_density`` (``nerfacc/volrend.py``). Not differentiable.

    Args:
        t_starts, t_ends, sigmas, ray_indices, n_rays: as in :func:`render_weight_from_density`.
        early_stop_eps: transmittance below which the rest of a ray is dropped.
        alpha_thre: opacity below which a sample is dropped (0 disables the test).

    Returns:
        Tensor with shape (S,), bool.
    """
    transmittance, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    visible = transmittance >= early_stop_eps
    if alpha_thre > 0.0:
        visible &= alphas >= alpha_thre
    return visible


def accumulate_along_rays(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Weighted sum of per-sample values for every ray.

    Args:
        weights: Tensor with shape (S,).
        values: Tensor with shape (S, D), or None to sum the weights themselves (opacity, D = 1).
        ray_indices: Tensor with shape (S,), int64 in [0, n_rays) (need not be sorted here).
        n_rays: number of rays R.

    Returns:
        Tensor with shape (R, D); rays without samples get 0. Differentiable w.r.t. ``weights`` and ``values``.

    Raises:
        ValueError: if ``values`` is not 2-D with S rows.

    Examples:
        >>> accumulate_along_rays(torch.tensor([0.5, 0.25, 1.0]), None, torch.tensor([0, 0, 2]), 3)
        tensor([[0.7500],
                [0.0000],
                [1.0000]])
    """
    if values is None:
        src = weights.unsqueeze(-1)
    else:
        if values.dim() != 2 or values.shape[0] != weights.shape[0]:
            raise ValueError(
                f"accumulate_along_rays: values must have shape (S, D) with S={weights.shape[0]}, "
                f"got {tuple(values.shape)}"
            )
        src = weights.unsqueeze(-1) * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


@torch.no_grad()
def visible_in_rounds(
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    sigma_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    early_stop_eps: float,
    alpha_thre: float = 0.0,
    first_round: int = 16,
) -> Tensor:
    """The samples of :func:`~nerf.volrend.render_visibility_from_density`, querying densities front to back.

    Marching a solid object through an occupancy grid yields every step of every occupied cell along a ray, the
    object's whole interior included, although transmittance dies within a few steps of the surface. Instead of
    one ``sigma_fn`` call on all candidates, the candidates are taken in rounds (the next ``first_round``, then
    twice as many per round) of the rays still transparent: a ray leaves once its transmittance after the
    round is below ``early_stop_eps``, since every later sample of it would be dropped. The result is the same
    mask (up to float rounding of the running optical depth); on the cube of ``benchmarks/hard_shapes.py`` the
    density queries fall about tenfold.

    Args:
        t_starts, t_ends: Tensors with shape (S,), interval bounds (world units), packed per ray.
        ray_indices: Tensor with shape (S,), int64, sorted ascending (each ray's samples front to back).
        n_rays: number of rays R.
        sigma_fn: ``(t_starts, t_ends, ray_indices) -> sigmas`` on a subset, all shape (M,).
        early_stop_eps: transmittance threshold (samples with T < eps are dropped), >= 0.
        alpha_thre: opacity threshold (samples with alpha < alpha_thre are dropped; 0 disables).
        first_round: candidates per ray in the first round (>= 1).

    Returns:
        Tensor with shape (S,), bool: the samples to keep.

    Raises:
        ValueError: ``sigma_fn`` returned the wrong shape.
    """
    n = t_starts.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=t_starts.device)
    if n == 0:
        return keep
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(n, device=t_starts.device) - first[ray_indices]  # index of a sample in its ray
    depth = torch.zeros(n_rays, dtype=torch.float64, device=t_starts.device)  # optical depth so far
    alive = torch.ones(n_rays, dtype=torch.bool, device=t_starts.device)
    start, size, longest = 0, max(int(first_round), 1), int(counts.max())
    while start < longest:
        chosen = torch.nonzero((position >= start) & (position < start + size) & alive[ray_indices])[:, 0]
        if chosen.numel() == 0:
            break
        rays = ray_indices[chosen]
        sigmas = sigma_fn(t_starts[chosen], t_ends[chosen], rays)
        if sigmas.shape != chosen.shape:
            raise ValueError(f"sigma_fn must return shape {tuple(chosen.shape)}, got {tuple(sigmas.shape)}")
        sigmas_dt = (sigmas * (t_ends[chosen] - t_starts[chosen])).to(torch.float64)
        before = depth[rays] + exclusive_sum_per_ray(sigmas_dt, rays, n_rays)
        visible = torch.exp(-before) >= early_stop_eps
        if alpha_thre > 0.0:
            visible &= -torch.expm1(-sigmas_dt) >= alpha_thre
        keep[chosen] = visible
        depth.index_add_(0, rays, sigmas_dt)
        alive &= torch.exp(-depth) >= early_stop_eps
        start, size = start + size, 2 * size
    return keep
