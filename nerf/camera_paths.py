"""Camera paths for turntable videos: an orbit, a spiral, or a smooth curve through keyframes.

Every path returns a :class:`~nerf.cameras.CameraBatch` of ``frames`` cameras on spheres around the origin, looking
at it (z-up world, angles in degrees, distances in scene units; see ``nerf/cameras.py``). A video is meant to loop:
``orbit`` and ``spiral`` stop one step short of their starting pose, so frame ``frames`` would equal frame 0.

Defaults frame a generated object the way its input image does: distance 3.8 and vertical field of view 20°,
the reference camera of Stable Zero123 (threestudio ``configs/stable-zero123.yaml``: ``data.default_camera_distance``
and ``data.default_fovy_deg``), at which the recentred object's longer side spans about 80 % of the image.

Keyframes are joined by a monotone piecewise-cubic Hermite curve per parameter (PCHIP: Fritsch & Carlson 1980,
"Monotone Piecewise Cubic Interpolation", SIAM J. Numer. Anal. 17(2), with the harmonic-mean slopes of Fritsch &
Butland 1984 and the three-point end slopes that SciPy's ``PchipInterpolator`` documents). The curve is C1, passes
through every keyframe, and never leaves the range of two neighbouring keyframes, so elevations, distances and
fields of view stay inside the ranges their keyframes respect (no overshoot, unlike Catmull–Rom).

Examples:
    >>> cams = orbit(4, elevation_deg=15.0)
    >>> cams.azimuth_deg.tolist()
    [0.0, 90.0, 180.0, 270.0]
    >>> keys = [{"elevation_deg": 0, "azimuth_deg": 0, "camera_distance": 3.8, "fovy_deg": 20},
    ...         {"elevation_deg": 30, "azimuth_deg": 180, "camera_distance": 3.8, "fovy_deg": 20}]
    >>> interpolate_keyframes(keys, 3).elevation_deg.tolist()
    [0.0, 15.0, 30.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nerf.cameras import CameraBatch

__all__ = [
    "DEFAULT_CAMERA_DISTANCE",
    "DEFAULT_FOVY_DEG",
    "DEFAULT_ORBIT_ELEVATION_DEG",
    "DEFAULT_SPIRAL_ELEVATION_RANGE_DEG",
    "KEYFRAME_FIELDS",
    "interpolate_keyframes",
    "keyframe_times",
    "orbit",
    "pchip",
    "spiral",
]

DEFAULT_CAMERA_DISTANCE = 3.8
"""Scene units; Stable Zero123's reference camera distance (threestudio ``configs/stable-zero123.yaml``)."""
DEFAULT_FOVY_DEG = 20.0
"""Degrees; Stable Zero123's reference vertical field of view (same source)."""
DEFAULT_ORBIT_ELEVATION_DEG = 15.0
"""Degrees; a little above the novel views (0°) and the reference view (5°), so the top shows too."""
DEFAULT_SPIRAL_ELEVATION_RANGE_DEG = (0.0, 40.0)
"""Degrees; the band a spiral swings through (SDS training sees elevations from −10° to 80°)."""
KEYFRAME_FIELDS = ("elevation_deg", "azimuth_deg", "camera_distance", "fovy_deg")
"""The four interpolated parameters of a keyframe, in the order of :meth:`CameraBatch.from_spherical`."""

_MAX_ELEVATION_DEG = 89.0  # look_at has no defined "up" at ±90°


def _check(frames: int, elevations: Sequence[float], camera_distance: float, fovy_deg: float) -> None:
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if any(not -_MAX_ELEVATION_DEG <= e <= _MAX_ELEVATION_DEG for e in elevations):
        raise ValueError(f"elevations must lie in [-89, 89] degrees, got {list(elevations)}")
    if not camera_distance > 0:
        raise ValueError(f"camera_distance must be > 0, got {camera_distance}")
    if not 0.0 < fovy_deg < 180.0:
        raise ValueError(f"fovy_deg must be in (0, 180) degrees, got {fovy_deg}")


