"""Ray marching with an occupancy grid (nerfacc 0.5 ``OccGridEstimator`` semantics) and dense uniform sampling.

Marching rule (``nerfacc/cuda/csrc/grid.cu``, ``traverse_grids_kernel`` with ``cone_angle = 0``): every ray is
stepped with a fixed ``render_step_size`` ``dt`` from its near plane, giving intervals
``[near + k dt, near + (k + 1) dt)`` for integer ``k >= 0``; an interval is kept when its midpoint lies inside the
grid's box (between the ray's entry and exit distances, clipped to ``[near_plane, far_plane)``) and in an
occupied cell. With ``stratified=True`` the near plane of each ray is first moved by ``U(0, 1) * dt``. Hence an
all-occupied grid gives exactly the samples of :func:`uniform_sampling`.

Note the step lattice is anchored at the *near plane* (0 by default, i.e. the ray origin), as in nerfacc; it is
not re-anchored at the box entry.

The grid itself keeps an exponential moving average of ``occ_eval_fn`` (threestudio: ``density * dt``) per cell
and a binary mask ``occs > min(mean(occs[occs > 0]), occ_threshold)`` (``nerfacc/estimators/occ_grid.py``).

On CUDA tensors, :meth:`OccupancyGrid.sampling` delegates to ``nerfacc.OccGridEstimator`` when ``nerfacc`` can be
imported; otherwise (and always on CPU) it runs the vectorised PyTorch implementation here. Either way the stratified
jitter is drawn here, from the caller's generator (:func:`near_planes`), so a seed gives the same samples on both.

Examples:
    >>> grid = OccupancyGrid(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=8))
    >>> grid.update(0, lambda x: (x.norm(dim=-1) < 0.5).float())
    >>> ray_indices, t_starts, t_ends = grid.sampling(
    ...     torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]), render_step_size=0.01)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from nerf.samples import near_planes
from nerf.volrend import visible_in_rounds

__all__ = ["OccupancyGrid", "OccupancyGridConfig", "near_planes", "ray_aabb_intersect", "uniform_sampling"]

logger = logging.getLogger(__name__)

SigmaFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``sigma_fn(t_starts (S,), t_ends (S,), ray_indices (S,)) -> densities (S,)``."""


@dataclass
class OccupancyGridConfig:
    """Occupancy grid hyper-parameters.

    Defaults: resolution and levels from threestudio ``threestudio/models/renderers/nerf_volume_renderer.py``
    (``OccGridEstimator(roi_aabb, resolution=32, levels=1)``); update schedule from nerfacc
    ``nerfacc/estimators/occ_grid.py`` (``update_every_n_steps`` defaults).
    """

    resolution: int = 32
    """Cells per axis of every level (>= 1)."""
    levels: int = 1
    """Number of nested grids; level ``l`` covers the box enlarged ``2**l`` times about its centre (>= 1)."""
    occ_threshold: float = 0.01
    """Upper bound of the binarisation threshold on the EMA occupancy (units of ``occ_eval_fn``)."""
    ema_decay: float = 0.95
    """Per-update decay of the stored occupancy before taking the max with the new evaluation, in (0, 1]."""
    warmup_steps: int = 256
    """Updates at steps below this evaluate every cell; later ones a random quarter plus occupied cells."""
    update_every_n_steps: int = 16
    """:meth:`OccupancyGrid.update` does nothing unless ``step % update_every_n_steps == 0`` (>= 1)."""


