"""Photometric NeRF fitting from posed views (multi-view reconstruction) with the project's engine.

The field and renderer are the ones the SDS pipeline uses (:class:`~nerf.field.ImplicitVolume`,
:class:`~nerf.renderer.VolumeRenderer`); only their configuration and the losses differ. Recipe (Instant-NGP,
Müller et al. 2022, ``instant-ngp/src/testbed_nerf.cu``, adapted to CPU budgets):

1. **Scene box.** The engine's box is ``[-r, r]^3`` around the origin, so the views are mapped into a
   *normalised frame* ``x_n = (x_world - centre) / scale`` in which the box is ``[-1, 1]^3``. With masks (RGBA
   views), centre and scale come from the *visual hull* (Laurentini 1994): points of a grid that project into
   the foreground (any alpha coverage) of every view that sees them; the hull's bounding box, enlarged by
   ``box_margin``, becomes the box. Without masks they come from the cameras: the point closest to all optical
   axes (least squares) and the largest sphere around it that every camera sees entirely.
2. **Hull initialisation** (masks only): the density is first fitted to the visual hull (``fit_hull``), so that
   rays stop at the hull surface from the first photometric step; this cuts the samples per ray about tenfold on
   CPU and replaces the density blob prior of SDS training. Concavities that the hull closes but the colours
   give away (an open box's lid) are emptied first (:mod:`nerf.photo_carve`); optionally only a shell of the
   hull (``hull_init_shell`` thick) is fitted as occupied. Step 7 fills what no view sees of either.
3. **Batches.** ``batch_rays`` pixels drawn uniformly from all views among those whose ray meets the box.
4. **Background.** Pixels of RGBA views are composited over a random colour per ray, and the render uses the
   same colour (Instant-NGP's random background): the only way to match all colours is to be transparent
   exactly where alpha is 0. RGB views are compared as they are with a white render background.
5. **Losses.** MSE on colour + ``lambda_mask`` × MSE(opacity, alpha) on pixels that have alpha (optional priors,
   off by default: ``lambda_flat``, ``lambda_distortion``, ``lambda_volume``).
6. **Optimiser.** Adam (betas 0.9/0.99, eps 1e-15 as Instant-NGP) with an exponential learning-rate decay to
   ``lr * lr_final_ratio``; the occupancy grid is updated every ``grid.update_every_n_steps`` steps.
7. **Mesh.** ``extract_mesh`` in the normalised frame (the inside that no view sees filled first,
   :func:`nerf.unseen_interior.fill_unseen`), vertices mapped back to the world frame of the views.

With ``surface`` set (:class:`~nerf.sdf.SurfaceConfig`) the field is a :class:`~nerf.sdf.SurfaceField` (a signed
distance rendered as VolSDF density and/or with NeuS interval opacity), step 2 fits the hull's signed distance,
step 5 adds the eikonal, curvature and pressure terms, and step 7 meshes the zero level. Off by default: no setting
of it beat the density field on every shape (issue 22 tables in ``benchmarks/README.md``).

Examples:
    >>> views = load_views("views/transforms.json")  # doctest: +SKIP
    >>> trainer = ReconstructionTrainer(views, ReconstructionConfig(max_steps=200))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    >>> mesh = trainer.extract_mesh()  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from nerf.cameras import get_rays
from nerf.datasets.blender import ViewDataset
from nerf.field import ImplicitVolume
from nerf.losses import disparity_curvature_loss, distortion_loss
from nerf.mesh import EmptyIsosurfaceError, IsosurfaceConfig, extract_mesh
from nerf.mesh_render import MeshRenderConfig, render_mesh
from nerf.renderer import RendererConfig, VolumeRenderer
from nerf.photo_carve import CarveReport, carve_inconsistent
from nerf.scene_box import scene_frame
from nerf.sdf import SurfaceField, fit_surface_to_hull, surface_losses
from nerf.trainers.hull_init import fit_density_to_hull, hull_targets
from nerf.trainers.reconstruction_config import ReconstructionConfig
from nerf.trainers.pixels import interior_triplets, useful_pixels
from nerf.trainers.stats import StepStats
from nerf.unseen_interior import fill_unseen

__all__ = ["ReconstructionConfig", "ReconstructionTrainer", "StepStats"]


class ReconstructionTrainer:
    """Fits an :class:`ImplicitVolume` to posed views (see the module docstring for the recipe).

    Args:
        views: posed images (e.g. :func:`nerf.datasets.blender.load_views`).
        config: see :class:`ReconstructionConfig`.
        device: torch device for the field and the rays.

    Attributes:
        frame: the :class:`SceneFrame` (world ↔ normalised).
        field: the :class:`ImplicitVolume` (radius 1, normalised frame).
        renderer: the :class:`VolumeRenderer`.

    Raises:
        ValueError: see :func:`scene_frame`.
    """

    def __init__(self, views: ViewDataset, config: ReconstructionConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.config = config = config if config is not None else ReconstructionConfig()
        self.views = views
        self.device = torch.device(device)
        self.frame = scene_frame(views, config.box_margin, config.hull_resolution, config.hull_dilation_px,
                                 config.hull_alpha_threshold)
        surface = config.surface
        self.field = (ImplicitVolume(config.field, seed=config.seed) if surface is None else
                      SurfaceField(config.field, config.seed, surface.beta, surface.beta_min)).to(self.device)
        self.renderer = VolumeRenderer(self.field, RendererConfig(
            num_samples_per_ray=config.num_samples_per_ray, grid=config.grid, early_stop_eps=config.early_stop_eps,
        )).to(self.device)
        self.optimizer = torch.optim.Adam(self.field.parameters(), lr=config.lr, betas=(0.9, 0.99), eps=1e-15)
        gamma = config.lr_final_ratio ** (1.0 / max(config.max_steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.render_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._pixels = useful_pixels(views, self.frame)
        self._targets = torch.cat([views.rgb, views.alpha], dim=-1).reshape(-1, 4)
        self._frame_has_alpha = views.has_alpha
        self._triplets = interior_triplets(views, config.flat_stride) if config.lambda_flat > 0 else None
        self.step = 0
        self._hull_fitted = False
        self.carve_report: CarveReport | None = None
        """What :mod:`nerf.photo_carve` found before the hull fit (None: not run)."""
        self._lambda_volume = config.lambda_volume
        self.isosurface_threshold: float | str = self.config.isosurface.threshold
        self.silhouette_scores: dict[float, float] = {}
        """Soft IoU per candidate threshold of the last silhouette fit (empty without one)."""

    # ------------------------------------------------------------------ training
    def train(self, callback: Callable[[StepStats], None] | None = None) -> list[StepStats]:
        """Run up to ``max_steps`` steps (or ``max_seconds``); returns per-step stats (also given to ``callback``)."""
        history: list[StepStats] = []
        start = time.perf_counter()
        self.field.train()
        if self.step == 0 and not self._hull_fitted:
            self.fit_hull(self.config.hull_init_steps)
        while self.step < self.config.max_steps:
            stats = self.train_step()
            history.append(stats)
            if callback is not None:
                callback(stats)
            if self.config.max_seconds is not None and time.perf_counter() - start > self.config.max_seconds:
                break
        self.field.eval()
        return history

    def fit_hull(self, steps: int) -> float:
        """Fit the density to the visual hull (:mod:`nerf.trainers.hull_init`): BCE between ``1 - exp(-density *
        delta)`` and the hull's targets (occupied within ``hull_init_shell`` of its boundary, or the solid hull).

        ``delta`` is one hull cell (``2 / (hull_resolution - 1)``). Starting photometric training from the hull
        makes transmittance fall at the hull surface from the first step, so rays stop early (few samples per
        ray) instead of marching through a cloudy box. Uses the main optimiser's settings in a separate Adam.

        Returns:
            the last loss value (0.0 when ``steps`` is 0 or there is no hull).
        """
        hull = self.frame.hull
        self._hull_fitted = True
        if hull is None or steps <= 0:
            return 0.0
        cfg = self.config
        if cfg.surface is not None:
            return fit_surface_to_hull(self.field, hull, steps, cfg.hull_init_points, cfg.lr, self.generator,
                                       cfg.surface.hull_clamp)
        if cfg.carve is not None and bool(self.views.has_alpha.all()):
            hull, self.carve_report = carve_inconsistent(hull, self.views.rgb, self.views.alpha,
                                                         self._normalised_c2w(), self.views.fovy_deg, cfg.carve)
            if self.carve_report.carved:
                steps, self._lambda_volume = max(steps, cfg.carve.fit_steps), max(
                    cfg.lambda_volume, cfg.carve.lambda_volume)
        targets = hull_targets(hull, cfg.hull_init_occupancy, cfg.hull_init_shell)
        return fit_density_to_hull(self.field, targets, steps, cfg.hull_init_points, cfg.lr, self.generator)

    def train_step(self) -> StepStats:
        """One optimisation step on a random batch of rays."""
        cfg = self.config
        t0 = time.perf_counter()
        self.renderer.update_occupancy(self.step, generator=self.render_generator)
        if cfg.surface is not None:  # VolSDF's biased density first, then NeuS opacity
            self.field.interval_opacity = self.step >= cfg.surface.neus_from * cfg.max_steps
        # 1. a batch of pixels and their rays in the normalised frame (the flat prior's triplets last)
        n_triplets = 0
        if self._triplets is not None and self._triplets[0].numel() > 0:
            n_triplets = int(cfg.batch_rays * cfg.flat_fraction) // 3
        n_uniform = cfg.batch_rays - 3 * n_triplets
        pick = self._pixels[torch.randint(self._pixels.shape[0], (n_uniform,), generator=self.generator)]
        if n_triplets:
            centres, offsets = self._triplets
            chosen = torch.randint(centres.shape[0], (n_triplets,), generator=self.generator)
            mid, off = centres[chosen], offsets[chosen]
            pick = torch.cat([pick, mid - off, mid, mid + off])
        rays_o, rays_d, target, alpha, has_alpha = self._batch(pick)
        # 2. background: random colour where the view has alpha, white otherwise
        bg = torch.rand(pick.shape[0], 3, generator=self.generator).to(self.device)
        bg = torch.where(has_alpha[:, None], bg, torch.ones_like(bg))
        gt = target * alpha + bg * (1.0 - alpha)
        # 3. render and compare
        out = self.renderer(rays_o, rays_d, bg_color=bg, stratified=True, generator=self.render_generator)
        losses = {"rgb": F.mse_loss(out.rgb, gt)}
        if cfg.lambda_mask > 0 and bool(has_alpha.any()):
            losses["mask"] = F.mse_loss(out.opacity[has_alpha], alpha[has_alpha])
        loss = losses["rgb"] + cfg.lambda_mask * losses.get("mask", torch.zeros((), device=self.device))
        if n_triplets:
            # camera-space depth: the ray length times the cosine between the ray and the view's optical axis
            frames = pick[n_uniform:] // (self.views.height * self.views.width)
            axis = -self.views.c2w[frames, :3, 2].to(self.device)
            cosine = (rays_d[n_uniform:] * axis).sum(-1)
            depth = (out.depth[n_uniform:, 0] * cosine).reshape(3, n_triplets).T
            opacity = out.opacity[n_uniform:, 0].reshape(3, n_triplets).T
            losses["flat"] = disparity_curvature_loss(depth, opacity)
            loss = loss + cfg.lambda_flat * losses["flat"]
        if cfg.lambda_distortion > 0:  # sample midpoints as distances along their rays
            t_mid = ((out.points - rays_o[out.ray_indices]) * rays_d[out.ray_indices]).sum(-1)
            losses["distortion"] = distortion_loss(out.weights, t_mid, self.renderer.render_step_size,
                                                   out.ray_indices, rays_o.shape[0])
            loss = loss + cfg.lambda_distortion * losses["distortion"]
        if self._lambda_volume > 0:
            points = torch.rand(cfg.volume_points, 3, generator=self.generator).to(self.device) * 2.0 - 1.0
            step = 1.732 * 2.0 / cfg.num_samples_per_ray
            losses["volume"] = (1.0 - torch.exp(-self.field.density(points) * step)).mean()
            loss = loss + self._lambda_volume * losses["volume"]
        if cfg.surface is not None:
            total, terms = surface_losses(self.field, out.points.detach(), cfg.surface, self.generator)
            losses.update(terms, beta=self.field.beta.detach())
            loss = loss + total
        # 4. update
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return StepStats(step=self.step, total=cfg.max_steps, loss=float(loss.detach()),
                         losses={k: float(v.detach()) for k, v in losses.items()},
                         n_samples=int(out.weights.shape[0]), seconds=time.perf_counter() - t0)

    # ---------------------------------------------------------------- outputs
    @torch.no_grad()
    def render(self, c2w: Tensor, fovy_deg: float, height: int, width: int,
               bg_color: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Render views of the fitted field: ``c2w`` (B, 4, 4) in the views' world frame (OpenGL axes), vertical
        field of view ``fovy_deg`` in degrees, ``height`` × ``width`` pixels, ``bg_color`` (3,) in [0, 1] (None:
        white). Returns rgb (B, H, W, 3) in [0, 1] and opacity (B, H, W, 1)."""
        rays_o, rays_d = get_rays(c2w.float(), torch.tensor([fovy_deg]).expand(c2w.shape[0]), height, width)
        out = self.renderer.render_image(self.frame.to_normalised(rays_o).to(self.device), rays_d.to(self.device),
                                         bg_color=None if bg_color is None else bg_color.to(self.device))
        return out.rgb.cpu(), out.opacity.cpu()

    def density_fn(self, points: Tensor) -> Tensor:
        """Density (M,) at normalised points (M, 3), 1 / normalised units."""
        return self.field.density(points)

    def albedo_fn(self, points_world: Tensor) -> Tensor:
        """Albedo (M, 3) in [0, 1] at *world* points (M, 3) (for texture baking on the world-frame mesh)."""
        return self.field(self.frame.to_normalised(points_world).to(self.device)).albedo

    def extract_mesh(self, config: IsosurfaceConfig | None = None) -> trimesh.Trimesh:
        """Isosurface of the fitted density, in the views' world frame (z-up), with vertex albedo colours.

        With masks the configured threshold is used. Without masks (RGB views) the fitted density is soft and its
        scale arbitrary, so unless ``config`` is given explicitly the threshold is ``unmasked_threshold_fraction``
        × the 99th percentile of the density on a 64³ grid (on a sphere seen in 16 RGB views this put the surface
        2–4 % outside the true one, against no surface at all for the fixed threshold). The value used is kept
        in ``self.isosurface_threshold``.

        Raises:
            nerf.mesh.EmptyIsosurfaceError: nothing crosses the threshold (e.g. training diverged).
        """
        if config is None:
            config = self.config.isosurface
            if isinstance(self.field, SurfaceField):  # its zero level
                config = replace(config, threshold=self.field.surface_density)
            elif self.frame.hull is None:
                config = replace(config, threshold=self._unmasked_threshold())
            elif self.config.silhouette_thresholds:
                best, self.silhouette_scores = self.silhouette_threshold(self.config.silhouette_thresholds)
                config = replace(config, threshold=best)
        self.isosurface_threshold = config.threshold
        mesh = extract_mesh(self.field.density, 1.0, config, color_fn=lambda p: self.field(p).albedo,
                            device=self.device, volume_filter=self._fill_unseen if self._hollow_start else None)
        mesh.vertices = self.frame.to_world(np.asarray(mesh.vertices))
        return mesh

    @torch.no_grad()
    def silhouette_threshold(self, candidates: tuple[float, ...] | list[float]) -> tuple[float, dict[float, float]]:
        """The candidate threshold whose isosurface best reproduces the views' masks.

        For each candidate the isosurface is extracted at ``silhouette_resolution`` and rendered (coverage alpha,
        2×2 supersampled) at every view with alpha; the score is the soft IoU ``sum(min(a, m)) / sum(max(a, m))``
        between the rendered alpha a and the view's alpha m over all those pixels. Silhouettes pin the surface
        where colour cannot: a flat face of one colour sits between its silhouette edges, and a density ramp that
        puts the default threshold outside the true surface (a larger silhouette everywhere) is caught. Ties go to
        the earlier candidate.

        Args:
            candidates: thresholds (1 / normalised units), > 0.

        Returns:
            (best threshold, {candidate: soft IoU in [0, 1]}); a candidate without a surface scores 0.

        Raises:
            ValueError: no candidates, or the views have no masks.
        """
        if not candidates:
            raise ValueError("silhouette_threshold needs at least one candidate")
        masked = torch.nonzero(self.views.has_alpha)[:, 0]
        if masked.numel() == 0:
            raise ValueError("silhouette_threshold needs views with alpha")
        views = self.views
        target = views.alpha[masked, ..., 0]
        scores: dict[float, float] = {}
        for threshold in candidates:
            try:
                mesh = extract_mesh(self.field.density, 1.0, IsosurfaceConfig(
                    resolution=self.config.silhouette_resolution, threshold=float(threshold)), device=self.device)
            except EmptyIsosurfaceError:
                scores[float(threshold)] = 0.0
                continue
            mesh.vertices = self.frame.to_world(np.asarray(mesh.vertices))
            alpha = render_mesh(mesh, views.c2w[masked], views.fovy_deg, views.height, views.width,
                                MeshRenderConfig(shading="color", supersample=2))[..., 3]
            scores[float(threshold)] = float(torch.minimum(alpha, target).sum() / torch.maximum(alpha, target).sum())
        best = max(scores, key=lambda t: (scores[t], -list(scores).index(t)))
        return best, scores

    @torch.no_grad()
    def _unmasked_threshold(self) -> float:
        lin = torch.linspace(-1.0, 1.0, 64, device=self.device)
        grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
        density = torch.cat([self.field.density(chunk) for chunk in grid.split(65536)])
        return float(self.config.unmasked_threshold_fraction * density.quantile(0.99))

    # ---------------------------------------------------------------- helpers
    @property
    def _hollow_start(self) -> bool:
        """The density started from a hull shell or a carved hull (its unseen inside is filled at extraction)."""
        cfg = self.config
        return (cfg.surface is None and (cfg.hull_init_shell > 0 or bool(self.carve_report and self.carve_report
                .carved)) and cfg.hull_init_steps > 0 and self.frame.hull is not None)

    def _normalised_c2w(self) -> Tensor:
        c2w = self.views.c2w.clone()  # cameras in the normalised frame (a similarity: rotations unchanged)
        c2w[:, :3, 3] = self.frame.to_normalised(c2w[:, :3, 3])
        return c2w

    def _fill_unseen(self, volume: np.ndarray, box: np.ndarray, threshold: float) -> np.ndarray:
        return fill_unseen(volume, box, threshold, self._normalised_c2w(), self.views.fovy_deg, self.views.height,
                           self.views.width)

    def _batch(self, pick: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        views = self.views
        hw = views.height * views.width
        frame, rest = pick // hw, pick % hw
        rays_o, rays_d = views.rays(frame, rest // views.width, rest % views.width)
        target = self._targets[pick]
        has_alpha = self._frame_has_alpha[frame]
        dev = self.device
        return (self.frame.to_normalised(rays_o).to(dev), rays_d.to(dev), target[:, :3].to(dev),
                target[:, 3:].to(dev), has_alpha.to(dev))
