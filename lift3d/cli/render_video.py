"""``lift3d render-video``: a turntable MP4 of any mesh file (GLB by default) along a camera path.

Bad input (a missing or unreadable mesh, a malformed keyframes file, an odd size…) raises
:class:`lift3d.errors.InvalidInputError` before anything renders; ``lift3d.cli.main`` prints it as one line and
exits 2. The MP4 is written atomically, so a failed render leaves no partial file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lift3d.cli.progress import configure_logging
from lift3d.errors import InvalidInputError
from lift3d.params.video import (
    DEFAULT_CAMERA_DISTANCE,
    DEFAULT_FOVY_DEG,
    DEFAULT_VIDEO_FRAMES,
    DEFAULT_VIDEO_SIZE,
    VideoParams,
)

__all__ = ["FIT_RADIUS", "parse_camera_path", "parse_video_params", "render_video"]

stderr = Console(stderr=True)

FIT_RADIUS = DEFAULT_CAMERA_DISTANCE * math.sin(math.radians(0.5 * DEFAULT_FOVY_DEG)) / 1.05
"""Scene units: with ``--fit`` the mesh's bounding sphere gets this radius, so seen from the default distance
(3.8) with the default field of view (20°) it fills the frame's height with a 5 % margin (≈ 0.628)."""


def parse_camera_path(value: str) -> str | list[Any]:
    """``"orbit"`` or ``"spiral"`` as they are, else the keyframes read from the JSON file ``value``: a list of
    ``{elevation_deg, azimuth_deg, camera_distance, fovy_deg}`` objects, or an object holding that list under
    ``"keyframes"`` or ``"camera_path"``. The keyframes themselves are validated by :class:`VideoParams`.

    Raises:
        InvalidInputError: the file is missing or unreadable, not JSON, or holds no list.
    """
    if value in ("orbit", "spiral"):
        return value
    path = Path(value)
    if not path.is_file():
        raise InvalidInputError(f"--camera-path must be orbit, spiral or a keyframes JSON file; {value} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read keyframes file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"keyframes file {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from None
    if isinstance(data, dict):
        data = data.get("keyframes", data.get("camera_path"))
    if not isinstance(data, list):
        raise InvalidInputError(f"keyframes file {path} must hold a JSON list of keyframes (or "
                                '{"keyframes": [...]}), each {"elevation_deg", "azimuth_deg", "camera_distance", '
                                '"fovy_deg"}')
    return data


def parse_video_params(values: dict) -> VideoParams:
    """Validate a mapping into :class:`~lift3d.params.video.VideoParams`.

    Raises:
        InvalidInputError: one line naming each invalid field, e.g. ``video_size: Value error, must be even …``.
    """
    try:
        return VideoParams(**values)
    except ValidationError as exc:
        messages = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'video'}: {e.get('msg', 'invalid value')}"
                    for e in exc.errors()]
        raise InvalidInputError("; ".join(messages)) from None


def render_video(
    mesh: Path = typer.Option(..., "--mesh", help="Mesh file: GLB (vertex colours or texture), OBJ, PLY, ..."),
    out: Path = typer.Option(..., "--out", help="Output MP4 file (parent directories are created)."),
    camera_path: str = typer.Option(
        "orbit", "--camera-path",
        help="orbit (one turn at 15° elevation), spiral (two turns, elevation 0°→40°→0°), or a JSON file with a "
        "list of keyframes {elevation_deg, azimuth_deg, camera_distance, fovy_deg}.",
    ),
    frames: int = typer.Option(DEFAULT_VIDEO_FRAMES, "--frames", help="Frames, 8–600."),
    fps: int = typer.Option(24, "--fps", help="Frames per second, 1–60."),
    size: int = typer.Option(DEFAULT_VIDEO_SIZE, "--size", help="Square frame side in pixels, even, 64–1024."),
    supersample: int = typer.Option(2, "--supersample", help="Anti-aliasing rays per pixel along each axis, 1–4."),
    fit: bool = typer.Option(
        True, "--fit/--no-fit",
        help="Centre the mesh and scale its bounding sphere to fill the default view (distance 3.8, fovy 20°); "
        "--no-fit keeps its units (lift3d's own GLBs are already framed for that view).",
    ),
    y_up: bool = typer.Option(True, "--y-up/--z-up", help="Axis convention of the mesh file (GLB and OBJ: Y-up)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Render a turntable MP4 (H.264, white background) of a mesh along a camera path."""
    configure_logging(verbose, stderr)
    if not verbose:
        # The renderer lives in lift3d.pipeline, whose import pulls transformers, which warns about optional
        # backends (torchvision); not actionable for this command.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # 1. check inputs (fast: before the renderer's imports)
    params = parse_video_params({"video": True, "camera_path": parse_camera_path(camera_path),
                                 "video_frames": frames, "video_fps": fps, "video_size": size})
    if not 1 <= supersample <= 4:
        raise InvalidInputError(f"--supersample must be in 1..4, got {supersample}")
    from lift3d.reconstruct.render_views import load_mesh, to_world

    world = to_world(load_mesh(mesh), y_up=y_up, normalize=False)
    if fit:
        lo, hi = world.bounds
        world.apply_translation(-0.5 * (lo + hi))
        world.apply_scale(FIT_RADIUS / max(0.5 * float(((hi - lo) ** 2).sum()) ** 0.5, 1e-12))

    # 2. render, with a bar per frame, and write the file
    from lift3d.io.video import write_mp4
    from lift3d.pipeline.turntable import camera_path_cameras, render_turntable
    from nerf.io import write_atomic

    cameras = camera_path_cameras(params.camera_path, params.video_frames)
    bar = Progress(TextColumn("render video"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), console=stderr, transient=False)
    with bar:
        task = bar.add_task("frames", total=len(cameras))
        images = render_turntable(world, cameras, params.video_size, supersample=supersample,
                                  progress=lambda done, total: bar.update(task, completed=done))
        data = write_mp4(images, None, fps=params.video_fps) or b""
    write_atomic(out, data)
    stderr.print(f"[green]done[/green] {len(cameras)} frames, {params.video_size}x{params.video_size} at "
                 f"{params.video_fps} fps → {out}")
