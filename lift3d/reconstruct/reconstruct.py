"""Posed views → NeRF fit → mesh: the application function behind ``lift3d reconstruct`` and ``views-to-3d`` jobs.

``reconstruct`` fits the views (``transforms.json``, NeRF-synthetic convention) and writes, through an
:class:`~lift3d.io.artifacts.ArtifactWriter`, ``model.glb`` (vertex colours), optionally ``model_textured.glb``
(UV atlas + baked albedo), ``preview.png`` (turntable strip) and ``metadata.json``, each as soon as it is ready.
The mesh stays in the world frame of ``transforms.json`` — no recentring, no rescaling — and is only turned to
glTF's Y-up axes by (x, y, z) → (x, z, −y), so it can be compared with the source mesh.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from PIL import Image

from lift3d.errors import InvalidInputError
from lift3d.io.artifacts import ArtifactWriter, package_versions
from lift3d.io.mesh_assets import MeshExportOptions, write_mesh_assets
from lift3d.progress import ProgressReporter
from nerf.cameras import look_at
from nerf.datasets.blender import TransformsError, ViewDataset, load_views
from nerf.mesh import EmptyIsosurfaceError
from nerf.mesh_render import MeshRenderConfig, render_mesh
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer
from nerf.trainers.stats import StepStats

__all__ = ["ReconstructOptions", "ReconstructResult", "reconstruct", "turntable"]


@dataclass
class ReconstructOptions:
    """User options of :func:`reconstruct`."""

    steps: int | None = None
    """Photometric training steps (1–20000); None: the trainer configuration's ``max_steps`` (800 by default, the
    tiny preset's 400)."""
    seed: int = 0
    """Seeds field initialisation, ray batches and jitter."""
    mesh_resolution: int = 128
    """Marching-cubes grid points per axis over the scene box (32–512)."""
    export: MeshExportOptions = field(default_factory=MeshExportOptions)
    """Decimation and texture of the exported mesh."""
    downscale: int = 1
    """Integer factor by which input images are reduced before training (>= 1)."""
    preview: bool = True
    """Write ``preview.png``, a turntable strip of the exported mesh."""
    device: str = "cpu"
    """Torch device for training."""

    def check(self) -> None:
        """Raise :class:`InvalidInputError` naming the first out-of-range option."""
        if self.steps is not None and not 1 <= self.steps <= 20000:
            raise InvalidInputError(f"steps must be in 1..20000, got {self.steps}")
        if not 32 <= self.mesh_resolution <= 512:
            raise InvalidInputError(f"mesh resolution must be in 32..512, got {self.mesh_resolution}")
        if self.downscale < 1:
            raise InvalidInputError(f"downscale must be >= 1, got {self.downscale}")
        self.export.check()


@dataclass
class ReconstructResult:
    """What :func:`reconstruct` produced.

    Attributes:
        artifacts: names of the artifacts written, relative to the writer's prefix, in order.
        mesh: the exported mesh in the views' world frame (z-up).
        trainer: the fitted trainer (field, renderer, scene frame), e.g. to render held-out views.
        metadata: the content of ``metadata.json``.
    """

    artifacts: list[str]
    mesh: trimesh.Trimesh
    trainer: ReconstructionTrainer
    metadata: dict[str, Any] = field(default_factory=dict)


