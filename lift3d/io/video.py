"""MP4 (H.264) writing and probing with PyAV: the turntable videos of 3D jobs and ``lift3d render-video``.

Frames are encoded with libx264 in yuv420p, the pixel format every browser and player decodes; yuv420p stores
colour at half resolution, so widths and heights must be even.

Examples:
    >>> frames = [np.full((64, 64, 3), 255, np.uint8)] * 8
    >>> data = write_mp4(frames, None, fps=24)
    >>> read_mp4_info(data)
    (8, 64, 64, 24.0)
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from lift3d.errors import InvalidInputError

__all__ = ["read_mp4_frames", "read_mp4_info", "write_mp4"]

_CRF = "20"
"""x264 constant rate factor: 0 lossless … 51 worst; 20 keeps flat colours clean at small sizes."""


def _as_uint8_rgb(frame) -> np.ndarray:
    """A frame as a contiguous (H, W, 3) uint8 array: uint8 arrays as they are, floats in [0, 1] scaled by 255."""
    if hasattr(frame, "detach"):  # a torch tensor, on any device
        frame = frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"write_mp4: frames must have shape (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(array)


def write_mp4(frames: Iterable, path_or_file: str | Path | BinaryIO | None, fps: int = 24) -> bytes | None:
    """Encode RGB frames as an H.264 MP4 (libx264, yuv420p, CRF 20, ``+faststart`` so playback starts early).

    Frames are consumed one at a time, so a generator of frames never holds the whole video in memory.

    Args:
        frames: iterable of arrays or tensors with shape (H, W, 3): uint8 in [0, 255], or floats in [0, 1]
            (clipped). All frames have the first frame's size; H and W even.
        path_or_file: a file path, a writable binary file object, or None to return the bytes.
        fps: frames per second, >= 1.

    Returns:
        The MP4 bytes when ``path_or_file`` is None, else None.

    Raises:
        InvalidInputError: an odd width or height, no frames, or ``fps`` < 1 (the message says how to fix it).
        ValueError: a frame of another shape than the first.
    """
    if int(fps) < 1:
        raise InvalidInputError(f"fps must be >= 1, got {fps}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise InvalidInputError("a video needs at least one frame")
    first = _as_uint8_rgb(first)
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise InvalidInputError(
            f"video frames must have an even width and height (H.264 yuv420p), got {width}x{height}: "
            f"use {width + width % 2}x{height + height % 2}")
    if isinstance(path_or_file, (str, Path)):
        _encode(first, iterator, str(path_or_file), int(fps))
        return None
    # ``+faststart`` rewrites the file in a second pass, which needs a named file: encode into a temporary one.
    with tempfile.TemporaryDirectory(prefix="lift3d-video-") as tmp:
        name = os.path.join(tmp, "video.mp4")
        _encode(first, iterator, name, int(fps))
        data = Path(name).read_bytes()
    if path_or_file is None:
        return data
    path_or_file.write(data)
    return None


def _encode(first: np.ndarray, rest, path: str, fps: int) -> None:
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        stream.options = {"crf": _CRF}
        count = 0
        for frame in _chain(first, rest):
            array = _as_uint8_rgb(frame)
            if array.shape != first.shape:
                raise ValueError(f"write_mp4: frame {count} has shape {array.shape}, the first {first.shape}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            count += 1
        container.mux(stream.encode(None))


def _chain(first: np.ndarray, rest):
    yield first
    yield from rest


def _open(source: bytes | str | Path | BinaryIO):
    return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else
                   (str(source) if isinstance(source, Path) else source), mode="r")


def read_mp4_info(source: bytes | str | Path | BinaryIO) -> tuple[int, int, int, float]:
    """(frame count, width, height, frames per second) of the first video stream, counted by decoding every frame.

    Raises:
        av.error.InvalidDataError: ``source`` is not a readable video; ValueError: it has no video stream.
    """
    with _open(source) as container:
        if not container.streams.video:
            raise ValueError("read_mp4_info: no video stream")
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate)


def read_mp4_frames(source: bytes | str | Path | BinaryIO) -> list[np.ndarray]:
    """Every frame of the first video stream as an (H, W, 3) uint8 RGB array (tests, previews)."""
    with _open(source) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])]
