"""Application functions behind ``lift3d reconstruct`` and ``lift3d render-views``.

``reconstruct``: posed views (``transforms.json``, NeRF-synthetic convention) → NeRF fit → mesh → ``model.glb``
(vertex colours), optionally ``model_textured.glb`` (UV atlas + baked albedo), ``preview.png`` (turntable strip)
and ``metadata.json``. The mesh stays in the world frame of ``transforms.json`` — no recentring, no rescaling —
and is only turned to glTF's Y-up axes by (x, y, z) → (x, z, −y), so it can be compared with the source mesh.

``render_views``: a mesh file → RGBA views on a sphere + ``transforms.json`` (+ ``reference.glb``, the mesh in the
world frame of the views, written the same way as ``model.glb``), i.e. test data for ``reconstruct``.

Every file is written atomically (temporary file, then rename) into the output directory, each as soon as it is
ready.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import trimesh
from PIL import Image

from lift3d.io.artifacts import ArtifactWriter, glb_bytes, png_bytes
from lift3d.errors import InvalidInputError
from lift3d.io.mesh_assets import MeshExportOptions, write_mesh_assets
from lift3d.io.storage import LocalStore
from nerf.cameras import look_at
from nerf.datasets.blender import TransformsError, ViewDataset, load_views, write_transforms
from nerf.export import Z_UP_TO_Y_UP
from nerf.mesh import EmptyIsosurfaceError
from nerf.mesh_render import MeshRenderConfig, render_mesh, spread_cameras
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer, StepStats

if TYPE_CHECKING:  # lift3d.pipeline imports the diffusion stages; keep this module light
    from lift3d.pipeline import ProgressReporter

__all__ = ["ReconstructOptions", "ReconstructResult", "RenderViewsOptions", "load_mesh", "reconstruct",
           "render_views", "to_world", "turntable"]


@dataclass
class ReconstructOptions:
    """User options of :func:`reconstruct`."""

    steps: int = 400
    """Photometric training steps (1–20000)."""
    seed: int = 0
    """Seeds field initialisation, ray batches and jitter."""
    mesh_resolution: int = 128
    """Marching-cubes grid points per axis over the scene box (32–512)."""
    texture: bool = True
    """Also write ``model_textured.glb`` (xatlas UVs, baked albedo, PBR material)."""
    texture_size: int = 1024
    """Texture side in texels: 512, 1024 or 2048."""
    target_faces: int | None = None
    """Decimate the mesh to about this many faces before export (>= 100); None keeps marching cubes' mesh."""
    texture_max_faces: int = 50_000
    """See :class:`MeshExportOptions`."""
    downscale: int = 1
    """Integer factor by which input images are reduced before training (>= 1)."""
    preview: bool = True
    """Write ``preview.png``, a turntable strip of the exported mesh."""
    device: str = "cpu"
    """Torch device for training."""

    def check(self) -> None:
        """Raise :class:`InvalidInputError` naming the first out-of-range option."""
        if not 1 <= self.steps <= 20000:
            raise InvalidInputError(f"steps must be in 1..20000, got {self.steps}")
        if not 32 <= self.mesh_resolution <= 512:
            raise InvalidInputError(f"mesh resolution must be in 32..512, got {self.mesh_resolution}")
        if self.downscale < 1:
            raise InvalidInputError(f"downscale must be >= 1, got {self.downscale}")
        self.export_options().check()

    def export_options(self) -> MeshExportOptions:
        """The mesh-export subset of these options."""
        return MeshExportOptions(texture=self.texture, texture_size=self.texture_size,
                                 target_faces=self.target_faces, texture_max_faces=self.texture_max_faces)


