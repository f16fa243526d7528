"""The occupancy-grid sampler's data-dependent sizes, stated, so that the NeRF's memory can be modelled.

How many samples a ray keeps depends on the field (which cells are occupied, where the transmittance runs out), so
a fake tensor cannot say it. Everything else the renderer and the trainer do is run for real (as fake tensors);
only :meth:`nerf.occupancy_grid.OccupancyGrid.sampling` is replaced, by :func:`modelled_sampling`, which does what
the CUDA path (nerfacc ``OccGridEstimator.sampling``) allocates:

1. ``candidates_per_ray × R`` intervals in occupied cells (int64 ray indices, float32 starts and ends);
2. when a ``sigma_fn`` is given, the field's density at all of them (no autograd graph) and the visibility test
   (:func:`nerf.volrend.render_visibility_from_density`), the code the PyTorch path runs;
3. ``kept_per_ray × R`` kept samples returned, spread evenly over the rays.

:class:`SampleCounts` says the two numbers; :func:`measure_counts` measures them on the CPU for a field (the real
sampler at a low resolution: counts per ray do not depend on the image size), and :class:`SamplingRecorder`
records every call of a real run so that the fake run can replay exactly those sizes (:class:`ReplayCounts`).
:func:`modelled_grid_update` replaces the occupancy-grid update in fake runs: it evaluates the field at every cell
as the update does (a 32³ no-grad query, small), without the data-dependent thresholding.

Examples:
    >>> with patched_sampler(SampleCounts(56.0, 52.0)):
    ...     trainer.train()         # under memory.tracker.fake_session()
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from memory.tracker import real_tensors
from nerf.occupancy_grid import OccupancyGrid
from nerf.volrend import render_visibility_from_density

__all__ = [
    "ReplayCounts",
    "SampleCounts",
    "SamplingRecorder",
    "measure_counts",
    "even_ray_indices",
    "modelled_chunks",
    "modelled_grid_update",
    "modelled_sampling",
    "patched_sampler",
]


@dataclass(frozen=True)
class SampleCounts:
    """Samples per ray, averaged over all rays of a render (rays that miss the object count as 0).

    Attributes:
        candidates_per_ray: intervals in occupied cells, before the transmittance / opacity pruning.
        kept_per_ray: samples left after it (what the field is run on with gradients).
    """

    candidates_per_ray: float
    kept_per_ray: float

    def sizes(self, n_rays: int) -> tuple[int, int]:
        return math.ceil(n_rays * self.candidates_per_ray), math.ceil(n_rays * self.kept_per_ray)


CANDIDATES_PER_KEPT = 1.09
"""Candidates per kept sample of the default preset's field at initialisation (55.8 / 51.4, measured with
:func:`measure_counts`): what a GPU run, whose nerfacc sampler hides its candidates, replays them as."""


class CountSource(Protocol):
    def sizes(self, n_rays: int) -> tuple[int, int]: ...


class ReplayCounts:
    """The (candidates, kept) sizes of a recorded run, handed out in call order. A call recorded without its
    candidates (None: nerfacc's CUDA sampler does not say them) gets ``kept × candidate_ratio``."""

    def __init__(self, calls: list[tuple[int, int | None, int]], candidate_ratio: float = 1.0) -> None:
        self._calls = deque(calls)
        self.candidate_ratio = candidate_ratio

    def sizes(self, n_rays: int) -> tuple[int, int]:
        if not self._calls:
            raise RuntimeError("the fake run samples more often than the recorded real run")
        rays, candidates, kept = self._calls.popleft()
        if rays != n_rays:
            raise RuntimeError(f"the fake run samples {n_rays} rays where the real run sampled {rays}")
        return (math.ceil(kept * self.candidate_ratio) if candidates is None else candidates), kept


def modelled_sampling(counts: CountSource) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """A stand-in for :meth:`OccupancyGrid.sampling` with the sizes of ``counts`` (see the module docstring).

    All tensors are zeros of the stated sizes (fake inside a fake session); :func:`modelled_chunks` gives the kept
    samples their layout where the renderer asks for it.
    """

    @torch.no_grad()
    def sampling(self: OccupancyGrid, rays_o: Tensor, rays_d: Tensor, render_step_size: float,
                 near_plane: float = 0.0, far_plane: float = 1e10, stratified: bool = False,
                 sigma_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, alpha_thre: float = 0.0,
                 early_stop_eps: float = 1e-4, generator: torch.Generator | None = None,
                 backend: str = "auto", **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
        n_rays = rays_o.shape[0]
        candidates, kept = counts.sizes(n_rays)
        device, dtype = rays_o.device, rays_o.dtype
        if sigma_fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0) and candidates > 0:
            ray_indices = torch.zeros(candidates, dtype=torch.long, device=device)
            t_starts = torch.zeros(candidates, dtype=dtype, device=device)
            t_ends = torch.zeros(candidates, dtype=dtype, device=device)
            sigmas = sigma_fn(t_starts, t_ends, ray_indices)
            visible = render_visibility_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays, early_stop_eps,
                                                     alpha_thre)
            del sigmas, visible, ray_indices, t_starts, t_ends
        return (torch.zeros(kept, dtype=torch.long, device=device), torch.zeros(kept, dtype=dtype, device=device),
                torch.zeros(kept, dtype=dtype, device=device))

    return sampling


