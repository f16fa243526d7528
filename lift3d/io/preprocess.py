"""Recentring a cut-out object for Stable Zero123 conditioning.

Recipe (after threestudio's ``preprocess_image.py`` and dreamgaussian's ``process.py``): crop the cut-out to its
alpha bounding box, scale it so its longer side spans a fixed fraction of a square canvas, paste it centred on a
transparent canvas, and composite on white for the conditioning image (threestudio's ``data/image.py`` computes
``rgb * alpha + (1 - alpha)``). As in stable-dreamfusion's and dreamgaussian's ``process.py``, the object's
longer side spans ``size * (1 - border_ratio)``: 80 % of the square with the default ratio 0.2 (10 % free on each
side of the longer axis).

Examples:
    >>> rgba = Image.new("RGBA", (300, 300)); rgba.paste((255, 0, 0, 255), (0, 0, 40, 20))
    >>> recenter_rgba(rgba).getchannel("A").getbbox()
    (25, 77, 230, 179)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lift3d.errors import InvalidInputError

__all__ = ["ALPHA_THRESHOLD", "composite_on_white", "recenter_rgba", "rgba_to_tensors"]

#: Pixels with alpha above this (of 255) count as object when finding the bounding box; it ignores the faint
#: haze segmentation models leave in the background.
ALPHA_THRESHOLD = 8

_EMPTY_ALPHA = "Background removal left nothing; try --no-remove-background or another image."


def recenter_rgba(rgba: Image.Image, size: int = 256, border_ratio: float = 0.2) -> Image.Image:
    """Crop an RGBA cut-out to its object and centre it on a transparent square canvas.

    Args:
        rgba: image with the object in its alpha channel; other modes are converted to RGBA (no alpha means
            fully opaque, i.e. the whole image is the object).
        size: side of the output canvas, pixels, >= 1.
        border_ratio: the free share of ``size`` along the object's longer axis, split between both sides, in
            [0, 1). The object's longer side becomes ``round(size * (1 - border_ratio))`` px; its aspect ratio is
            kept.

    Returns:
        RGBA image, ``size`` × ``size``, transparent outside the object, object bounding box centred.

    Raises:
        InvalidInputError: no pixel has alpha > ``ALPHA_THRESHOLD``, or ``size`` / ``border_ratio`` out of range.
    """
    if size < 1:
        raise InvalidInputError(f"The recentred image size must be at least 1 px, got {size}.")
    if not 0.0 <= border_ratio < 1.0:
        raise InvalidInputError(f"The border ratio must be in [0, 1), got {border_ratio}.")
    rgba = rgba.convert("RGBA") if rgba.mode != "RGBA" else rgba
    box = rgba.getchannel("A").point(lambda a: 255 if a > ALPHA_THRESHOLD else 0).getbbox()
    if box is None:
        raise InvalidInputError(_EMPTY_ALPHA)
    crop = rgba.crop(box)

    target = size * (1.0 - border_ratio)
    scale = target / max(crop.width, crop.height)
    new_w = max(1, min(size, round(crop.width * scale)))
    new_h = max(1, min(size, round(crop.height * scale)))
    # Pillow resizes RGBA with premultiplied alpha, so transparent pixels' colours do not bleed in.
    resized = crop.resize((new_w, new_h), Image.Resampling.LANCZOS)

    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


def composite_on_white(rgba: Image.Image) -> Image.Image:
    """RGB image of ``rgba`` (straight alpha) over a white background: ``rgb * a + 255 * (1 - a)``."""
    rgba = rgba.convert("RGBA") if rgba.mode != "RGBA" else rgba
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def rgba_to_tensors(rgba: Image.Image) -> tuple[Tensor, Tensor]:
    """Conditioning tensors from an RGBA image.

    Returns:
        rgb: Tensor (3, H, W) float32 in [0, 1], composited on white: ``rgb * a + (1 - a)``.
        mask: Tensor (1, H, W) float32 in [0, 1], the alpha channel (soft; threshold at 0.5 for a binary mask,
            as threestudio's ``data/image.py`` does).
    """
    rgba = rgba.convert("RGBA") if rgba.mode != "RGBA" else rgba
    array = torch.from_numpy(np.asarray(rgba, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
    color, alpha = array[:3], array[3:4]
    rgb = color * alpha + (1.0 - alpha)
    return rgb, alpha
