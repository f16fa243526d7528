"""Volume renderer: rays -> occupancy-grid samples -> field -> composited rgb, opacity, depth.

Mirrors threestudio's ``NeRFVolumeRenderer`` (``threestudio/models/renderers/nerf_volume_renderer.py``) with the
``occgrid`` estimator: a 32^3 occupancy grid over ``[-radius, radius]^3``, a fixed step
``1.732 * 2 * radius / num_samples_per_ray``, samples pruned by transmittance (and optionally opacity), and
compositing over a background colour.

The field is any module with ``forward(points (N, 3), with_normal: bool) -> FieldOutput`` and
``density(points (N, 3)) -> (N,)`` (see :class:`~nerf.field.ImplicitVolume`); the renderer never imports a
concrete field class at run time.

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

from nerf.volrend import accumulate_along_rays, render_weight_from_density
from nerf.occupancy_grid import OccupancyGrid, OccupancyGridConfig

if TYPE_CHECKING:
    from nerf.field import FieldOutput

__all__ = ["Field", "RenderOutput", "RendererConfig", "VolumeRenderer"]


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
        weights: Tensor with shape (S,), packed per-sample weights.
        ray_indices: Tensor with shape (S,), int64, index of each sample's ray in the flattened batch.
        normals: Tensor with shape (S, 3) of unit outward normals, or None.
        t_dirs: Tensor with shape (S, 3), ray direction of each sample.
        points: Tensor with shape (S, 3), world position of each sample (interval midpoints).
        normal_map: Tensor with shape (..., 3), or None without normals: the weight-averaged normal, normalised,
            mapped to [0, 1] and multiplied by the opacity, ``(n + 1) / 2 · opacity`` (threestudio's
            ``comp_normal``, which its 2D normal-smoothness loss reads).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor
    ray_indices: Tensor
    normals: Tensor | None
    t_dirs: Tensor
    points: Tensor
    normal_map: Tensor | None = None


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
        if config.num_samples_per_ray < 1 or config.eval_chunk_rays < 1:
            raise ValueError(f"RendererConfig: num_samples_per_ray and eval_chunk_rays must be >= 1: {config}")
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
        return self._render(rays_o, rays_d, bg_color, lead, with_normal, stratified, generator, pad_empty=True)

    def _render(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        bg_color: Tensor | None,
        lead: tuple[int, ...],
        with_normal: bool,
        stratified: bool,
        generator: torch.Generator | None,
        pad_empty: bool,
    ) -> RenderOutput:
        # 1. flatten (inputs already checked)
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        n_rays = rays_o.shape[0]
        # 2. sample
        ray_indices, t_starts, t_ends = self._sample(rays_o, rays_d, stratified, generator)
        if pad_empty and ray_indices.numel() == 0 and n_rays > 0:
            # One zero-length sample keeps the outputs connected to the field's graph (threestudio's
            # validate_empty_rays); it has alpha 0 and so contributes nothing.
            ray_indices = torch.zeros(1, dtype=torch.long, device=rays_o.device)
            t_starts = torch.zeros(1, dtype=rays_o.dtype, device=rays_o.device)
            t_ends = t_starts.clone()
        # 3. query the field at the interval midpoints
        t_mid = (t_starts + t_ends) * 0.5
        t_dirs = rays_d[ray_indices]
        points = rays_o[ray_indices] + t_dirs * t_mid[:, None]
        out = self.field(points, with_normal=with_normal)
        # 4. composite
        weights, _, _ = render_weight_from_density(t_starts, t_ends, out.density, ray_indices, n_rays)
        opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
        depth = accumulate_along_rays(weights, t_mid[:, None], ray_indices, n_rays)
        rgb_fg = accumulate_along_rays(weights, out.albedo, ray_indices, n_rays)
        bg = self._background(bg_color, rgb_fg)
        rgb = rgb_fg + bg * (1.0 - opacity)
        normal_map = None
        if out.normal is not None:
            normal = F.normalize(accumulate_along_rays(weights, out.normal, ray_indices, n_rays), dim=-1)
            normal_map = ((normal + 1.0) * 0.5 * opacity).view(*lead, 3)
        return RenderOutput(
            rgb=rgb.view(*lead, 3),
            opacity=opacity.view(*lead, 1),
            depth=depth.view(*lead, 1),
            weights=weights,
            ray_indices=ray_indices,
            normals=out.normal,
            t_dirs=t_dirs,
            points=points,
            normal_map=normal_map,
        )

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
            chunk = self._render(chunk_o, chunk_d, chunk_bg, (chunk_o.shape[0],), False, False, None, pad_empty=False)
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

    def _sample(
        self, rays_o: Tensor, rays_d: Tensor, stratified: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        sigma_fn = None
        if cfg.early_stop_eps > 0.0 or cfg.alpha_thre > 0.0:

            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
                t_mid = (t_starts + t_ends)[:, None] * 0.5
                return self.field.density(rays_o[ray_indices] + rays_d[ray_indices] * t_mid)

        with torch.no_grad():
            ray_indices, t_starts, t_ends = self.grid.sampling(
                rays_o, rays_d, self.render_step_size, near_plane=cfg.near_plane, far_plane=cfg.far_plane,
                stratified=stratified, sigma_fn=sigma_fn, alpha_thre=cfg.alpha_thre,
                early_stop_eps=cfg.early_stop_eps, generator=generator,
            )
        return ray_indices, t_starts, t_ends

    @staticmethod
    def _background(bg_color: Tensor | None, like: Tensor) -> Tensor:
        if bg_color is None:
            return torch.ones(3, dtype=like.dtype, device=like.device)
        bg = bg_color.to(like)
        return bg if bg.dim() == 1 else bg.reshape(-1, 3)
