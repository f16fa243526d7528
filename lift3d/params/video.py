"""Turntable-video parameters of a 3D job and of ``lift3d generate`` (torch-free: the HTTP ingress imports it).

A job with ``video: true`` also writes ``turntable.mp4``: H.264 (yuv420p), white background, rendered along
``camera_path`` from the exported mesh (default) or the trained NeRF. The defaults keep the video of a ``tiny``
CPU job short to make (48 frames of 256² at 24 fps, 2 s of video; see :data:`DEFAULT_VIDEO_FRAMES`).

Camera units are the project's (``nerf/cameras.py``): degrees, z-up, and scene units for distances, in which the
novel views and the reference camera sit at :data:`DEFAULT_CAMERA_DISTANCE` with a :data:`DEFAULT_FOVY_DEG` field
of view (Stable Zero123's reference camera, threestudio ``configs/stable-zero123.yaml``).

Examples:
    >>> VideoParams(video=True, camera_path="spiral").video_frames
    48
    >>> VideoParams(camera_path=[{"azimuth_deg": 0}, {"azimuth_deg": 90, "elevation_deg": 30}]).camera_path[1].fovy_deg
    20.0
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

__all__ = [
    "CameraPath",
    "DEFAULT_CAMERA_DISTANCE",
    "DEFAULT_FOVY_DEG",
    "DEFAULT_VIDEO_FRAMES",
    "DEFAULT_VIDEO_SIZE",
    "Keyframe",
    "MAX_KEYFRAMES",
    "VideoParams",
]

DEFAULT_CAMERA_DISTANCE = 3.8
"""Scene units: the distance of the novel views and of Stable Zero123's reference camera (equals
``nerf.camera_paths.DEFAULT_CAMERA_DISTANCE``; repeated here to stay torch-free)."""
DEFAULT_FOVY_DEG = 20.0
"""Degrees: the vertical field of view of that camera (equals ``nerf.camera_paths.DEFAULT_FOVY_DEG``)."""
DEFAULT_VIDEO_FRAMES = 48
"""Two seconds at 24 fps: one orbit at 7.5° per frame. With 256² frames the video of a ``tiny`` job (a 59k-face
mesh) takes about 1.8 s on 2 CPU cores, ray casting and H.264 together."""
DEFAULT_VIDEO_SIZE = 256
"""Pixels per side: the size of the conditioning image. 512 costs about 4× (72 frames of 512²: 7–9 s on 2 CPU
cores)."""
MAX_KEYFRAMES = 8
"""Longest keyframe list: the fewest frames a video may have, so any list fits any frame count (a smooth curve
through more than eight poses of one short turntable is rarely what anyone wants)."""


class Keyframe(BaseModel):
    """One pose of a keyframed camera path; the camera looks at the object's centre (z-up world)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    elevation_deg: float = Field(
        0.0, ge=-89.0, le=89.0,
        description="Degrees above the horizontal plane; ±90° (straight down or up) is excluded because the "
        "camera's up direction is undefined there.",
    )
    azimuth_deg: float = Field(
        0.0, description="Degrees counter-clockwise (seen from above) from the input view; any value, never "
        "wrapped: 0 → 350 turns 350° (write −10 for the short way), 0 → 360 → 720 makes two turns.",
    )
    camera_distance: float = Field(
        DEFAULT_CAMERA_DISTANCE, gt=0.0, le=100.0,
        description="Distance from the object's centre in scene units; 3.8 frames the object like the input image.",
    )
    fovy_deg: float = Field(DEFAULT_FOVY_DEG, gt=0.0, lt=180.0, description="Vertical field of view, degrees.")


def _path_kind(value: object) -> str:
    return "keyframes" if isinstance(value, (list, tuple)) else "name"


CameraPath = Annotated[
    Annotated[Literal["orbit", "spiral"], Tag("name")]
    | Annotated[list[Keyframe], Field(min_length=2, max_length=MAX_KEYFRAMES), Tag("keyframes")],
    Discriminator(_path_kind),
]
"""``"orbit"``, ``"spiral"`` or 2–8 keyframes (a list is validated as keyframes only, so errors name one case)."""


class VideoParams(BaseModel):
    """Whether and how a job renders ``turntable.mp4``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    video: bool = Field(False, description="Also render turntable.mp4 (H.264, white background).")
    camera_path: CameraPath = Field(
        "orbit",
        description="`orbit`: one turn at 15° elevation. `spiral`: two turns while the elevation swings 0° → 40° → "
        "0°. Or a list of 2–8 keyframes {elevation_deg, azimuth_deg, camera_distance, fovy_deg}, joined by a "
        "smooth monotone cubic curve per parameter: the first keyframe is the first frame, the last the last, the "
        "others evenly spread. Distances 3.8, field of view 20° unless given.",
    )
    video_frames: int = Field(DEFAULT_VIDEO_FRAMES, ge=8, le=600,
                              description="Frames in the video, 8–600.")
    video_fps: int = Field(24, ge=1, le=60, description="Frames per second, 1–60.")
    video_size: int = Field(
        DEFAULT_VIDEO_SIZE, ge=64, le=1024, multiple_of=2,
        description="Side of the square video in pixels, even (H.264 in yuv420p halves the colour resolution), "
        "64–1024.",
    )
    video_source: Literal["mesh", "nerf"] = Field(
        "mesh", description="Render the exported vertex-coloured mesh (what model.glb shows) or volume-render the "
        "trained NeRF (meant for GPUs: about 6 s per 256² frame of the tiny preset on 2 CPU cores).",
    )

    @field_validator("camera_path", mode="before")
    @classmethod
    def _keyframes_from_json_text(cls, value: object) -> object:
        """A form field carries the keyframe list as JSON text: decode it (names pass through)."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"keyframes are not valid JSON: {exc.msg} at column {exc.colno}") from None
        return value

