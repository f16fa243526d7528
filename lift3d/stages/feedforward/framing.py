"""Framing the input of a feed-forward reconstruction model: the cut-out recentred at a foreground ratio on the
model's background, and the world camera its field is aligned to.

Recipe (TripoSR, VAST-AI-Research/TripoSR, ``tsr/utils.py`` ``resize_foreground`` and ``run.py``): crop the
image to the bounding box of its non-zero alpha, pad the crop to a square (centred), pad that square again so its
side is ``1 / foreground_ratio`` of the result's, composite over a flat grey (0.5) with the alpha, and resize to
the model's input size (bilinear with antialiasing, ``tsr/utils.py`` ``ImagePreprocessor``). Unlike the reference,
the crop keeps the last row and column of the box and the image stays in float (no round trip through uint8).

Examples:
    >>> rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))
    >>> rgba.paste((255, 0, 0, 255), (10, 5, 20, 15))            # a 10 × 10 red square
    >>> image = framed_tensor(rgba, foreground_ratio=0.5, size=8, background=0.5)
    >>> image.shape, image[0, :, 4, 4].round(decimals=3).tolist(), image[0, :, 0, 0].tolist()
    (torch.Size([1, 3, 8, 8]), [1.0, 0.0, 0.0], [0.5, 0.5, 0.5])
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lift3d.errors import InvalidInputError
from nerf.triplane import OrbitView

__all__ = ["LIFT3D_REFERENCE_VIEW", "check_framing", "framed_tensor", "recentre"]

LIFT3D_REFERENCE_VIEW = OrbitView(elevation_deg=5.0, azimuth_deg=0.0, distance=3.8, fovy_deg=20.0)
"""lift3d's reference camera (the conditioning view of Stable Zero123 SDS; the values of
``lift3d.pipeline.steps.REFERENCE_*``): a feed-forward field is aligned so this camera sees the input image."""


def check_framing(rgba: object, foreground_ratio: float) -> None:
    """Raise :class:`InvalidInputError` unless ``rgba`` is a PIL image and ``0 < foreground_ratio <= 1``."""
    if not isinstance(rgba, Image.Image):
        raise InvalidInputError(f"the feed-forward model takes a PIL RGBA image, got {type(rgba).__name__}")
    if isinstance(foreground_ratio, bool) or not isinstance(foreground_ratio, (int, float)) \
            or not math.isfinite(foreground_ratio) or not 0 < foreground_ratio <= 1:
        raise InvalidInputError(f"foreground_ratio must be a number in (0, 1], got {foreground_ratio!r}")
    if min(rgba.size) < 1:
        raise InvalidInputError(f"the input image is empty ({rgba.size[0]}x{rgba.size[1]} pixels)")


def recentre(rgba: Image.Image, foreground_ratio: float) -> np.ndarray:
    """The object's bounding box (alpha > 0) centred in a square whose side it fills at ``foreground_ratio``.

    Args:
        rgba: any PIL image (converted to RGBA; an image without alpha counts as all foreground).
        foreground_ratio: share of the square's side taken by the box's longer side, in (0, 1].

    Returns:
        Array with shape (S, S, 4), float32 in [0, 1], straight (not premultiplied) alpha; transparent around.

    Raises:
        InvalidInputError: no pixel has alpha > 0, or bad arguments (:func:`check_framing`).
    """
    check_framing(rgba, foreground_ratio)
    pixels = np.asarray(rgba.convert("RGBA"), dtype=np.float32) / 255.0
    rows, cols = np.nonzero(pixels[..., 3] > 0)
    if rows.size == 0:
        raise InvalidInputError("the input image has no foreground: its alpha is 0 everywhere")
    crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = max(crop.shape[:2])
    out = max(side, int(side / foreground_ratio))
    canvas = np.zeros((out, out, 4), dtype=np.float32)
    top, left = (out - crop.shape[0]) // 2, (out - crop.shape[1]) // 2
    canvas[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return canvas


def framed_tensor(
    rgba: Image.Image,
    *,
    foreground_ratio: float,
    size: int,
    background: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The model's input image: :func:`recentre`, composite over ``background``, resize to ``size``².

    Args:
        rgba: the cut-out (alpha = mask), any size.
        foreground_ratio: in (0, 1] (TripoSR's default 0.85).
        size: the model's input side in pixels, > 0.
        background: grey level in [0, 1] behind the object (TripoSR: 0.5).
        device, dtype: of the result.

    Returns:
        Tensor with shape (1, 3, size, size), values in [0, 1].

    Raises:
        InvalidInputError: see :func:`recentre`.
    """
    square = torch.from_numpy(recentre(rgba, foreground_ratio)).to(device=device, dtype=dtype)
    rgb, alpha = square[..., :3], square[..., 3:]
    image = (rgb * alpha + background * (1 - alpha)).permute(2, 0, 1)[None]
    if image.shape[-1] != size:
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return image.clamp(0.0, 1.0)
