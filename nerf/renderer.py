"""Volume renderer: rays -> occupancy-grid samples -> field -> composited rgb, opacity, depth.

Mirrors threestudio's ``NeRFVolumeRenderer`` (``threestudio/models/renderers/nerf_volume_renderer.py``) with the
``occgrid`` estimator: a 32^3 occupancy grid over ``[-radius, radius]^3``, a fixed step
``1.732 * 2 * radius / num_samples_per_ray``, samples pruned by transmittance (and optionally opacity), and
compositing over a background colour.

The field is any module with ``forward(points (N, 3), with_normal: bool) -> FieldOutput`` and
``density(points (N, 3)) -> (N,)`` (see :class:`~nerf.field.ImplicitVolume`); the renderer never imports a
concrete field class at run time. A field whose ``interval_opacity`` is True gives each interval's opacity itself
(``interval(points (P, 3), start (S,), end (S,), with_normal) -> (FieldOutput, alpha (S,))``, NeuS).

Memory: :meth:`VolumeRenderer.forward` keeps the autograd graph of every sample (a few KB each with analytic
normals). Training renders of many rays go through :meth:`VolumeRenderer.sample` then
:meth:`VolumeRenderer.render_samples`, which evaluates the field in chunks of about
``RendererConfig.checkpoint_chunk_samples`` samples under ``torch.utils.checkpoint`` (non-reentrant): each chunk's
field evaluation, and any per-sample loss terms computed on it, is recomputed in the backward pass, so what stays
alive until ``backward()`` is the packed samples (16 bytes each) and the per-ray outputs, plus one chunk at a
time. Values and gradients are those of the unchunked render (float rounding aside).

Examples:
    >>> from nerf.field import FieldConfig, ImplicitVolume
    >>> renderer = VolumeRenderer(ImplicitVolume(FieldConfig(), seed=0), RendererConfig(num_samples_per_ray=64))
    >>> out = renderer(torch.tensor([[0.0, 0.0, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]]))
    >>> out.rgb.shape, out.opacity.shape
    (torch.Size([1, 3]), torch.Size([1, 1]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nerf.volrend import accumulate_along_rays, render_weight_from_alpha, render_weight_from_density
from nerf.occupancy_grid import OccupancyGrid, OccupancyGridConfig
from nerf.samples import RaySamples, SampleChunk, SampleTerms, chunk_bounds, interval_points, near_planes

if TYPE_CHECKING:
    from nerf.field import FieldOutput

__all__ = ["Field", "RaySamples", "RenderOutput", "RendererConfig", "SampleChunk", "SampleTerms", "VolumeRenderer"]

_DENSITY_BLOCK = 2**18
"""Points per ``field.density`` call when marching prunes samples (no grad; bounds that transient memory)."""


class Field(Protocol):
    """What the renderer needs from a field (e.g. :class:`~nerf.field.ImplicitVolume`)."""

    def __call__(self, points: Tensor, with_normal: bool = False) -> "FieldOutput": ...

    def density(self, points: Tensor) -> Tensor: ...


@dataclass
class RendererConfig:
    """Hyper-parameters of :class:`VolumeRenderer` (threestudio ``NeRFVolumeRenderer`` defaults)."""

    num_samples_per_ray: int = 512
    """Sets the step: ``render_step_size = 1.732 * 2 * radius / num_samples_per_ray`` (about this many samples
    along the box diagonal)."""
    grid: OccupancyGridConfig = field(default_factory=OccupancyGridConfig)
    """Occupancy grid, see :class:`~nerf.occupancy_grid.OccupancyGridConfig`."""
    early_stop_eps: float = 1e-4
    """Samples behind transmittance below this are dropped before the field is run with gradients (0 disables)."""
    alpha_thre: float = 0.0
    """Samples with opacity below ``min(alpha_thre, mean grid occupancy)`` are dropped (0 disables;
    threestudio passes 0.01 when ``prune_alpha_threshold``)."""
    eval_chunk_rays: int = 8192
    """Rays per chunk in :meth:`VolumeRenderer.render_image` (>= 1)."""
    checkpoint_chunk_samples: int = 131072
    """Samples per chunk of :meth:`VolumeRenderer.render_samples` (whole rays: a chunk may exceed it by one ray's
    samples), whose field evaluation is recomputed in the backward pass: one chunk's activations are alive at a
    time, about 13.5 KB per sample with analytic normals and the 3D normal-smoothness pass (default field, fp32),
    1.7 GiB at the default. 0: one graph over all samples. Default from measurement: CPU time of an SDS step
    (default field, 64² reference + 2 × 32² views, 1 thread) 7.6 s unchunked, 10.5 / 9.5 / 9.3 / 9.5 s with
    chunks of 2**12 / 2**14 / 2**16 / 2**18 (the recomputed forward), so flat from 2**14 while the peak follows
    the chunk; 2**17 is the largest with which a NerfTrainer replica's two jobs fit its share of an A10G in
    ``benchmarks/memory_model.py``, and larger chunks amortise each chunk's fixed cost on a GPU."""
    march_chunk_rays: int = 32768
    """Rays marched at once by :meth:`VolumeRenderer.sample` (>= 1): bounds the candidate intervals (about 60 bytes
    each, up to ~``num_samples_per_ray`` per ray) that exist before pruning."""
    near_plane: float = 0.0
    """Near clip distance along rays; also the anchor of the step lattice (world units)."""
    far_plane: float = 1e10
    """Far clip distance along rays (world units)."""


