"""Image-conditioned NeRF optimisation with Score Distillation Sampling (SDS).

The recipe is threestudio's Stable Zero123 system (``threestudio/systems/zero123.py`` with
``configs/stable-zero123.yaml``): every step renders the reference view (supervised by the input image's RGB
and mask) and a batch of random views (supervised by the 2D diffusion prior through SDS), plus orientation,
sparsity and opacity regularisers, optimised with Adam (lr 0.01, betas (0.9, 0.99)).

The diffusion prior is not imported here: the trainer calls a :class:`Guidance` callback that returns the
gradient of the SDS loss with respect to the rendered RGB. The callback may run in this process or on another
machine (a Ray Serve handle), which keeps ``nerf/`` free of model code.

threestudio's "diffuse-with-point-light" material with ``ambient_only_steps: 100000`` shades every one of the
600 steps with the albedo alone, so this trainer renders albedo directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from nerf.random_cameras import RandomCameraConfig, RandomCameraSampler, ResolutionSchedule
from nerf.cameras import CameraBatch
from nerf.field import ImplicitVolume
from nerf.losses import (
    disparity_curvature_loss,
    normal_difference_sum,
    normal_smoothness_2d,
    opaque_loss,
    orientation_sum,
    sparsity_loss,
)
from nerf.schedules import Schedule, ramp
from nerf.trainers.stats import StepStats
from nerf.renderer import RenderOutput, SampleChunk, SampleTerms, VolumeRenderer

__all__ = ["Guidance", "GuidanceResult", "ReferenceView", "SDSTrainer", "SDSTrainingConfig", "StepStats",
           "disparity_curvature_image_loss"]


@dataclass
class GuidanceResult:
    """What a guidance callback returns for one batch of rendered views.

    Attributes:
        loss: the SDS loss value (for logging only).
        grad_rgb: Tensor with shape (B, 3, H, W): d(SDS loss)/d(rgb), detached, same device as or movable to
            the rendered images.
    """

    loss: float
    grad_rgb: Tensor


class Guidance(Protocol):
    """SDS guidance callback (e.g. :meth:`lift3d.stages.zero123.Zero123.sds` wrapped)."""

    def __call__(
        self, rgb: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor, camera_distance: Tensor, step: int
    ) -> GuidanceResult:
        """Args: rgb (B, 3, H, W) in [0, 1]; angles (B,) in degrees; distance (B,) scene units; step ≥ 0."""
        ...


@dataclass
class ReferenceView:
    """The conditioning image and its camera.

    Attributes:
        rgb: Tensor with shape (3, H, W), [0, 1], the object composited on white.
        mask: Tensor with shape (1, H, W), [0, 1], foreground mask.
        elevation_deg, azimuth_deg: reference camera angles in degrees (Stable Zero123: 5°, 0°).
        camera_distance: scene units (threestudio: 3.8).
        fovy_deg: vertical field of view in degrees (Zero123: 20°).
    """

    rgb: Tensor
    mask: Tensor
    elevation_deg: float = 5.0
    azimuth_deg: float = 0.0
    camera_distance: float = 3.8
    fovy_deg: float = 20.0


@dataclass
class SDSTrainingConfig:
    """Constants of the SDS loop; defaults are threestudio ``configs/stable-zero123.yaml``.

    Loss weights accept threestudio's schedules: a float, or ``[start_step, start, end, end_step]``.

    Attributes:
        max_steps: optimisation steps (threestudio: 600).
        lr, betas, eps: Adam hyper-parameters.
        reference_sizes: square render size of the reference view per phase (same milestones as the random
            cameras' schedule).
        random_cameras: random-view sampling and its resolution/batch schedule.
        lambda_sds, lambda_rgb, lambda_mask, lambda_orient, lambda_sparsity, lambda_opaque: loss weights.
        lambda_normal_smooth: weight of the 2D smoothness of rendered normal maps
            (:func:`nerf.losses.normal_smoothness_2d`), on the reference view and the random views alike.
        lambda_3d_normal_smooth: weight of the 3D smoothness of normals under a jitter of the sample points
            (:func:`nerf.losses.normal_smoothness_3d`), likewise.
        normal_jitter_std: standard deviation of that jitter, world units (threestudio: 0.01).
        lambda_flat: weight of the flat-face prior on the rendered depth, reference and random views alike
            (:func:`disparity_curvature_image_loss`: L1 of the second differences of disparity along every row
            and column triplet of covered pixels; zero on any plane). Not in threestudio's recipe; default 0. An
            untextured flat face gives the guidance almost no depth signal and silhouettes pin it only from grazing
            views (issue 22), but with the SDS oracle (tiny NeRF, 600 steps) λ 100 lowered the cabinet's F@1 %
            from 0.711 to 0.661: at 32–48² renders its ±1 % face wobble is under a pixel, and the expected depth
            is flat where the isosurface is not (benchmarks/README.md).
        flat_min_opacity: rendered opacity (detached) every pixel of a triplet needs for the flat prior, in [0, 1].
        white_background_prob: share of random views composited on white, the rest on one random colour per view.
            Default 1: white only, as threestudio: its zero123 system (``threestudio/systems/zero123.py``, which
            ``configs/stable-zero123.yaml`` runs) sets ``batch["bg_color"] = None``, so random views are composited
            on the renderer's solid-colour background, white (``color (1, 1, 1)``, ``random_aug`` off) — white since
            July 2023 (``torch.ones`` from 7 July, ``None`` from 13 July: commits a7c9d3f, 0b19588). Before that it
            mixed in random colours: half the views from May 2023, 20 % from June 2023 (abfe213; the "0.8" cited
            here before). Stable Zero123 is conditioned on white and the guidance is never told a view's
            background, so a coloured one is pulled toward white and the field answers with white matter; the SDS
            oracle (``benchmarks/sds_oracle.py``) measured Chamfer 33 % at 0.8 against 0.5–1 % at 1.0 on the
            shared meshes.
        occupancy_init_passes: before step 0, fill the occupancy grid from the field this many times (each pass
            evaluates every cell at one jittered point; the grid keeps the maximum, nerfacc's EMA). 0 (the recipe):
            the first update at step 0 only. For a field fitted to a guess (:mod:`nerf.trainers.field_fit`), whose
            surface is sharp: one jittered point per cell misses most cells the surface crosses (blub fitted to
            its degraded copy: 81 cells occupied after one pass, 158 after 8, 211 after 27), and until the next
            update SDS renders only the interior. Each pass costs one density evaluation per cell (the tiny NeRF,
            32³ cells: 43 ms on one CPU core).

    Memory: the reference view and the random views are rendered through
    :meth:`nerf.renderer.VolumeRenderer.render_samples`, in chunks of ``RendererConfig.checkpoint_chunk_samples``
    samples whose field evaluation, orientation term and 3D normal-smoothness pass are recomputed in the backward
    pass; only per-ray outputs and the packed samples stay alive until ``loss.backward()``.
    """

    max_steps: int = 600
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    reference_sizes: tuple[int, ...] = (128, 256, 512)
    random_cameras: RandomCameraConfig = field(default_factory=RandomCameraConfig)
    lambda_sds: Schedule = 0.1
    lambda_rgb: Schedule = (100, 500.0, 1000.0, 400)
    lambda_mask: Schedule = 50.0
    lambda_orient: Schedule = 1.0
    lambda_sparsity: Schedule = 0.5
    lambda_opaque: Schedule = 0.5
    lambda_normal_smooth: Schedule = (100, 7.0, 5.0, 150, 10.0, 200)
    lambda_3d_normal_smooth: Schedule = (100, 7.0, 5.0, 150, 10.0, 200)
    normal_jitter_std: float = 0.01
    lambda_flat: Schedule = 0.0
    flat_min_opacity: float = 0.5
    white_background_prob: float = 1.0
    occupancy_init_passes: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.occupancy_init_passes < 0:
            raise ValueError("SDSTrainingConfig: max_steps must be >= 1 and occupancy_init_passes >= 0")
        if not 0.0 <= self.flat_min_opacity <= 1.0:
            raise ValueError(f"SDSTrainingConfig: flat_min_opacity must be in [0, 1], got {self.flat_min_opacity}")
        if len(self.reference_sizes) != len(self.random_cameras.schedule.sizes):
            raise ValueError("reference_sizes needs one entry per phase of random_cameras.schedule")

    @property
    def schedule(self) -> ResolutionSchedule:
        return self.random_cameras.schedule

    def for_refinement(self, occupancy_init_passes: int = 16) -> "SDSTrainingConfig":
        """The recipe for refining a field fitted to a guess (``method="fast+sds"``, :mod:`nerf.trainers.field_fit`).

        Every phase renders the random views and the reference view at the last phase's sizes (batch sizes and
        milestones kept): the coarse phases exist to find the object's layout, which the guess already gives, and
        SDS refines at the resolution that shows the detail. The occupancy grid is filled from the fitted field
        before step 0 (:attr:`occupancy_init_passes`). Measured with the SDS oracle (``benchmarks/sds_oracle.py
        --degrade 0.65``, tiny NeRF, 200 steps; see benchmarks/README.md).
        """
        schedule = self.schedule
        finest = replace(schedule, sizes=(schedule.sizes[-1],) * len(schedule.sizes))
        return replace(self, random_cameras=replace(self.random_cameras, schedule=finest),
                       reference_sizes=(self.reference_sizes[-1],) * len(self.reference_sizes),
                       occupancy_init_passes=occupancy_init_passes)


def disparity_curvature_image_loss(depth_map: Tensor, opacity_map: Tensor, min_opacity: float = 0.5,
                                   stride: int = 1) -> Tensor:
    """:func:`nerf.losses.disparity_curvature_loss` over every row and column triplet of whole rendered images.

    A rendered view has all its pixels, so every triplet ``(p − s, p, p + s)`` along a row or a column whose three
    pixels are covered (rendered opacity, detached, >= ``min_opacity``) enters the mean; triplets that straddle a
    silhouette are left out, those across creases and occlusion edges stay in (the L1 norm lets a few large second
    differences through: piecewise-planar, not smooth).

    Args:
        depth_map: Tensor with shape (B, H, W, 1), ``sum(w * t)`` per pixel (:attr:`RenderOutput.depth` of views).
        opacity_map: Tensor with shape (B, H, W, 1), accumulated weight in [0, 1].
        min_opacity: coverage in [0, 1] a pixel needs for its triplets to count.
        stride: spacing in pixels of a triplet's pixels (>= 1).

    Returns:
        Scalar Tensor >= 0, differentiable w.r.t. both maps; 0 (still attached to the graph) when no triplet is
        covered.

    Raises:
        ValueError: ``stride`` < 1 or ``min_opacity`` outside [0, 1].

    Examples:
        >>> u = torch.arange(5.0)
        >>> disparity = (0.25 + 0.01 * u[:, None] + 0.02 * u[None, :])[None, :, :, None]  # a plane's: affine
        >>> ones = torch.ones_like(disparity)
        >>> float(disparity_curvature_image_loss(1.0 / disparity, ones)) < 1e-6
        True
    """
    if stride < 1 or not 0.0 <= min_opacity <= 1.0:
        raise ValueError(f"disparity_curvature_image_loss: need stride >= 1 and 0 <= min_opacity <= 1, got "
                         f"{stride}, {min_opacity}")
    depth, opacity = depth_map[..., 0], opacity_map[..., 0]
    covered = opacity.detach() >= min_opacity
    triplets_d, triplets_o = [], []
    for dim in (1, 2):  # along columns (H), along rows (W)
        n = depth.shape[dim] - 2 * stride
        if n < 1:
            continue
        take = [tuple(slice(k * stride, k * stride + n) if d == dim else slice(None) for d in range(3))
                for k in range(3)]
        keep = covered[take[0]] & covered[take[1]] & covered[take[2]]
        triplets_d.append(torch.stack([depth[t][keep] for t in take], dim=-1))
        triplets_o.append(torch.stack([opacity[t][keep] for t in take], dim=-1))
    if sum(t.shape[0] for t in triplets_d) == 0:
        return depth.sum() * 0.0
    return disparity_curvature_loss(torch.cat(triplets_d), torch.cat(triplets_o))


def _rays(cameras: CameraBatch, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rays_o, rays_d = cameras.rays(size, size)
    return rays_o.to(device), rays_d.to(device)


def _resize(image: Tensor, size: int) -> Tensor:
    """(C, H, W) → (C, size, size), antialiased bilinear."""
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


class SDSTrainer:
    """Optimises an :class:`ImplicitVolume` from one reference view and an SDS guidance callback.

    Examples:
        >>> trainer = SDSTrainer(renderer, reference, guidance, SDSTrainingConfig(max_steps=10), seed=0)
        >>> trainer.train(callback=lambda stats: print(stats.step, stats.loss))
    """

    def __init__(
        self,
        renderer: VolumeRenderer,
        reference: ReferenceView,
        guidance: Guidance | None,
        config: SDSTrainingConfig,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.renderer = renderer.to(device)
        self.field: ImplicitVolume = renderer.field
        self.reference = reference
        self.guidance = guidance
        self.config = config
        self.device = torch.device(device)
        # One generator for cameras/backgrounds (CPU) and one for stratified sampling on the render device.
        self.generator = torch.Generator().manual_seed(seed)
        self.render_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.camera_sampler = RandomCameraSampler(config.random_cameras, self.generator)
        self.optimizer = torch.optim.Adam(
            self.field.parameters(), lr=config.lr, betas=config.betas, eps=config.eps
        )
        self.reference_camera = CameraBatch.from_spherical(
            reference.elevation_deg, reference.azimuth_deg, reference.camera_distance, reference.fovy_deg
        )
        self._reference_cache: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        # Normals cost about twice the field's work: render them only if some normal loss is on at some step.
        schedules = (config.lambda_orient, config.lambda_normal_smooth, config.lambda_3d_normal_smooth)
        self.needs_normals = any(ramp(s, step) > 0 for s in schedules for step in range(config.max_steps))


    def _reference_batch(self, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Rays and targets of the reference view at ``size``: rays_o, rays_d (1,S,S,3), rgb (1,S,S,3), mask (1,S,S,1)."""
        if size not in self._reference_cache:
            rays_o, rays_d = _rays(self.reference_camera, size, self.device)
            rgb = _resize(self.reference.rgb.float(), size).permute(1, 2, 0)[None]
            mask = (_resize(self.reference.mask.float(), size) > 0.5).float().permute(1, 2, 0)[None]
            self._reference_cache[size] = (rays_o, rays_d, rgb.to(self.device), mask.to(self.device))
        return self._reference_cache[size]

    def _render(self, rays_o: Tensor, rays_d: Tensor, step: int, bg_color: Tensor | None = None) -> RenderOutput:
        """Render training rays (chunked, checkpointed) with the per-sample regularisers of ``step`` in
        ``sample_sums``: "orient" (numerator of the orientation loss) and "3d_normal_smooth" (sum of the normal
        differences under the jitter)."""
        cfg = self.config
        samples = self.renderer.sample(rays_o, rays_d, stratified=True, generator=self.render_generator)
        terms: dict[str, Callable[[SampleChunk], Tensor]] = {}
        if self.needs_normals and ramp(cfg.lambda_orient, step) > 0:
            terms["orient"] = lambda chunk: orientation_sum(chunk.weights, chunk.normals, chunk.t_dirs)
        if self.needs_normals and ramp(cfg.lambda_3d_normal_smooth, step) > 0:
            # drawn for all samples before rendering (the chunks are recomputed in backward and must not draw)
            jitter = torch.randn((len(samples), 3), generator=self.render_generator, device=rays_o.device,
                                 dtype=rays_o.dtype)

            def normal_smooth_3d(chunk: SampleChunk) -> Tensor:
                perturbed = self.field(chunk.points + cfg.normal_jitter_std * jitter[chunk.start : chunk.stop],
                                       with_normal=True).normal
                return normal_difference_sum(chunk.normals, perturbed)

            terms["3d_normal_smooth"] = normal_smooth_3d
        sample_terms: SampleTerms | None = None
        if terms:
            sample_terms = lambda chunk: {name: term(chunk) for name, term in terms.items()}  # noqa: E731
        return self.renderer.render_samples(
            rays_o, rays_d, samples, bg_color=bg_color, with_normal=self.needs_normals, sample_terms=sample_terms
        )

    def _regularisers(self, out: RenderOutput, step: int, losses: dict[str, Tensor], with_sparsity: bool) -> Tensor:
        cfg = self.config
        total = torch.zeros((), device=self.device)
        if "orient" in out.sample_sums:
            # orientation_loss: sum over samples / number of rays with positive opacity
            losses["orient"] = out.sample_sums["orient"] / (out.opacity > 0).sum().clamp_min(1)
            total = total + ramp(cfg.lambda_orient, step) * losses["orient"]
        if out.normal_map is not None and ramp(cfg.lambda_normal_smooth, step) > 0:
            losses["normal_smooth"] = normal_smoothness_2d(out.normal_map)
            total = total + ramp(cfg.lambda_normal_smooth, step) * losses["normal_smooth"]
        if "3d_normal_smooth" in out.sample_sums:
            # normal_smoothness_3d: mean over the S × 3 entries
            losses["3d_normal_smooth"] = out.sample_sums["3d_normal_smooth"] / (3 * out.ray_indices.numel())
            total = total + ramp(cfg.lambda_3d_normal_smooth, step) * losses["3d_normal_smooth"]
        if ramp(cfg.lambda_flat, step) > 0:
            losses["flat"] = disparity_curvature_image_loss(out.depth, out.opacity, cfg.flat_min_opacity)
            total = total + ramp(cfg.lambda_flat, step) * losses["flat"]
        if with_sparsity:
            losses["sparsity"] = sparsity_loss(out.opacity)
            total = total + ramp(cfg.lambda_sparsity, step) * losses["sparsity"]
        losses["opaque"] = opaque_loss(out.opacity)
        return total + ramp(cfg.lambda_opaque, step) * losses["opaque"]

    def reference_step(self, step: int, losses: dict[str, Tensor]) -> Tensor:
        """Render the reference view and return its weighted loss (RGB + mask + regularisers)."""
        cfg = self.config
        size = cfg.reference_sizes[cfg.schedule.phase(step)]
        rays_o, rays_d, gt_rgb, gt_mask = self._reference_batch(size)
        out = self._render(rays_o, rays_d, step)
        # The background is white, so the target is the image composited on white, as in threestudio.
        gt = gt_rgb * gt_mask + (1.0 - gt_mask)
        losses["rgb"] = F.mse_loss(out.rgb, gt)
        losses["mask"] = F.mse_loss(out.opacity, gt_mask)
        weighted = ramp(cfg.lambda_rgb, step) * losses["rgb"] + ramp(cfg.lambda_mask, step) * losses["mask"]
        return weighted + self._regularisers(out, step, losses, with_sparsity=False)

    def backgrounds(self, batch: int) -> Tensor:
        """Background colours (batch, 3) of the random views, CPU float32: white with probability
        ``white_background_prob``, else one uniform random colour per view (drawn from the camera generator)."""
        white = torch.rand(batch, generator=self.generator) < self.config.white_background_prob
        return torch.where(white[:, None], torch.ones(batch, 3), torch.rand(batch, 3, generator=self.generator))

    def guidance_step(self, guidance: Guidance, step: int, losses: dict[str, Tensor]) -> Tensor:
        """Render random views, ask ``guidance`` for d(SDS)/d(rgb), return a surrogate loss with that gradient."""
        cfg = self.config
        cameras, size = self.camera_sampler.sample(step)
        batch = len(cameras)
        rays_o, rays_d = _rays(cameras, size, self.device)
        bg = self.backgrounds(batch).to(self.device)[:, None, None, :].expand(batch, size, size, 3)
        out = self._render(rays_o, rays_d, step, bg_color=bg)
        rgb = out.rgb.permute(0, 3, 1, 2)  # (B, 3, H, W)
        result = guidance(
            rgb.detach(), cameras.elevation_deg, cameras.azimuth_deg, cameras.distance, step
        )
        losses["sds"] = torch.tensor(float(result.loss))
        # (rgb * g).sum() has gradient g with respect to rgb: the SDS gradient flows into the field.
        surrogate = (rgb * result.grad_rgb.to(rgb.device, rgb.dtype)).sum()
        return ramp(cfg.lambda_sds, step) * surrogate + self._regularisers(out, step, losses, with_sparsity=True)

    def train(self, callback: Callable[[StepStats], None] | None = None) -> list[StepStats]:
        """Run ``config.max_steps`` steps; returns the per-step stats (also passed to ``callback``)."""
        history: list[StepStats] = []
        self.field.train()
        for _ in range(self.config.occupancy_init_passes):
            self.renderer.update_occupancy(0, generator=self.render_generator)
        for step in range(self.config.max_steps):
            start = time.perf_counter()
            self.renderer.update_occupancy(step, generator=self.render_generator)
            losses: dict[str, Tensor] = {}
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.reference_step(step, losses)
            if self.guidance is not None:
                loss = loss + self.guidance_step(self.guidance, step, losses)
            loss.backward()
            self.optimizer.step()
            stats = StepStats(
                step=step + 1,
                total=self.config.max_steps,
                loss=float(loss.detach()),
                losses={k: float(v.detach()) for k, v in losses.items()},
                seconds=time.perf_counter() - start,
            )
            history.append(stats)
            if callback is not None:
                callback(stats)
        self.field.eval()
        return history
