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
   CPU and replaces the density blob prior of SDS training. Optionally only a shell of the hull
   (``hull_init_shell`` thick) is fitted as occupied, so that carving uncovers empty space; step 7 fills it.
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

import math
import time
from dataclasses import dataclass, replace
from dataclasses import field as default
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from nerf.cameras import get_rays
from nerf.datasets.blender import ViewDataset
from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig, ImplicitVolume
from nerf.losses import disparity_curvature_loss, distortion_loss
from nerf.mesh import EmptyIsosurfaceError, IsosurfaceConfig, extract_mesh
from nerf.mesh_render import MeshRenderConfig, render_mesh
from nerf.renderer import RendererConfig, VolumeRenderer
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.scene_box import scene_frame
from nerf.sdf import SurfaceConfig, SurfaceField, fit_surface_to_hull, surface_losses
from nerf.trainers.hull_init import fit_density_to_hull, hull_targets
from nerf.trainers.pixels import interior_triplets, useful_pixels
from nerf.trainers.stats import StepStats
from nerf.unseen_interior import fill_unseen

__all__ = ["ReconstructionConfig", "ReconstructionTrainer", "StepStats"]


def _default_field() -> FieldConfig:
    # 12 levels from 16 to 512 cells: finer than the 128² views need, small enough for 2 CPU cores.
    grid = HashGridConfig(n_levels=12, n_features_per_level=2, log2_hashmap_size=17, base_resolution=16,
                          per_level_scale=math.exp(math.log(512 / 16) / 11))
    return FieldConfig(radius=1.0, hash_grid=grid, n_neurons=64, n_hidden_layers=1, density_bias="none")