def orbit(
    frames: int,
    elevation_deg: float = DEFAULT_ORBIT_ELEVATION_DEG,
    camera_distance: float = DEFAULT_CAMERA_DISTANCE,
    fovy_deg: float = DEFAULT_FOVY_DEG,
) -> CameraBatch:
    """One counter-clockwise turn (seen from +z) at a fixed elevation: frame k has azimuth ``360 k / frames``.

    Args:
        frames: number of cameras, >= 1.
        elevation_deg: degrees in [−89, 89].
        camera_distance: scene units, > 0.
        fovy_deg: vertical field of view, degrees in (0, 180).

    Returns:
        :class:`CameraBatch` of ``frames`` cameras (float32, CPU); azimuths in [0, 360).

    Raises:
        ValueError: an argument out of range.
    """
    _check(frames, [elevation_deg], camera_distance, fovy_deg)
    azimuth = torch.arange(frames, dtype=torch.float64) * (360.0 / frames)
    return CameraBatch.from_spherical(float(elevation_deg), azimuth.float(), float(camera_distance), float(fovy_deg))


def spiral(
    frames: int,
    elevation_range_deg: tuple[float, float] = DEFAULT_SPIRAL_ELEVATION_RANGE_DEG,
    turns: float = 2.0,
    camera_distance: float = DEFAULT_CAMERA_DISTANCE,
    fovy_deg: float = DEFAULT_FOVY_DEG,
) -> CameraBatch:
    """``turns`` counter-clockwise turns while the elevation rises from the low bound to the high one and back once.

    Frame k (phase ``s = k / frames`` in [0, 1)) has azimuth ``360 · turns · s`` and elevation
    ``low + (high − low) · (1 − cos 2πs) / 2``: ``low`` at frame 0, ``high`` half-way, smooth everywhere, and
    with a whole number of turns the last frame runs into the first, so the video loops.

    Args:
        frames: number of cameras, >= 1.
        elevation_range_deg: (low, high) in degrees, −89 <= low <= high <= 89.
        turns: azimuth turns over the whole path, > 0 (2 by default).
        camera_distance: scene units, > 0.
        fovy_deg: vertical field of view, degrees in (0, 180).

    Returns:
        :class:`CameraBatch` of ``frames`` cameras (float32, CPU).

    Raises:
        ValueError: an argument out of range.
    """
    low, high = (float(v) for v in elevation_range_deg)
    _check(frames, [low, high], camera_distance, fovy_deg)
    if low > high or not turns > 0:
        raise ValueError(f"spiral needs low <= high and turns > 0, got {elevation_range_deg}, {turns}")
    phase = torch.arange(frames, dtype=torch.float64) / frames
    azimuth = 360.0 * turns * phase
    elevation = low + (high - low) * 0.5 * (1.0 - torch.cos(2.0 * torch.pi * phase))
    return CameraBatch.from_spherical(elevation.float(), azimuth.float(), float(camera_distance), float(fovy_deg))


def keyframe_times(num_keyframes: int, frames: int) -> np.ndarray:
    """Frame position of each keyframe: keyframe i sits at ``i (frames − 1) / (num_keyframes − 1)``.

    The first keyframe is frame 0 and the last is the last frame; the others are spread evenly and fall exactly on
    a frame when ``frames − 1`` is a multiple of ``num_keyframes − 1``.

    Returns:
        float64 array with shape (num_keyframes,).
    """
    return np.arange(num_keyframes, dtype=np.float64) * (frames - 1) / (num_keyframes - 1)