def even_ray_indices(n_rays: int, n_samples: int) -> Tensor:
    """Sorted ray indices (n_samples,) with the samples spread as evenly as possible over ``n_rays`` rays."""
    edges = torch.div(torch.arange(n_rays + 1, dtype=torch.int64) * n_samples, max(n_rays, 1), rounding_mode="floor")
    return torch.repeat_interleave(torch.arange(n_rays), edges.diff(), output_size=n_samples)


def modelled_chunks(original: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for ``VolumeRenderer._chunks`` (issue 20's checkpointed rendering): the original, run on real
    ray indices with the samples spread evenly over the rays (a fake batch has no layout to read)."""

    def chunks(self: Any, samples: Any) -> Any:
        with real_tensors():
            layout = replace(samples, ray_indices=even_ray_indices(samples.n_rays, len(samples)))
            return original(self, layout)

    return chunks


@torch.no_grad()
def modelled_grid_update(self: OccupancyGrid, step: int, occ_eval_fn: Callable[[Tensor], Tensor],
                         generator: torch.Generator | None = None) -> None:
    """:meth:`OccupancyGrid.update`'s device work without its data-dependent part: every
    ``update_every_n_steps`` steps, the occupancy function at one point per cell of every level."""
    cfg = self.config
    if step % cfg.update_every_n_steps != 0:
        return
    points = torch.zeros(self.cells_per_level, 3, device=self.occs.device)
    for _ in range(cfg.levels):
        occ_eval_fn(points)


@contextlib.contextmanager
def patched_sampler(counts: CountSource) -> Iterator[None]:
    """Within the block, occupancy grids sample with :func:`modelled_sampling` and update with
    :func:`modelled_grid_update`, and the renderer's checkpoint chunks (when it has them) are laid out by
    :func:`modelled_chunks`."""
    from nerf.renderer import VolumeRenderer

    sampling, update = OccupancyGrid.sampling, OccupancyGrid.update
    chunks = getattr(VolumeRenderer, "_chunks", None)
    OccupancyGrid.sampling = modelled_sampling(counts)  # type: ignore[method-assign]
    OccupancyGrid.update = modelled_grid_update  # type: ignore[method-assign]
    if chunks is not None:
        VolumeRenderer._chunks = modelled_chunks(chunks)  # type: ignore[method-assign]
    try:
        yield
    finally:
        OccupancyGrid.sampling, OccupancyGrid.update = sampling, update  # type: ignore[method-assign]
        if chunks is not None:
            VolumeRenderer._chunks = chunks  # type: ignore[method-assign]


class SamplingRecorder:
    """Records ``(rays, candidates, kept)`` of every real :meth:`OccupancyGrid.sampling` call in the block
    (candidates: what the marching kept in occupied cells, before the transmittance / opacity test; None where
    the CUDA path's nerfacc sampler ran, which does not expose them).

    Examples:
        >>> with SamplingRecorder() as recorder:
        ...     trainer.train()
        >>> ReplayCounts(recorder.calls)
    """

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self._candidates: list[int] = []

    def __enter__(self) -> SamplingRecorder:
        self._sampling, self._march = OccupancyGrid.sampling, OccupancyGrid._march_occupied
        recorder, sampling, march = self, self._sampling, self._march

        def march_occupied(grid: OccupancyGrid, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
            out = march(grid, *args, **kwargs)
            recorder._candidates.append(int(out[0].numel()))
            return out

        def recorded(grid: OccupancyGrid, rays_o: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
            recorder._candidates.clear()
            out = sampling(grid, rays_o, *args, **kwargs)
            candidates = recorder._candidates[-1] if recorder._candidates else None
            recorder.calls.append((int(rays_o.shape[0]), candidates, int(out[0].numel())))
            return out

        OccupancyGrid.sampling, OccupancyGrid._march_occupied = recorded, march_occupied  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        OccupancyGrid.sampling, OccupancyGrid._march_occupied = self._sampling, self._march  # type: ignore[method-assign]

    candidate_ratio: float = CANDIDATES_PER_KEPT

    def per_ray(self) -> SampleCounts:
        """Averages over every recorded call, weighted by rays (unknown candidates: ``kept × candidate_ratio``)."""
        rays = sum(c[0] for c in self.calls) or 1
        candidates = sum(c[2] * self.candidate_ratio if c[1] is None else c[1] for c in self.calls)
        return SampleCounts(candidates / rays, sum(c[2] for c in self.calls) / rays)


def measure_counts(renderer: Any, cameras: list[Any], size: int = 64, seed: int = 0) -> SampleCounts:
    """Samples per ray of ``renderer``'s field as it is (at initialisation: the Magic3D density blob), measured
    with the real sampler on ``size``² renders of ``cameras`` (:class:`nerf.cameras.CameraBatch`) after one
    occupancy update, stratified as in training. Real tensors, CPU."""
    generator = torch.Generator().manual_seed(seed)
    renderer.update_occupancy(0, generator=generator)
    sample = getattr(renderer, "sample", None) or renderer._sample  # renderer.sample: issue 20's renderer
    with SamplingRecorder() as recorder, torch.no_grad():
        for camera in cameras:
            rays_o, rays_d = camera.rays(size, size)
            sample(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), True, generator)
    return recorder.per_ray()