def ray_aabb_intersect(
    rays_o: Tensor, rays_d: Tensor, aabb: Tensor, near_plane: Tensor | float = 0.0, far_plane: Tensor | float = 1e10
) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays against an axis-aligned box.

    Args:
        rays_o: Tensor with shape (R, 3), origins.
        rays_d: Tensor with shape (R, 3), directions (any length; distances are in units of ``|d|``).
        aabb: Tensor with shape (6,), ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        near_plane, far_plane: float or Tensor with shape (R,), clip distances.

    Returns:
        t_lo: Tensor with shape (R,), ``max(entry, near_plane)``.
        t_hi: Tensor with shape (R,), ``min(exit, far_plane)``.
        hit: Tensor with shape (R,), bool, ``t_lo < t_hi`` (the clipped segment is not empty).
    """
    tiny = 1e-12
    safe_d = torch.where(rays_d.abs() < tiny, torch.full_like(rays_d, tiny), rays_d)
    inv_d = 1.0 / safe_d
    t0 = (aabb[:3] - rays_o) * inv_d
    t1 = (aabb[3:] - rays_o) * inv_d
    t_entry = torch.minimum(t0, t1).amax(dim=-1)
    t_exit = torch.maximum(t0, t1).amin(dim=-1)
    t_lo = torch.clamp(t_entry, min=near_plane) if isinstance(near_plane, float) else torch.maximum(t_entry, near_plane)
    t_hi = torch.clamp(t_exit, max=far_plane) if isinstance(far_plane, float) else torch.minimum(t_exit, far_plane)
    return t_lo, t_hi, t_lo < t_hi


def _march_candidates(
    t_lo: Tensor, t_hi: Tensor, hit: Tensor, near: Tensor, step: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Intervals ``[near + k dt, near + (k+1) dt)`` around ``[t_lo, t_hi)`` of every ray, packed by ray.

    The range of ``k`` is widened by one step on each side (so rounding never loses an interval); callers keep
    the intervals whose midpoint passes their exact test.

    Args:
        t_lo, t_hi: Tensors with shape (R,), the segment of every ray to cover.
        hit: Tensor with shape (R,), bool; rays with False get no candidates.
        near: Tensor with shape (R,), anchor of every ray's step lattice (k >= 0).
        step: step size dt > 0.

    Returns:
        ray_indices (C,) int64 sorted ascending, t_starts (C,), t_ends (C,), midpoints (C,).
    """
    device = t_lo.device
    k_lo = torch.ceil((t_lo - near) / step - 0.5).clamp_min(0) - 1
    k_hi = torch.ceil((t_hi - near) / step - 0.5) + 1
    counts = torch.where(hit, (k_hi - k_lo).clamp_min(0), torch.zeros_like(k_hi)).long()
    n_candidates = int(counts.sum())
    ray_ids = torch.arange(t_lo.shape[0], device=device)
    ray_indices = torch.repeat_interleave(ray_ids, counts, output_size=n_candidates)
    first = torch.cumsum(counts, 0) - counts
    k = (torch.arange(n_candidates, device=device) - first[ray_indices]).to(t_lo.dtype) + k_lo[ray_indices]
    t_starts = near[ray_indices] + k * step
    t_ends = t_starts + step
    return ray_indices, t_starts, t_ends, (t_starts + t_ends) * 0.5


def _check_rays(rays_o: Tensor, rays_d: Tensor, render_step_size: float) -> None:
    if rays_o.dim() != 2 or rays_o.shape[-1] != 3 or rays_o.shape != rays_d.shape:
        raise ValueError(
            f"rays_o and rays_d must both have shape (R, 3), got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}"
        )
    if not render_step_size > 0.0:
        raise ValueError(f"render_step_size must be > 0, got {render_step_size}")