@dataclass
class ReconstructionConfig:
    """Hyper-parameters of :class:`ReconstructionTrainer` (tuned for 32 views at 128² on 2 CPU cores)."""

    max_steps: int = 800
    """Photometric optimisation steps (>= 1); 800 of 1 024 rays (issue 22, ``benchmarks/README.md``)."""
    max_seconds: float | None = None
    """Stop earlier once training took this long (wall clock); None: run ``max_steps``."""
    batch_rays: int = 1024
    """Rays per step (>= 1). 800 × 1 024 rays beat 400 × 4 096 on boxes in half the time (issue 22 tables)."""
    lr: float = 1e-2
    """Initial Adam learning rate (Instant-NGP: 1e-2)."""
    lr_final_ratio: float = 0.1
    """Learning rate at the last step relative to ``lr`` (exponential decay), in (0, 1]."""
    lambda_mask: float = 0.1
    """Weight of MSE(opacity, alpha) on pixels with alpha (>= 0)."""
    field: FieldConfig = default(default_factory=_default_field)
    """The implicit volume. Its box is the normalised frame's ``[-1, 1]^3`` (``radius`` must be 1); no density
    bias by default, since the visual hull replaces the blob prior."""
    num_samples_per_ray: int = 256
    """Sets the march step, ``1.732 * 2 / num_samples_per_ray`` in the normalised frame."""
    grid: OccupancyGridConfig = default(default_factory=lambda: OccupancyGridConfig(resolution=32))
    """Occupancy grid of the renderer (box ``[-1, 1]^3``)."""
    early_stop_eps: float = 1e-3
    """Transmittance below which samples are skipped (see :class:`nerf.renderer.RendererConfig`)."""
    box_margin: float = 1.1
    """Box half-size / half-size of the object estimate (visual hull or camera sphere), >= 1."""
    hull_resolution: int = 64
    """Grid points per axis of the visual-hull estimate (>= 8); 64 (not 96) lifts the cube's F@1 % by 0.07."""
    hull_alpha_threshold: float = 0.01
    """A pixel is foreground for carving when its alpha exceeds this: any partial coverage counts, so the hull
    (looked up at the pixel containing a point's projection) stays a superset of the object, in [0, 1)."""
    hull_dilation_px: float = 0.0
    """Masks are also dilated by this many pixels before carving (for noisy real masks), >= 0."""
    hull_init_steps: int = 60
    """Hull-fit steps before photometric training (0 disables; needs masks); 60, not 100: less saturated, carvable."""
    hull_init_points: int = 16384
    """Random points per hull-fitting step (>= 1)."""
    hull_init_occupancy: float = 1.0
    """Target occupancy of one hull cell inside the hull, in (0, 1]: 1 fits a saturated solid; lower values a
    softer density that photometric training carves more easily (cavities that the silhouettes cannot show)."""
    hull_init_shell: float = 0.0
    """Only hull cells within this distance of the hull's boundary (normalised units) are fitted as occupied,
    deeper ones as empty (:func:`nerf.trainers.hull_init.hull_targets`; 0: the solid hull, the default), >= 0;
    the empty inside is filled before marching cubes where no view sees it (:func:`nerf.unseen_interior
    .fill_unseen`). Issue 22 (``benchmarks/README.md``): 0.1 carves the cube's faces (F@1 % 0.836 → 0.900) and
    is no worse on 32 views at 128², but breaks a sphere from 16 views at 64² (hollow, breached shell); off."""
    lambda_flat: float = 0.0
    """Weight of the flat-face prior (:func:`nerf.losses.disparity_curvature_loss`) on pixel triplets inside the
    masks (>= 0; 0 disables; needs RGBA views)."""
    flat_fraction: float = 0.25
    """Share of ``batch_rays`` spent on the prior's triplets (the rest are drawn uniformly), in [0, 1)."""
    flat_stride: int = 2
    """Spacing in pixels of a triplet's three pixels along its row or column (>= 1)."""
    lambda_distortion: float = 0.0
    """Weight of the distortion loss (:func:`nerf.losses.distortion_loss`, mip-NeRF 360) that sharpens each ray's
    density ramp into a step (>= 0; 0 disables; issue 22: it pins flat faces to the hull, so it stays off)."""
    lambda_volume: float = 0.0
    """Weight of the volume penalty: the mean occupancy ``1 - exp(-density * step)`` (``step`` the march step) at
    ``volume_points`` uniform points of the box, an inward pressure that the colour and mask losses resist wherever
    the views pin the surface (>= 0; 0 disables)."""
    volume_points: int = 4096
    """Uniform points per step of the volume penalty (>= 1)."""
    surface: SurfaceConfig | None = None
    """None: a density field; a :class:`~nerf.sdf.SurfaceConfig`: a signed-distance field rendered with VolSDF
    density and/or NeuS opacity, fitted to the hull's signed distance, regularised by eikonal, curvature and
    pressure terms, meshed at its zero level (the isosurface threshold is then ignored). Off: issue 22's tables."""
    isosurface: IsosurfaceConfig = default(default_factory=lambda: IsosurfaceConfig(resolution=128, threshold=20.0))
    """Mesh extraction in the normalised frame (threshold in 1 / normalised units): 128³ matched 192³ within 0.03 %
    Chamfer at a quarter of the cost; 15–20 suits organic meshes, boxes 40–50 (benchmarks/README.md)."""
    silhouette_thresholds: tuple[float, ...] = ()
    """Candidate isosurface thresholds (1 / normalised units); with masks, :meth:`ReconstructionTrainer.extract_mesh`
    uses the one whose mesh silhouettes best match them (:meth:`ReconstructionTrainer.silhouette_threshold`)."""
    silhouette_resolution: int = 96
    """Marching-cubes grid points per axis of the candidate meshes of the silhouette fit (>= 8)."""
    unmasked_threshold_fraction: float = 0.4
    """Without masks, the isosurface threshold as a fraction of the 99th-percentile density (see
    :meth:`ReconstructionTrainer.extract_mesh`), in (0, 1]."""
    seed: int = 0
    """Seeds the field initialisation, the ray batches and the jitter."""

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_rays < 1 or self.field.n_hidden_layers < 1 or self.hull_resolution < 8:
            raise ValueError(f"ReconstructionConfig: max_steps, batch_rays, field.n_hidden_layers must be >= 1 and "
                             f"hull_resolution >= 8: {self}")
        if self.field.radius != 1.0:
            raise ValueError(f"ReconstructionConfig: field.radius must be 1 (the normalised frame), got "
                             f"{self.field.radius}")
        if not 0.0 < self.lr_final_ratio <= 1.0 or self.box_margin < 1.0 or self.lambda_mask < 0:
            raise ValueError(f"ReconstructionConfig: need 0 < lr_final_ratio <= 1, box_margin >= 1, "
                             f"lambda_mask >= 0: {self}")
        needs = {"lambda_flat >= 0, 0 <= flat_fraction < 1, flat_stride >= 1":
                 self.lambda_flat >= 0 and 0.0 <= self.flat_fraction < 1.0 and self.flat_stride >= 1,
                 "silhouette_resolution >= 8, silhouette_thresholds > 0":
                 self.silhouette_resolution >= 8 and all(t > 0 for t in self.silhouette_thresholds),
                 "lambda_volume, lambda_distortion >= 0, volume_points >= 1, 0 < hull_init_occupancy <= 1":
                 min(self.lambda_volume, self.lambda_distortion) >= 0 and self.volume_points >= 1
                 and 0.0 < self.hull_init_occupancy <= 1.0,
                 "hull_init_steps >= 0, hull_init_points >= 1, 0 <= hull_alpha_threshold < 1, hull_init_shell >= 0":
                 self.hull_init_steps >= 0 and self.hull_init_points >= 1 and 0.0 <= self.hull_alpha_threshold < 1.0
                 and self.hull_init_shell >= 0}
        if not all(needs.values()):
            raise ValueError(f"ReconstructionConfig: need {'; '.join(k for k, ok in needs.items() if not ok)}: {self}")


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
        if cfg.lambda_volume > 0:
            points = torch.rand(cfg.volume_points, 3, generator=self.generator).to(self.device) * 2.0 - 1.0
            step = 1.732 * 2.0 / cfg.num_samples_per_ray
            losses["volume"] = (1.0 - torch.exp(-self.field.density(points) * step)).mean()
            loss = loss + cfg.lambda_volume * losses["volume"]
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
        """The density started from a hull shell (its unseen inside is filled at extraction)."""
        cfg = self.config
        return (cfg.surface is None and cfg.hull_init_shell > 0 and cfg.hull_init_steps > 0
                and self.frame.hull is not None)

    def _fill_unseen(self, volume: np.ndarray, box: np.ndarray, threshold: float) -> np.ndarray:
        c2w = self.views.c2w.clone()  # cameras in the normalised frame (a similarity: rotations unchanged)
        c2w[:, :3, 3] = self.frame.to_normalised(c2w[:, :3, 3])
        return fill_unseen(volume, box, threshold, c2w, self.views.fovy_deg, self.views.height, self.views.width)

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