@dataclass
class ReconstructResult:
    """What :func:`reconstruct` produced.

    Attributes:
        files: name → path of every file written.
        mesh: the exported mesh in the views' world frame (z-up).
        trainer: the fitted trainer (field, renderer, scene frame), e.g. to render held-out views.
        metadata: the content of ``metadata.json``.
    """

    files: dict[str, Path]
    mesh: trimesh.Trimesh
    trainer: ReconstructionTrainer
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RenderViewsOptions:
    """User options of :func:`render_views`."""

    num_views: int = 32
    """Number of views (1–1000)."""
    resolution: int = 128
    """Square image side in pixels (16–2048)."""
    layout: Literal["even", "random"] = "even"
    """Cameras on a Fibonacci lattice of the elevation band ("even") or area-uniform random ("random")."""
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0)
    """Elevation band in degrees."""
    fovy_deg: float = 40.0
    """Vertical field of view in degrees (0–120)."""
    distance: float | None = None
    """Camera distance from the origin; None: the bounding sphere fills the view with a 5 % margin."""
    shading: Literal["lambert", "color"] = "lambert"
    """"lambert" (grey, fixed world lights) or "color" (unlit vertex/texture/material colour)."""
    normalize: bool = True
    """Centre the mesh's bounding box at the origin and scale its diagonal to 1 before rendering."""
    y_up: bool = True
    """The mesh file is Y-up (OBJ, glTF convention): rotate (x, y, z) → (x, −z, y) into the z-up world."""
    seed: int = 0
    """For the "random" layout."""
    supersample: int = 2
    """Anti-aliasing rays per pixel along each axis (1–4)."""

    def check(self) -> None:
        """Raise :class:`InvalidInputError` naming the first out-of-range option."""
        if not 1 <= self.num_views <= 1000:
            raise InvalidInputError(f"num views must be in 1..1000, got {self.num_views}")
        if not 16 <= self.resolution <= 2048:
            raise InvalidInputError(f"resolution must be in 16..2048, got {self.resolution}")
        if self.layout not in ("even", "random"):
            raise InvalidInputError(f"layout must be 'even' or 'random', got {self.layout!r}")
        if self.shading not in ("lambert", "color"):
            raise InvalidInputError(f"shading must be 'lambert' or 'color', got {self.shading!r}")
        low, high = self.elevation_range_deg
        if not -89.0 <= low <= high <= 89.0:
            raise InvalidInputError(f"elevation range must satisfy -89 <= low <= high <= 89, got {low}, {high}")
        if not 0.0 < self.fovy_deg < 120.0:
            raise InvalidInputError(f"fovy must be in (0, 120) degrees, got {self.fovy_deg}")
        if self.distance is not None and not self.distance > 0:
            raise InvalidInputError(f"distance must be > 0, got {self.distance}")
        if not 1 <= self.supersample <= 4:
            raise InvalidInputError(f"supersample must be in 1..4, got {self.supersample}")