@dataclass
class RenderOutput:
    """Rendered rays; ``...`` is the leading shape of the input rays, S the number of kept samples.

    Attributes:
        rgb: Tensor with shape (..., 3), in [0, 1], composited over the background.
        opacity: Tensor with shape (..., 1), accumulated weight in [0, 1].
        depth: Tensor with shape (..., 1), ``sum(w * t_mid)`` (world units along the ray; not divided by the
            opacity, so 0 for empty rays).
        weights: Tensor with shape (S,), packed per-sample weights; None from :meth:`VolumeRenderer.render_samples`.
        ray_indices: Tensor with shape (S,), int64, index of each sample's ray in the flattened batch.
        normals: Tensor with shape (S, 3) of unit outward normals, or None (always None from ``render_samples``).
        t_dirs: Tensor with shape (S, 3), ray direction of each sample; None from ``render_samples``.
        points: Tensor with shape (S, 3), world position of each sample (interval midpoints); None from
            ``render_samples``.
        normal_map: Tensor with shape (..., 3), or None without normals: the weight-averaged normal, normalised,
            mapped to [0, 1] and multiplied by the opacity, ``(n + 1) / 2 · opacity`` (threestudio's
            ``comp_normal``, which its 2D normal-smoothness loss reads).
        sample_sums: the per-sample loss terms of ``render_samples``, each summed over all samples (scalar
            Tensors); empty otherwise.
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor | None
    ray_indices: Tensor
    normals: Tensor | None
    t_dirs: Tensor | None
    points: Tensor | None
    normal_map: Tensor | None = None
    sample_sums: dict[str, Tensor] = field(default_factory=dict)


class VolumeRenderer(nn.Module):
    """Occupancy-grid accelerated volume renderer over the box ``[-radius, radius]^3``.

    Args:
        field: the radiance field (``forward``/``density`` as :class:`Field`); its ``config.radius`` gives the
            box (2.0 when it has none).
        config: see :class:`RendererConfig`.

    Raises:
        ValueError: on an invalid config.
    """

    def __init__(self, field: nn.Module, config: RendererConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else RendererConfig()
        if min(config.num_samples_per_ray, config.eval_chunk_rays, config.march_chunk_rays) < 1:
            raise ValueError(
                f"RendererConfig: num_samples_per_ray, eval_chunk_rays and march_chunk_rays must be >= 1: {config}"
            )
        if config.checkpoint_chunk_samples < 0:
            raise ValueError(f"RendererConfig: checkpoint_chunk_samples must be >= 0: {config}")
        self.field = field
        self.config = config
        field_config = getattr(field, "config", None)
        self.radius = float(getattr(field_config, "radius", 2.0))
        self.render_step_size = 1.732 * 2.0 * self.radius / config.num_samples_per_ray
        r = self.radius
        self.grid = OccupancyGrid(torch.tensor([-r, -r, -r, r, r, r]), config.grid)

    # ------------------------------------------------------------------ public
    def forward(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        bg_color: Tensor | None = None,
        with_normal: bool = False,
        stratified: bool = False,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render rays (differentiable w.r.t. the field's parameters).

        Args:
            rays_o: Tensor with shape (..., 3), origins (world units).
            rays_d: Tensor with shape (..., 3), unit directions.
            bg_color: Tensor with shape (3,) or (..., 3), in [0, 1]; None means white.
            with_normal: also evaluate per-sample normals (for the orientation loss).
            stratified: jitter the sample lattice per ray (training).
            generator: for the jitter.

        Returns:
            :class:`RenderOutput` with leading shape ``...``.

        Raises:
            ValueError: on mis-shaped rays or background.
        """
        lead = self._check_inputs(rays_o, rays_d, bg_color)
        samples = self.sample(rays_o, rays_d, stratified, generator)
        return self._render(rays_o, rays_d, samples, bg_color, lead, with_normal)

    @torch.no_grad()
    def sample(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        stratified: bool = False,
        generator: torch.Generator | None = None,
        pad_empty: bool = True,
    ) -> RaySamples:
        """March rays through the occupancy grid, ``march_chunk_rays`` rays at a time (not differentiable).

        The stratified jitter of all rays is drawn first, in one call (:func:`~nerf.occupancy_grid.near_planes`),
        so the samples do not depend on the chunking and are the same on the PyTorch and nerfacc backends.

        Args:
            rays_o: Tensor with shape (..., 3), origins (world units).
            rays_d: Tensor with shape (..., 3), unit directions.
            stratified: jitter the sample lattice per ray (training).
            generator: for the jitter, on the rays' device.
            pad_empty: when no ray has a sample, return one zero-length sample on ray 0 (alpha 0, so it adds
                nothing), which keeps a differentiable render connected to the field's graph (threestudio's
                ``validate_empty_rays``).

        Returns:
            :class:`RaySamples` over the flattened rays.
        """
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        n_rays, cfg = rays_o.shape[0], self.config
        near = near_planes(n_rays, cfg.near_plane, self.render_step_size, stratified, rays_o, generator)
        parts = []
        for start in range(0, n_rays, cfg.march_chunk_rays):
            stop = min(start + cfg.march_chunk_rays, n_rays)
            ray_indices, t_starts, t_ends = self._march(rays_o[start:stop], rays_d[start:stop], near[start:stop])
            parts.append((ray_indices + start, t_starts, t_ends))
        if parts:
            ray_indices, t_starts, t_ends = (torch.cat(p) for p in zip(*parts))
        else:
            ray_indices = torch.zeros(0, dtype=torch.long, device=rays_o.device)
            t_starts = t_ends = torch.zeros(0, dtype=rays_o.dtype, device=rays_o.device)
        if pad_empty and ray_indices.numel() == 0 and n_rays > 0:
            ray_indices = torch.zeros(1, dtype=torch.long, device=rays_o.device)
            t_starts = torch.zeros(1, dtype=rays_o.dtype, device=rays_o.device)
            t_ends = t_starts.clone()
        return RaySamples(ray_indices, t_starts, t_ends, n_rays)

    def render_samples(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        samples: RaySamples,
        bg_color: Tensor | None = None,
        with_normal: bool = False,
        sample_terms: SampleTerms | None = None,
    ) -> RenderOutput:
        """Render given samples in chunks whose field evaluation is recomputed in the backward pass.

        Chunks of whole rays (:func:`~nerf.samples.chunk_bounds`, ``checkpoint_chunk_samples``) each run the field,
        composite their rays and evaluate ``sample_terms`` under ``torch.utils.checkpoint`` (non-reentrant), so the
        graph kept for the backward pass holds each chunk's inputs and outputs only (no checkpointing without
        gradients or when all samples fit in one chunk). Equals :meth:`forward` on the same samples up to float
        rounding, without the per-sample tensors (the memory saved): losses on them go through ``sample_terms``.

        Args:
            rays_o: Tensor with shape (..., 3), origins (world units).
            rays_d: Tensor with shape (..., 3), unit directions.
            samples: from :meth:`sample` on these rays.
            bg_color: Tensor with shape (3,) or (..., 3), in [0, 1]; None means white.
            with_normal: evaluate normals (``normal_map``, and ``SampleChunk.normals`` for ``sample_terms``).
            sample_terms: per-sample loss terms (:data:`SampleTerms`); their sums land in ``sample_sums``.

        Returns:
            :class:`RenderOutput` with leading shape ``...``, ``ray_indices`` from ``samples`` and ``sample_sums``.

        Raises:
            ValueError: on mis-shaped rays, background or samples.
        """
        lead = self._check_inputs(rays_o, rays_d, bg_color)
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        n_rays = rays_o.shape[0]
        if samples.n_rays != n_rays:
            raise ValueError(f"samples are of {samples.n_rays} rays, got {n_rays} rays")
        chunks = self._chunks(samples)
        # One chunk holds at most a chunk's activations already; recomputing it would only add a forward pass.
        use_checkpoint = torch.is_grad_enabled() and len(chunks) > 1
        per_ray: list[tuple[Tensor, ...]] = []
        sums: dict[str, Tensor] = {}
        for r0, r1, s0, s1 in chunks:

            def run(o: Tensor, d: Tensor, idx: Tensor, t0: Tensor, t1: Tensor, r0=r0, s0=s0, s1=s1):
                # one chunk: per-ray (rgb_fg, opacity, depth, normal_sum) and its sample_terms sums. The inputs are
                # views of the batch's tensors, so checkpointing keeps no copy of them.
                *per_ray, weights, out, points, t_dirs = self._composite(o, d, idx - r0, t0, t1, with_normal)
                chunk = SampleChunk(s0, s1, points, t_dirs, weights, out.normal)
                return per_ray, (sample_terms(chunk) if sample_terms is not None else {})

            args = (rays_o[r0:r1], rays_d[r0:r1], samples.ray_indices[s0:s1], samples.t_starts[s0:s1],
                    samples.t_ends[s0:s1])
            if use_checkpoint:
                # the chunk draws no random numbers: nothing to restore before the recomputation
                outputs, terms = checkpoint(run, *args, use_reentrant=False, preserve_rng_state=False)
            else:
                outputs, terms = run(*args)
            per_ray.append(outputs)
            for name, value in terms.items():
                sums[name] = sums[name] + value if name in sums else value
        rgb_fg, opacity, depth, normal_sum = (
            torch.cat(parts) if parts[0] is not None else None for parts in zip(*per_ray)
        )
        rgb, normal_map = self._finish(rgb_fg, opacity, normal_sum, bg_color, lead)
        return RenderOutput(rgb.view(*lead, 3), opacity.view(*lead, 1), depth.view(*lead, 1), weights=None,
                            ray_indices=samples.ray_indices, normals=None, t_dirs=None, points=None,
                            normal_map=normal_map, sample_sums=sums)

    def _chunks(self, samples: RaySamples) -> list[tuple[int, int, int, int]]:
        """:func:`~nerf.samples.chunk_bounds` with ``checkpoint_chunk_samples``."""
        return chunk_bounds(samples, self.config.checkpoint_chunk_samples)

    def _composite(
        self, rays_o: Tensor, rays_d: Tensor, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, with_normal: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, "FieldOutput", Tensor, Tensor]:
        """Query the field at the interval midpoints and accumulate: per ray ``rgb_fg (R, 3)``, ``opacity (R, 1)``,
        ``depth (R, 1)``, ``normal_sum (R, 3)`` or None; per sample ``weights``, the field output, points, dirs."""
        n_rays = rays_o.shape[0]
        t_mid = (t_starts + t_ends) * 0.5
        t_dirs = rays_d[ray_indices]
        points = rays_o[ray_indices] + t_dirs * t_mid[:, None]
        if not getattr(self.field, "interval_opacity", False):
            out = self.field(points, with_normal=with_normal)
            weights, _, _ = render_weight_from_density(t_starts, t_ends, out.density, ray_indices, n_rays)
        else:
            ends = interval_points(rays_o, t_dirs, ray_indices, t_starts, t_ends, 1e-4 * self.render_step_size)
            out, alphas = self.field.interval(*ends, with_normal)
            weights, _ = render_weight_from_alpha(alphas, ray_indices, n_rays)
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        depth = accumulate_along_rays(weights, t_mid[:, None], ray_indices, n_rays)
        rgb_fg = accumulate_along_rays(weights, out.albedo, ray_indices, n_rays)
        normal_sum = None
        if out.normal is not None:
            normal_sum = accumulate_along_rays(weights, out.normal, ray_indices, n_rays)
        return rgb_fg, opacity, depth, normal_sum, weights, out, points, t_dirs

    def _finish(
        self, rgb_fg: Tensor, opacity: Tensor, normal_sum: Tensor | None, bg_color: Tensor | None,
        lead: tuple[int, ...],
    ) -> tuple[Tensor, Tensor | None]:
        """Composite over the background; the normal map ``(normalize(normal_sum) + 1) / 2 · opacity``."""
        rgb = rgb_fg + self._background(bg_color, rgb_fg) * (1.0 - opacity)
        normal_map = None
        if normal_sum is not None:
            normal_map = ((F.normalize(normal_sum, dim=-1) + 1.0) * 0.5 * opacity).view(*lead, 3)
        return rgb, normal_map

    def _render(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        samples: RaySamples,
        bg_color: Tensor | None,
        lead: tuple[int, ...],
        with_normal: bool,
    ) -> RenderOutput:
        """One graph over all samples (inputs already checked)."""
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        ray_indices = samples.ray_indices
        rgb_fg, opacity, depth, normal_sum, weights, out, points, t_dirs = self._composite(
            rays_o, rays_d, ray_indices, samples.t_starts, samples.t_ends, with_normal
        )
        rgb, normal_map = self._finish(rgb_fg, opacity, normal_sum, bg_color, lead)
        return RenderOutput(rgb.view(*lead, 3), opacity.view(*lead, 1), depth.view(*lead, 1), weights=weights,
                            ray_indices=ray_indices, normals=out.normal, t_dirs=t_dirs, points=points,
                            normal_map=normal_map)

    @torch.no_grad()
    def update_occupancy(self, step: int, generator: torch.Generator | None = None) -> None:
        """Refresh the occupancy grid every ``grid.update_every_n_steps`` steps.

        The occupancy of a point is ``density * render_step_size`` (threestudio: a first-order approximation of
        ``1 - exp(-density * dt)``).

        Args:
            step: global training step.
            generator: for the cell selection and jitter.
        """
        step_size = self.render_step_size
        self.grid.update(step, lambda x: self.field.density(x) * step_size, generator=generator)

    @torch.no_grad()
    def render_image(self, rays_o: Tensor, rays_d: Tensor, bg_color: Tensor | None = None) -> RenderOutput:
        """Evaluation render in chunks of ``eval_chunk_rays`` rays, without normals, jitter or dummy samples.

        Args:
            rays_o: Tensor with shape (B, H, W, 3) (any leading shape works).
            rays_d: Tensor with shape (B, H, W, 3), unit directions.
            bg_color: as in :meth:`forward`.

        Returns:
            :class:`RenderOutput` with leading shape (B, H, W); ``ray_indices`` index the flattened batch.
        """
        lead = self._check_inputs(rays_o, rays_d, bg_color)
        flat_o, flat_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        bg = None
        if bg_color is not None and bg_color.dim() > 1:
            bg = bg_color.reshape(-1, 3)
        chunks = []
        for start in range(0, flat_o.shape[0], self.config.eval_chunk_rays):
            stop = start + self.config.eval_chunk_rays
            chunk_bg = bg_color if bg is None else bg[start:stop]
            chunk_o, chunk_d = flat_o[start:stop], flat_d[start:stop]
            samples = self.sample(chunk_o, chunk_d, pad_empty=False)
            chunk = self._render(chunk_o, chunk_d, samples, chunk_bg, (chunk_o.shape[0],), False)
            chunks.append((start, chunk))
        return RenderOutput(
            rgb=torch.cat([c.rgb for _, c in chunks]).view(*lead, 3),
            opacity=torch.cat([c.opacity for _, c in chunks]).view(*lead, 1),
            depth=torch.cat([c.depth for _, c in chunks]).view(*lead, 1),
            weights=torch.cat([c.weights for _, c in chunks]),
            ray_indices=torch.cat([c.ray_indices + start for start, c in chunks]),
            normals=None,
            t_dirs=torch.cat([c.t_dirs for _, c in chunks]),
            points=torch.cat([c.points for _, c in chunks]),
        )

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _check_inputs(rays_o: Tensor, rays_d: Tensor, bg_color: Tensor | None) -> tuple[int, ...]:
        if rays_o.shape != rays_d.shape or rays_o.dim() < 1 or rays_o.shape[-1] != 3:
            raise ValueError(
                "rays_o and rays_d must have the same shape (..., 3), "
                f"got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}"
            )
        lead = tuple(rays_o.shape[:-1])
        if bg_color is not None and bg_color.shape != (3,) and tuple(bg_color.shape) != lead + (3,):
            raise ValueError(f"bg_color must have shape (3,) or {lead + (3,)}, got {tuple(bg_color.shape)}")
        return lead

    def _march(self, rays_o: Tensor, rays_d: Tensor, near: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Occupancy-grid samples of rays (R, 3) from lattice anchors ``near`` (R,), pruned by transmittance
        and opacity (densities queried ``_DENSITY_BLOCK`` points at a time)."""
        cfg = self.config
        sigma_fn = None
        if cfg.early_stop_eps > 0.0 or cfg.alpha_thre > 0.0:

            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
                t_mid = (t_starts + t_ends)[:, None] * 0.5
                blocks = [
                    self.field.density(rays_o[idx] + rays_d[idx] * mid)
                    for idx, mid in zip(ray_indices.split(_DENSITY_BLOCK), t_mid.split(_DENSITY_BLOCK))
                ]
                return torch.cat(blocks) if blocks else t_starts.new_zeros(0)

        with torch.no_grad():
            return self.grid.sampling(
                rays_o, rays_d, self.render_step_size, near_plane=cfg.near_plane, far_plane=cfg.far_plane,
                sigma_fn=sigma_fn, alpha_thre=cfg.alpha_thre, early_stop_eps=cfg.early_stop_eps, ray_near=near,
            )

    @staticmethod
    def _background(bg_color: Tensor | None, like: Tensor) -> Tensor:
        if bg_color is None:
            return torch.ones(3, dtype=like.dtype, device=like.device)
        bg = bg_color.to(like)
        return bg if bg.dim() == 1 else bg.reshape(-1, 3)