def reconstruct(views_dir: str | Path, writer: ArtifactWriter, options: ReconstructOptions | None = None,
                config: ReconstructionConfig | None = None, progress: ProgressReporter | None = None,
                source: str | None = None, write_metadata: bool = True) -> ReconstructResult:
    """Fit a NeRF to posed views and export the mesh.

    Args:
        views_dir: directory holding ``transforms.json`` (or the file itself) and the images it lists.
        writer: where ``model.glb``, ``model_textured.glb``, ``preview.png`` and ``metadata.json`` go.
        options: user options; defaults to :class:`ReconstructOptions`.
        config: full trainer configuration; its ``seed``, isosurface resolution and (when ``options.steps`` is set)
            ``max_steps`` are replaced by the options. Defaults to :class:`ReconstructionConfig`.
        progress: receives the progress of stage ``nerf_training`` (every tenth step and the last).
        source: how ``metadata.json`` names the views (default: the resolved ``views_dir``; the service passes
            the upload's name so that no server path reaches a user).
        write_metadata: write ``metadata.json`` (False: the caller adds fields and writes it, as the service does).

    Returns:
        :class:`ReconstructResult`.

    Raises:
        InvalidInputError: bad options, a bad ``transforms.json`` or image, inconsistent masks, or a fit from which
            no surface can be extracted.
    """
    # 1. check inputs
    options = options or ReconstructOptions()
    options.check()
    base = config or ReconstructionConfig()
    config = replace(base, max_steps=options.steps or base.max_steps, seed=options.seed,
                     isosurface=replace(base.isosurface, resolution=options.mesh_resolution))
    timings: dict[str, float] = {}

    # 2. load views
    t0 = time.perf_counter()
    try:
        views = load_views(views_dir, downscale=options.downscale)
    except TransformsError as exc:
        raise InvalidInputError(str(exc)) from None
    timings["load_views"] = time.perf_counter() - t0

    # 3. fit
    t0 = time.perf_counter()
    try:
        trainer = ReconstructionTrainer(views, config, device=options.device)
    except ValueError as exc:
        raise InvalidInputError(f"cannot reconstruct from {views_dir}: {exc}") from None
    history = _train(trainer, progress)
    timings["nerf_training"] = time.perf_counter() - t0

    # 4. mesh and exports
    t0 = time.perf_counter()
    try:
        mesh = trainer.extract_mesh()
    except EmptyIsosurfaceError as exc:
        raise InvalidInputError(f"the fitted volume has no surface: {exc}") from None
    mesh = write_mesh_assets(writer, mesh, trainer.albedo_fn, options.export, recenter=False)
    timings["mesh_export"] = time.perf_counter() - t0
    if options.preview:
        writer.png("preview.png", turntable(mesh, views))

    # 5. metadata
    label = source if source is not None else str(Path(views_dir).resolve())
    metadata = _metadata(label, views, trainer, history, mesh, options, timings)
    if write_metadata:
        writer.metadata(metadata)
    return ReconstructResult(artifacts=writer.names, mesh=mesh, trainer=trainer, metadata=metadata)


def turntable(mesh: trimesh.Trimesh, views: ViewDataset, n_frames: int = 8, size: int = 128) -> Image.Image:
    """An RGB strip of ``n_frames`` views of ``mesh`` (vertex colours, on white) around the scene centre.

    The cameras orbit the bounding-box centre of the mesh at 20° elevation (z-up), at the mean distance of the
    input cameras from it, with the views' field of view.
    """
    centre = torch.as_tensor(mesh.bounds.mean(axis=0), dtype=torch.float32)
    distance = float((views.c2w[:, :3, 3] - centre).norm(dim=-1).mean())
    az = torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    el = torch.full_like(az, 20.0)
    eye = centre + distance * torch.stack([torch.cos(torch.deg2rad(el)) * torch.cos(torch.deg2rad(az)),
                                           torch.cos(torch.deg2rad(el)) * torch.sin(torch.deg2rad(az)),
                                           torch.sin(torch.deg2rad(el)).expand_as(az)], dim=-1)
    c2w = look_at(eye, centre)
    rgba = render_mesh(mesh, c2w, views.fovy_deg, size, size, MeshRenderConfig(shading="color"))
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    strip = torch.cat(list(rgb), dim=1)  # (H, n * W, 3)
    return Image.fromarray((strip.numpy() * 255.0).round().astype(np.uint8), mode="RGB")


def _train(trainer: ReconstructionTrainer, progress: ProgressReporter | None) -> list[StepStats]:
    total = trainer.config.max_steps
    if progress is not None:
        progress.start("nerf_training", total)
    start = time.perf_counter()

    def callback(stats: StepStats) -> None:
        if progress is not None and (stats.step % 10 == 0 or stats.step == total):
            progress.step("nerf_training", stats)

    history = trainer.train(callback)
    if progress is not None:
        progress.finish("nerf_training", time.perf_counter() - start)
    return history


def _metadata(source: str, views: ViewDataset, trainer: ReconstructionTrainer, history: list[StepStats],
              mesh: trimesh.Trimesh, options: ReconstructOptions, timings: dict[str, float]) -> dict[str, Any]:
    frame = trainer.frame
    return {
        "mode": "reconstruct",
        "views": {"source": source, "count": views.num_views,
                  "height": views.height, "width": views.width, "fovy_deg": views.fovy_deg,
                  "with_alpha": int(views.has_alpha.sum())},
        "options": asdict(options),
        "scene_box": {"centre": frame.centre.tolist(), "half_size": frame.scale,
                      "source": "visual_hull" if frame.hull is not None else "cameras"},
        "training": {"steps": trainer.step, "final_loss": history[-1].loss if history else None,
                     "final_losses": history[-1].losses if history else {},
                     "mean_samples_per_step": float(np.mean([h.n_samples for h in history])) if history else 0.0,
                     # grid points of the hull emptied behind photo-inconsistent patches (nerf.photo_carve)
                     "hull_carve": asdict(trainer.carve_report) if trainer.carve_report is not None else None},
        "mesh": {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                 "frame": "world frame of transforms.json, converted to glTF Y-up by (x, y, z) -> (x, z, -y)",
                 "isosurface_threshold": trainer.isosurface_threshold},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
    }
