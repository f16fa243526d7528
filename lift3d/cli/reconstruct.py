"""Typer commands ``lift3d reconstruct`` and ``lift3d render-views`` (registered on the app in ``lift3d.cli``).

Bad input raises :class:`lift3d.errors.InvalidInputError`; ``lift3d.cli.main`` prints it as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lift3d.devices import resolve_device
from lift3d.errors import InvalidInputError
from lift3d.cli.progress import configure_logging

__all__ = ["reconstruct", "render_views"]

stderr = Console(stderr=True)


def reconstruct(
    views: Path = typer.Option(..., "--views", help="Directory with transforms.json (NeRF-synthetic) and images."),
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps, 1–20000 (default 800)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and ray batches."),
    mesh_resolution: int = typer.Option(128, "--mesh-resolution", help="Marching-cubes grid per axis, 32–512."),
    texture: bool = typer.Option(True, "--texture/--no-texture", help="Also write model_textured.glb (UV + PBR)."),
    texture_size: int = typer.Option(1024, "--texture-size", help="Texture side: 512, 1024 or 2048."),
    target_faces: Optional[int] = typer.Option(None, "--target-faces", help="Decimate to about this many faces."),
    downscale: int = typer.Option(1, "--downscale", help="Reduce input images by this integer factor."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Reconstruct a textured GLB from posed views (NeRF-synthetic transforms.json), in the views' world frame."""
    from lift3d.cli.progress import RichProgress
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.mesh_assets import MeshExportOptions
    from lift3d.io.storage import LocalStore
    from lift3d.reconstruct import ReconstructOptions, reconstruct as run

    configure_logging(verbose)
    if not views.exists():
        raise InvalidInputError(f"--views {views} does not exist")
    options = ReconstructOptions(
        steps=steps, seed=seed, mesh_resolution=mesh_resolution, downscale=downscale,
        export=MeshExportOptions(texture=texture, texture_size=texture_size, target_faces=target_faces),
        device=str(resolve_device(device)),
    )
    with RichProgress(stderr) as progress:
        result = run(views, ArtifactWriter(LocalStore(out)), options, progress=progress)
    stderr.print(f"[green]done[/green] {len(result.mesh.faces)} faces → {out}")


def render_views(
    mesh: Path = typer.Option(..., "--mesh", help="Mesh file (OBJ, PLY, GLB, ...)."),
    out: Path = typer.Option(..., "--out", help="Output directory (created if missing)."),
    num_views: int = typer.Option(32, "--num-views", help="Number of views, 1–1000."),
    resolution: int = typer.Option(128, "--resolution", help="Square image side in pixels, 16–2048."),
    layout: str = typer.Option("even", "--layout", help="even (Fibonacci lattice) or random."),
    elevation_min: float = typer.Option(-10.0, "--elevation-min", help="Lowest camera elevation, degrees."),
    elevation_max: float = typer.Option(60.0, "--elevation-max", help="Highest camera elevation, degrees."),
    fovy: float = typer.Option(40.0, "--fovy", help="Vertical field of view, degrees."),
    distance: Optional[float] = typer.Option(None, "--distance", help="Camera distance (default: fit the view)."),
    shading: str = typer.Option("lambert", "--shading", help="lambert (grey, fixed lights) or color (unlit)."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="Centre and scale to unit diagonal."),
    y_up: bool = typer.Option(True, "--y-up/--z-up", help="Axis convention of the mesh file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random layout."),
) -> None:
    """Render RGBA views of a mesh on a sphere and write transforms.json (test data for `reconstruct`)."""
    from lift3d.reconstruct import RenderViewsOptions, render_views as run

    options = RenderViewsOptions(
        num_views=num_views, resolution=resolution, layout=layout,  # type: ignore[arg-type]
        elevation_range_deg=(elevation_min, elevation_max), fovy_deg=fovy, distance=distance,
        shading=shading, normalize=normalize, y_up=y_up, seed=seed,  # type: ignore[arg-type]
    )
    files = run(mesh, out, options)
    stderr.print(f"[green]done[/green] {len(files) - 2} views → {out}")