@torch.no_grad()
def uniform_sampling(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb: Tensor,
    render_step_size: float,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense fixed-step samples inside a box, no skipping (the brute-force reference for the grid).

    Args:
        rays_o: Tensor with shape (R, 3), origins (world units).
        rays_d: Tensor with shape (R, 3), unit directions.
        aabb: Tensor with shape (6,), the box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        render_step_size: interval length dt (world units), > 0.
        near_plane, far_plane: clip distances; the step lattice is anchored at ``near_plane``.
        stratified: shift each ray's lattice by ``U(0, 1) * dt``.
        generator: for the stratified offsets.

    Returns:
        ray_indices: Tensor with shape (S,), int64, sorted ascending.
        t_starts: Tensor with shape (S,).
        t_ends: Tensor with shape (S,), ``t_starts + dt``.

    Raises:
        ValueError: on mis-shaped rays or a non-positive step.
    """
    _check_rays(rays_o, rays_d, render_step_size)
    near = near_planes(rays_o.shape[0], near_plane, render_step_size, stratified, rays_o, generator)
    t_lo, t_hi, hit = ray_aabb_intersect(rays_o, rays_d, aabb.to(rays_o), near, far_plane)
    ray_indices, t_starts, t_ends, mid = _march_candidates(t_lo, t_hi, hit, near, render_step_size)
    # k >= 0 is implied: mid >= t_lo >= near.
    keep = (mid >= t_lo[ray_indices]) & (mid < t_hi[ray_indices])
    return ray_indices[keep], t_starts[keep], t_ends[keep]


class OccupancyGrid(nn.Module):
    """Binary occupancy grid over a box for empty-space skipping (nerfacc ``OccGridEstimator`` semantics).

    Args:
        aabb: Tensor with shape (6,), ``(xmin, ymin, zmin, xmax, ymax, zmax)`` of level 0 (world units).
        config: see :class:`OccupancyGridConfig`.

    Buffers:
        aabb: Tensor with shape (6,), the level-0 box.
        aabbs: Tensor with shape (levels, 6); level ``l`` is ``aabb`` scaled ``2**l`` about its centre (derived, not
            saved in the state dict).
        occs: Tensor with shape (levels * res**3,), EMA occupancy (cells are x-major: ``i * res**2 + j * res + k``).
        binaries: Tensor with shape (levels, res, res, res), bool, the occupied mask used for marching.

    Raises:
        ValueError: on a bad ``aabb`` or config.
    """

    def __init__(self, aabb: Tensor, config: OccupancyGridConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else OccupancyGridConfig()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb.shape != (6,) or not bool((aabb[3:] > aabb[:3]).all()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {aabb.tolist()}")
        if config.resolution < 1 or config.levels < 1 or config.update_every_n_steps < 1:
            raise ValueError(f"OccupancyGridConfig: resolution, levels and update_every_n_steps must be >= 1: {config}")
        self.config = config
        res = config.resolution
        self.cells_per_level = res**3
        center, half = (aabb[:3] + aabb[3:]) / 2, (aabb[3:] - aabb[:3]) / 2
        scales = [2.0**lvl for lvl in range(config.levels)]
        aabbs = torch.stack([torch.cat([center - half * s, center + half * s]) for s in scales])
        self.register_buffer("aabb", aabb.clone())
        self.register_buffer("aabbs", aabbs, persistent=False)
        self.register_buffer("occs", torch.zeros(config.levels * self.cells_per_level))
        self.register_buffer("binaries", torch.zeros(config.levels, res, res, res, dtype=torch.bool))
        coords = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("_grid_coords", coords, persistent=False)
        self._nerfacc_estimator = None  # built lazily on first CUDA use
        self._warned_fallback = False

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(
        self, step: int, occ_eval_fn: Callable[[Tensor], Tensor], generator: torch.Generator | None = None
    ) -> None:
        """EMA update of the occupancy and re-binarisation; a no-op unless ``step % update_every_n_steps == 0``.

        Args:
            step: training step (>= 0).
            occ_eval_fn: maps world points, Tensor with shape (M, 3), to occupancy values, Tensor with shape (M,)
                or (M, 1) (threestudio: ``density * render_step_size``).
            generator: for the cell subset and the jitter inside cells (device of the grid).
        """
        cfg = self.config
        if step % cfg.update_every_n_steps != 0:
            return
        device = self.occs.device
        for lvl in range(cfg.levels):
            if step < cfg.warmup_steps:
                cells = torch.arange(self.cells_per_level, device=device)
            else:
                cells = self._sample_uniform_and_occupied(lvl, self.cells_per_level // 4, generator)
            jitter = torch.rand(cells.shape[0], 3, device=device, generator=generator)
            unit = (self._grid_coords[cells].to(jitter.dtype) + jitter) / cfg.resolution
            lo, hi = self.aabbs[lvl, :3], self.aabbs[lvl, 3:]
            occ = occ_eval_fn(lo + unit * (hi - lo)).reshape(-1).to(self.occs.dtype)
            ids = lvl * self.cells_per_level + cells
            old = self.occs[ids]
            # max(decay * old, new); duplicated cells take the max of their evaluations (deterministic scatter).
            decayed = self.occs.index_put((ids,), old * cfg.ema_decay)
            updated = decayed.scatter_reduce(0, ids, occ, reduce="amax", include_self=True)
            # cells marked invisible (negative) stay untouched, as in nerfacc
            self.occs.copy_(torch.where(self.occs < 0, self.occs, updated))
        positive = self.occs[self.occs > 0]
        threshold = min(float(positive.mean()), cfg.occ_threshold) if positive.numel() > 0 else cfg.occ_threshold
        self.binaries.copy_((self.occs > threshold).view(self.binaries.shape))

    def _sample_uniform_and_occupied(self, level: int, n: int, generator: torch.Generator | None) -> Tensor:
        device = self.occs.device
        uniform = torch.randint(self.cells_per_level, (n,), device=device, generator=generator)
        occupied = torch.nonzero(self.binaries[level].reshape(-1))[:, 0]
        if n < occupied.shape[0]:
            occupied = occupied[torch.randint(occupied.shape[0], (n,), device=device, generator=generator)]
        return torch.cat([uniform, occupied])

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sampling(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        render_step_size: float,
        near_plane: float = 0.0,
        far_plane: float = 1e10,
        stratified: bool = False,
        sigma_fn: SigmaFn | None = None,
        alpha_thre: float = 0.0,
        early_stop_eps: float = 1e-4,
        generator: torch.Generator | None = None,
        backend: Literal["auto", "torch", "nerfacc"] = "auto",
        ray_near: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """March rays through the occupied cells.

        Args:
            rays_o: Tensor with shape (R, 3), origins (world units).
            rays_d: Tensor with shape (R, 3), unit directions.
            render_step_size: interval length dt (world units), > 0.
            near_plane, far_plane: clip distances; the step lattice starts at ``near_plane``.
            stratified: shift each ray's lattice by ``U(0, 1) * dt`` (training).
            sigma_fn: optional ``(t_starts, t_ends, ray_indices) -> sigmas`` (all shape (S,)); when given, samples
                with transmittance < ``early_stop_eps`` or opacity < ``min(alpha_thre, mean(occs))`` (if
                ``alpha_thre > 0``) are dropped, as in nerfacc.
            alpha_thre: opacity threshold for that pruning (0 disables it).
            early_stop_eps: transmittance threshold for that pruning.
            generator: for the stratified offsets (:func:`near_planes`), on either backend.
            backend: "auto" uses nerfacc for CUDA rays when it imports, else PyTorch; "torch" forces PyTorch;
                "nerfacc" requires nerfacc (raises ImportError otherwise).
            ray_near: Tensor with shape (R,), per-ray lattice anchors already drawn (e.g. :func:`near_planes` for
                a larger batch, sliced); then ``stratified`` must be False. Clamped below at ``near_plane``, as
                nerfacc clamps its ``t_min``.

        Returns:
            ray_indices: Tensor with shape (S,), int64, sorted ascending.
            t_starts: Tensor with shape (S,), world units along the ray.
            t_ends: Tensor with shape (S,), ``t_starts + dt``.

        Raises:
            ValueError: on mis-shaped rays, a non-positive step, a ``sigma_fn`` returning the wrong shape, or
                ``ray_near`` with ``stratified`` or of the wrong shape.
            ImportError: with ``backend="nerfacc"`` when nerfacc is missing.
        """
        _check_rays(rays_o, rays_d, render_step_size)
        if ray_near is None:
            near = near_planes(rays_o.shape[0], near_plane, render_step_size, stratified, rays_o, generator)
        elif stratified or tuple(ray_near.shape) != (rays_o.shape[0],):
            raise ValueError(
                f"ray_near must have shape ({rays_o.shape[0]},) and comes without stratified=True, "
                f"got {tuple(ray_near.shape)}, stratified={stratified}"
            )
        else:
            near = ray_near.to(rays_o).clamp_min(near_plane)
        estimator = self._nerfacc(rays_o, backend)
        if estimator is not None:
            # The jitter is ours (drawn above from `generator`); nerfacc starts each ray at max(near_plane, t_min).
            ray_indices, t_starts, t_ends = estimator.sampling(
                rays_o, rays_d, sigma_fn=sigma_fn, near_plane=near_plane, far_plane=far_plane, t_min=near,
                render_step_size=render_step_size, early_stop_eps=early_stop_eps, alpha_thre=alpha_thre,
                stratified=False,
            )
            return ray_indices.long(), t_starts, t_ends
        ray_indices, t_starts, t_ends = self._march_occupied(rays_o, rays_d, near, far_plane, render_step_size)
        if sigma_fn is not None and (alpha_thre > 0.0 or early_stop_eps > 0.0) and t_starts.numel() > 0:
            alpha_thre = min(alpha_thre, float(self.occs.mean()))
            keep = visible_in_rounds(t_starts, t_ends, ray_indices, rays_o.shape[0], sigma_fn, early_stop_eps,
                                     alpha_thre)
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends

    def _march_occupied(
        self, rays_o: Tensor, rays_d: Tensor, near: Tensor, far_plane: float, step: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        aabbs = self.aabbs.to(rays_o)
        outer = aabbs[-1]
        t_lo, t_hi, hit = ray_aabb_intersect(rays_o, rays_d, outer, near, far_plane)
        # Only march where occupied cells can be: the box around them, padded by half a cell against rounding.
        bound = self._occupied_bounds(aabbs)
        if bound is None:
            empty = torch.empty(0, dtype=rays_o.dtype, device=rays_o.device)
            return torch.empty(0, dtype=torch.long, device=rays_o.device), empty, empty.clone()
        c_lo, c_hi, c_hit = ray_aabb_intersect(rays_o, rays_d, bound, near, far_plane)
        ray_indices, t_starts, t_ends, mid = _march_candidates(c_lo, c_hi, c_hit & hit, near, step)
        keep = (mid >= t_lo[ray_indices]) & (mid < t_hi[ray_indices])
        points = rays_o[ray_indices] + rays_d[ray_indices] * mid[:, None]
        keep &= self.occupied_at(points)
        return ray_indices[keep], t_starts[keep], t_ends[keep]

    def _occupied_bounds(self, aabbs: Tensor) -> Tensor | None:
        """Box (6,) around all occupied cells of all levels, padded by half a cell; None when nothing is occupied."""
        res = self.config.resolution
        lows, highs = [], []
        for lvl in range(self.config.levels):
            ijk = torch.nonzero(self.binaries[lvl])
            if ijk.shape[0] == 0:
                continue
            lo, hi = aabbs[lvl, :3], aabbs[lvl, 3:]
            cell = (hi - lo) / res
            lows.append(lo + (ijk.amin(0).to(lo) - 0.5) * cell)
            highs.append(lo + (ijk.amax(0).to(lo) + 1.5) * cell)
        if not lows:
            return None
        return torch.cat([torch.stack(lows).amin(0), torch.stack(highs).amax(0)])

    @torch.no_grad()
    def occupied_at(self, points: Tensor) -> Tensor:
        """Occupancy of world points; the finest level whose box contains a point decides.

        Args:
            points: Tensor with shape (M, 3), world units. Points outside the outermost box are clamped to its
                border cells (marching only queries points inside it).

        Returns:
            Tensor with shape (M,), bool.
        """
        res = self.config.resolution
        aabbs = self.aabbs.to(points)
        result = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        decided = torch.zeros_like(result)
        for lvl in range(self.config.levels):  # a handful of levels, vectorised over points
            lo, hi = aabbs[lvl, :3], aabbs[lvl, 3:]
            unit = (points - lo) / (hi - lo)
            if lvl == self.config.levels - 1:
                inside = ~decided
            else:
                inside = ((unit >= 0) & (unit <= 1)).all(dim=-1) & ~decided
            ijk = (unit * res).floor().long().clamp_(0, res - 1)
            cell = (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]
            occupied = self.binaries[lvl].reshape(-1)[cell]
            result = torch.where(inside, occupied, result)
            decided |= inside
        return result

    # ----------------------------------------------------------------- nerfacc
    def _nerfacc(self, rays_o: Tensor, backend: str):
        """The nerfacc estimator mirroring this grid, or None to use the PyTorch path."""
        if backend == "torch":
            return None
        if backend == "auto" and not (rays_o.is_cuda and torch.cuda.is_available()):
            return None
        try:
            import nerfacc  # noqa: PLC0415  (optional, CUDA-only dependency)
        except ImportError:
            if backend == "nerfacc":
                raise
            if not self._warned_fallback:
                logger.warning("nerfacc is not importable; using the PyTorch occupancy-grid sampler on CUDA.")
                self._warned_fallback = True
            return None
        if self._nerfacc_estimator is None:
            estimator = nerfacc.OccGridEstimator(
                roi_aabb=self.aabb.detach().cpu(), resolution=self.config.resolution, levels=self.config.levels
            )
            # a plain attribute, not a registered submodule: it must not enter this module's state_dict
            object.__setattr__(self, "_nerfacc_estimator", estimator)
        estimator = self._nerfacc_estimator.to(rays_o.device)
        estimator.occs.copy_(self.occs)
        estimator.binaries.copy_(self.binaries)
        return estimator

