"""Packed ray samples (nerfacc layout): the stratified lattice anchors, the samples of a batch, chunks of whole rays.

:func:`near_planes` draws the stratified jitter for both samplers of :class:`~nerf.occupancy_grid.OccupancyGrid`
(PyTorch and nerfacc); :class:`RaySamples` is what :meth:`nerf.renderer.VolumeRenderer.sample` returns and
:func:`chunk_bounds` splits it into the chunks that :meth:`nerf.renderer.VolumeRenderer.render_samples` recomputes
in the backward pass (:class:`SampleChunk` is what per-sample loss terms see of one chunk).

Examples:
    >>> samples = RaySamples(torch.tensor([0, 0, 0, 2, 2]), torch.zeros(5), torch.ones(5), n_rays=3)
    >>> chunk_bounds(samples, 2)  # (ray start, ray stop, sample start, sample stop)
    [(0, 1, 0, 3), (1, 3, 3, 5)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["RaySamples", "SampleChunk", "SampleTerms", "chunk_bounds", "interval_points", "near_planes"]


def near_planes(
    n_rays: int,
    near_plane: float,
    render_step_size: float,
    stratified: bool,
    like: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-ray anchors of the step lattice: ``near_plane``, shifted by ``U(0, 1) * dt`` when stratified.

    The one place the stratified jitter is drawn, for both backends: the PyTorch marcher anchors its lattice here,
    and nerfacc gets the same values as ``t_min`` with ``stratified=False`` (it then starts every ray at
    ``max(near_plane, t_min)``, ``nerfacc/estimators/occ_grid.py``), so the draw comes from ``generator`` and not
    from nerfacc's ``torch.rand_like`` on the global RNG. One ``torch.rand(n_rays)`` call per batch.

    Args:
        n_rays: number of rays R.
        near_plane: near clip distance (world units).
        render_step_size: interval length dt (world units).
        stratified: draw the shift; False gives ``near_plane`` for every ray and draws nothing.
        like: the result takes its dtype and device.
        generator: on ``like``'s device; None uses the global RNG.

    Returns:
        Tensor with shape (R,), in ``[near_plane, near_plane + dt)``.

    Examples:
        >>> near = near_planes(4, 0.0, 0.5, True, torch.zeros(3), torch.Generator().manual_seed(0))
        >>> bool(((near >= 0) & (near < 0.5)).all())
        True
    """
    near = torch.full((n_rays,), near_plane, dtype=like.dtype, device=like.device)
    if stratified:
        near = near + torch.rand(n_rays, dtype=like.dtype, device=like.device, generator=generator) * render_step_size
    return near


@dataclass
class RaySamples:
    """Packed samples of a batch of R rays (nerfacc layout), from :meth:`nerf.renderer.VolumeRenderer.sample`. Not differentiable.

    Attributes:
        ray_indices: Tensor with shape (S,), int64, sorted ascending, the sample's ray in the flattened batch.
        t_starts: Tensor with shape (S,), interval starts along the ray (world units).
        t_ends: Tensor with shape (S,), interval ends.
        n_rays: R.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]


@dataclass
class SampleChunk:
    """The samples of one chunk inside :meth:`nerf.renderer.VolumeRenderer.render_samples`, handed to per-sample loss terms.

    Attributes:
        start, stop: the chunk's range ``[start, stop)`` in the packed samples of the whole batch (to slice
            per-sample inputs drawn before rendering, e.g. a jitter of shape (S, 3)).
        points: Tensor with shape (s, 3), interval midpoints (world units), not requiring grad.
        t_dirs: Tensor with shape (s, 3), ray direction of each sample.
        weights: Tensor with shape (s,), rendering weights (differentiable).
        normals: Tensor with shape (s, 3) of unit outward normals (differentiable), or None.
    """

    start: int
    stop: int
    points: Tensor
    t_dirs: Tensor
    weights: Tensor
    normals: Tensor | None


SampleTerms = Callable[[SampleChunk], dict[str, Tensor]]
"""Per-sample loss terms: maps a chunk to scalar Tensors (sums over the chunk's samples, which
:meth:`nerf.renderer.VolumeRenderer.render_samples` adds over the chunks). It runs again in the backward pass (checkpointing), so
it must draw no random numbers and give the same values both times."""


def chunk_bounds(samples: RaySamples, budget: int) -> list[tuple[int, int, int, int]]:
    """Consecutive chunks of whole rays covering all rays and samples, about ``budget`` samples each.

    A ray goes to the chunk where its first sample falls (sample index // ``budget``), so a chunk holds at most
    ``budget`` + (one ray's samples − 1) samples; rays without samples go with their neighbours.

    Args:
        samples: packed samples of R rays (``ray_indices`` sorted).
        budget: samples per chunk; 0 means one chunk.

    Returns:
        ``(ray_start, ray_stop, sample_start, sample_stop)`` per chunk, in order (one chunk when everything fits).
    """
    n_rays, n_samples = samples.n_rays, len(samples)
    if budget == 0 or n_samples <= budget:
        return [(0, n_rays, 0, n_samples)]
    counts = torch.bincount(samples.ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts  # (R,) index of each ray's first sample
    rays_per_chunk = torch.bincount(torch.div(first, budget, rounding_mode="floor"))
    ray_stops = torch.cumsum(rays_per_chunk[rays_per_chunk > 0], 0).tolist()
    sample_bounds = torch.cat([first, first.new_tensor([n_samples])])[[0] + ray_stops].tolist()
    ray_starts = [0] + ray_stops[:-1]
    return [(r0, r1, sample_bounds[k], sample_bounds[k + 1]) for k, (r0, r1) in enumerate(zip(ray_starts, ray_stops))]


def interval_points(rays_o: Tensor, t_dirs: Tensor, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor,
                    tolerance: float) -> tuple[Tensor, Tensor, Tensor]:
    """The two ends of S packed ray intervals as P <= 2 S distinct points.

    An interval's end is the next interval's start when both lie on one ray and touch (``|t_start[i + 1] -
    t_end[i]| <= tolerance``), so a run of k touching intervals needs k + 1 points instead of 2 k.

    Args:
        rays_o: Tensor with shape (R, 3), ray origins (world units).
        t_dirs: Tensor with shape (S, 3), each interval's unit ray direction.
        ray_indices: int64 Tensor with shape (S,), sorted ascending.
        t_starts, t_ends: Tensors with shape (S,), distances along the rays (world units).
        tolerance: world units, >= 0.

    Returns:
        points: Tensor with shape (P, 3), the interval starts in order, then the ends that start no interval.
        start, end: int64 Tensors with shape (S,), rows of ``points``.
    """
    n = t_starts.shape[0]
    origins = rays_o[ray_indices]
    touches = (ray_indices[1:] == ray_indices[:-1]) & ((t_starts[1:] - t_ends[:-1]).abs() <= tolerance)
    touches = torch.cat([touches, touches.new_zeros(1)])
    alone = ~touches
    extra = origins[alone] + t_dirs[alone] * t_ends[alone, None]
    start = torch.arange(n, device=t_starts.device)
    end = torch.where(touches, start + 1, n + torch.cumsum(alone.long(), 0) - 1)
    return torch.cat([origins + t_dirs * t_starts[:, None], extra]), start, end