def _end_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    """Three-point slope at an end of a PCHIP, limited so the end interval stays monotone."""
    slope = ((2.0 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if np.sign(slope) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(slope) > 3.0 * abs(d0):
        return 3.0 * d0
    return float(slope)


def pchip(knots: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic Hermite interpolation (Fritsch–Carlson / Fritsch–Butland) of one parameter.

    Args:
        knots: float array with shape (K,), strictly increasing, K >= 2.
        values: float array with shape (K,).
        at: float array with shape (M,), inside ``[knots[0], knots[-1]]``.

    Returns:
        float64 array with shape (M,). Two knots give the straight line between them.

    Raises:
        ValueError: fewer than two knots, or knots not strictly increasing.
    """
    x, y = np.asarray(knots, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if x.shape[0] < 2 or not np.all(np.diff(x) > 0):
        raise ValueError("pchip needs at least two strictly increasing knots")
    h = np.diff(x)
    delta = np.diff(y) / h
    slopes = np.empty_like(y)
    if x.shape[0] == 2:
        slopes[:] = delta[0]
    else:
        # Interior: weighted harmonic mean of the neighbouring secants, 0 at a local extremum or a flat secant.
        w1, w2 = 2.0 * h[1:] + h[:-1], h[1:] + 2.0 * h[:-1]
        same_sign = (np.sign(delta[:-1]) * np.sign(delta[1:])) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
        slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
        slopes[0] = _end_slope(h[0], h[1], delta[0], delta[1])
        slopes[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    t = np.asarray(at, dtype=np.float64)
    i = np.clip(np.searchsorted(x, t, side="right") - 1, 0, x.shape[0] - 2)
    s = (t - x[i]) / h[i]
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    return h00 * y[i] + h10 * h[i] * slopes[i] + h01 * y[i + 1] + h11 * h[i] * slopes[i + 1]


def _value(keyframe: Mapping[str, Any] | Any, name: str) -> float:
    return float(keyframe[name] if isinstance(keyframe, Mapping) else getattr(keyframe, name))


def interpolate_keyframes(keyframes: Sequence[Mapping[str, Any] | Any], frames: int) -> CameraBatch:
    """A smooth camera path through keyframes, one camera per frame.

    Keyframe i is reached at frame :func:`keyframe_times` ``[i]`` (first at frame 0, last at the last frame, the
    others evenly spread). Each parameter follows its own :func:`pchip` curve. Azimuths are taken as written,
    never wrapped: 0° → 350° turns 350° counter-clockwise (write −10° for the short way), and 0°, 360°, 720° makes
    two turns.

    Args:
        keyframes: K >= 2 mappings or objects (e.g. ``lift3d.params.video.Keyframe``) with ``elevation_deg``
            (degrees in [−89, 89]), ``azimuth_deg`` (degrees, any value), ``camera_distance`` (scene units, > 0)
            and ``fovy_deg`` (degrees in (0, 180)).
        frames: number of cameras, >= K.

    Returns:
        :class:`CameraBatch` of ``frames`` cameras (float32, CPU). Every value lies between the values of the two
        keyframes around it.

    Raises:
        ValueError: fewer than two keyframes, fewer frames than keyframes, a missing field or a value out of range.
    """
    if len(keyframes) < 2:
        raise ValueError(f"a keyframe path needs at least 2 keyframes, got {len(keyframes)}")
    if frames < len(keyframes):
        raise ValueError(f"a keyframe path needs at least one frame per keyframe: {frames} < {len(keyframes)}")
    try:
        table = np.array([[_value(k, name) for name in KEYFRAME_FIELDS] for k in keyframes], dtype=np.float64)
    except (KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"each keyframe needs {', '.join(KEYFRAME_FIELDS)}: {exc}") from None
    for el, _, dist, fovy in table:
        _check(frames, [el], dist, fovy)
    knots = keyframe_times(len(keyframes), frames)
    at = np.arange(frames, dtype=np.float64)
    el, az, dist, fovy = (torch.from_numpy(pchip(knots, table[:, j], at)).float() for j in range(4))
    return CameraBatch.from_spherical(el, az, dist, fovy)