# ---------------------------------------------------------------------------------------------- reconstruct
def reconstruct(views_dir: str | Path, out_dir: str | Path, options: ReconstructOptions | None = None,
                config: ReconstructionConfig | None = None, progress: ProgressReporter | None = None
                ) -> ReconstructResult:
    """Fit a NeRF to posed views and export the mesh.

    Args:
        views_dir: directory holding ``transforms.json`` (or the file itself) and the images it lists.
        out_dir: output directory (created if missing).
        options: user options; defaults to :class:`ReconstructOptions`.
        config: full trainer configuration; its ``max_steps``, ``seed`` and isosurface resolution are replaced by
            the options. Defaults to :class:`ReconstructionConfig`.
        progress: receives stage progress ("load_views", "nerf_training", "mesh_export").

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
    config = replace(base, max_steps=options.steps, seed=options.seed,
                     isosurface=replace(base.isosurface, resolution=options.mesh_resolution))
    writer = ArtifactWriter(LocalStore(Path(out_dir)))
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
    mesh = write_mesh_assets(writer, mesh, trainer.albedo_fn, options.export_options(), recenter=False)
    timings["mesh_export"] = time.perf_counter() - t0
    if options.preview:
        writer.put("preview.png", png_bytes(turntable(mesh, views)), "image/png")

    # 5. metadata
    metadata = _metadata(views_dir, views, trainer, history, mesh, options, timings)
    writer.metadata(metadata)
    out = Path(out_dir).resolve()
    paths = {Path(k).name: out / k for k in writer.keys}
    return ReconstructResult(files=paths, mesh=mesh, trainer=trainer, metadata=metadata)


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


# -------------------------------------------------------------------------------------------- render-views
def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a mesh file (OBJ, PLY, STL, GLB, ...) as one triangle mesh.

    Raises:
        InvalidInputError: the file is missing, unreadable or has no triangles.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"mesh file not found: {path}")
    try:
        mesh = trimesh.load(path, force="mesh")
    except Exception as exc:  # trimesh raises many types for malformed files
        raise InvalidInputError(f"cannot read mesh {path}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InvalidInputError(f"mesh {path} has no triangles")
    return mesh


def render_views(mesh_path: str | Path, out_dir: str | Path, options: RenderViewsOptions | None = None
                 ) -> dict[str, Path]:
    """Render RGBA views of a mesh and write ``transforms.json``, ``images/NNN.png`` and ``reference.glb``.

    Args:
        mesh_path: the mesh file.
        out_dir: output directory (created if missing).
        options: see :class:`RenderViewsOptions`.

    Returns:
        name → path of the files written (``transforms.json``, ``reference.glb``, ``images/000.png``, ...).

    Raises:
        InvalidInputError: bad options or an unreadable mesh.
    """
    # 1. check inputs
    options = options or RenderViewsOptions()
    options.check()
    mesh = load_mesh(mesh_path)
    out = Path(out_dir).resolve()
    writer = ArtifactWriter(LocalStore(out))

    # 2. the mesh in the z-up world of the views
    mesh = to_world(mesh, y_up=options.y_up, normalize=options.normalize)
    radius = float(np.linalg.norm(mesh.vertices, axis=1).max())
    distance = options.distance or 1.05 * radius / math.sin(math.radians(0.5 * options.fovy_deg))

    # 3. cameras and images
    cameras = spread_cameras(options.num_views, distance, options.fovy_deg, options.elevation_range_deg,
                             options.layout, options.seed)
    config = MeshRenderConfig(shading=options.shading, supersample=options.supersample)
    names = []
    for start in range(0, len(cameras), 8):  # bounded memory at large resolutions
        rgba = render_mesh(mesh, cameras.c2w[start : start + 8], options.fovy_deg, options.resolution,
                           options.resolution, config)
        for i, image in enumerate(rgba):
            name = f"images/{start + i:03d}.png"
            pixels = (image.numpy() * 255.0).round().astype(np.uint8)
            writer.put(name, png_bytes(Image.fromarray(pixels, mode="RGBA")), "image/png")
            names.append(name)

    # 4. transforms.json and the reference mesh
    write_transforms(out / "transforms.json", math.radians(options.fovy_deg), names, cameras.c2w, extra={
        "lift3d": {"source_mesh": str(Path(mesh_path).resolve()), "camera_distance": distance,
                   "elevation_deg": cameras.elevation_deg.tolist(), "azimuth_deg": cameras.azimuth_deg.tolist(),
                   **asdict(options)},
    })
    writer.put("reference.glb", glb_bytes(mesh, recenter=False), "model/gltf-binary")
    return {**{key: out / key for key in writer.keys}, "transforms.json": out / "transforms.json"}


def to_world(mesh: trimesh.Trimesh, *, y_up: bool, normalize: bool) -> trimesh.Trimesh:
    """A copy of ``mesh`` in the z-up world: rotated from Y-up if asked, then optionally unit-diagonal centred.

    The Y-up → z-up rotation is the inverse of :data:`nerf.export.Z_UP_TO_Y_UP`, so exporting the result to GLB
    gives back the file's orientation.
    """
    mesh = mesh.copy()
    if y_up:
        transform = np.eye(4)
        transform[:3, :3] = Z_UP_TO_Y_UP.T
        mesh.apply_transform(transform)
    if normalize:
        lo, hi = mesh.bounds
        mesh.apply_translation(-0.5 * (lo + hi))
        mesh.apply_scale(1.0 / float(np.linalg.norm(hi - lo)))
    return mesh


# --------------------------------------------------------------------------------------------------- helpers
def _train(trainer: ReconstructionTrainer, progress: ProgressReporter | None) -> list[StepStats]:
    total = trainer.config.max_steps
    if progress is not None:
        progress.start("nerf_training", total)
    start = time.perf_counter()

    def callback(stats: StepStats) -> None:
        if progress is not None and (stats.step % 10 == 0 or stats.step == total):
            progress.update("nerf_training", stats.step, total, {"loss": stats.loss})

    history = trainer.train(callback)
    if progress is not None:
        progress.finish("nerf_training", time.perf_counter() - start)
    return history


def _metadata(views_dir, views: ViewDataset, trainer: ReconstructionTrainer, history: list[StepStats],
              mesh: trimesh.Trimesh, options: ReconstructOptions, timings: dict[str, float]) -> dict[str, Any]:
    frame = trainer.frame
    return {
        "mode": "reconstruct",
        "views": {"source": str(Path(views_dir).resolve()), "count": views.num_views,
                  "height": views.height, "width": views.width, "fovy_deg": views.fovy_deg,
                  "with_alpha": int(views.has_alpha.sum())},
        "options": asdict(options),
        "scene_box": {"centre": frame.centre.tolist(), "half_size": frame.scale,
                      "source": "visual_hull" if frame.hull is not None else "cameras"},
        "training": {"steps": trainer.step, "final_loss": history[-1].loss if history else None,
                     "final_losses": history[-1].losses if history else {},
                     "mean_samples_per_step": float(np.mean([h.n_samples for h in history])) if history else 0.0},
        "mesh": {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                 "frame": "world frame of transforms.json, converted to glTF Y-up by (x, y, z) -> (x, z, -y)",
                 "isosurface_threshold": trainer.isosurface_threshold},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    """Installed versions of the packages that shape a reconstruction."""
    versions = {}
    for name in ("lift3d", "torch", "numpy", "trimesh", "xatlas", "fast-simplification", "PyMCubes"):
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
