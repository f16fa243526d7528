"""The pipeline-free parts of MultiDiffusion region generation (Bar-Tal et al. 2023, "MultiDiffusion: Fusing
Diffusion Paths for Controlled Image Generation", ICML 2023; the authors' repo omerbt/MultiDiffusion,
``region_based.py``): the region masks (from the API's base64 images to fusion weights at latent resolution), the
mask-weighted fusion of the prompts' latents and the bootstrapping inputs. :mod:`lift3d.stages.sdxl.regions` runs them
on SDXL.

Examples:
    >>> mask = PIL.Image.new("L", (64, 64)); mask.paste(255, (0, 0, 32, 64))
    >>> weights = latent_masks([mask], 8, 8, device="cpu", dtype=torch.float32)
    >>> weights.shape, weights[0, 0, 0].tolist(), weights[1, 0, 0].tolist()
    (torch.Size([2, 1, 8, 8]), [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from lift3d.errors import InvalidInputError
from lift3d.io.images import decode_base64_image

__all__ = ["background_weights", "binary_mask", "bootstrap_inputs", "decode_masks", "fuse_latents", "latent_masks"]


# ------------------------------------------------------------------------------------------------ masks
def binary_mask(image: PIL.Image.Image, height: int, width: int, field: str = "mask") -> PIL.Image.Image:
    """A region mask as a binary "L" image (0 or 255) of size (width, height): white = the region.

    Grey level (ITU-R 601 luma) times alpha when the image has one (transparent pixels are background), resized
    bilinearly to the output size, then thresholded at half (128 of 255), which also cleans JPEG noise.

    Args:
        image: any PIL mode ("L", "RGB", "RGBA", "LA", "P"…), any size.
        height, width: output size, pixels.
        field: the name used in error messages, e.g. ``masks[1]``.

    Raises:
        InvalidInputError: no pixel is white (above half) after resizing.
    """
    if "A" in image.getbands():
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        grey = np.asarray(image.convert("RGB").convert("L"), dtype=np.float32) * rgba[..., 3] / 255.0
    else:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
    resized = np.asarray(PIL.Image.fromarray(grey, mode="F").resize((width, height), PIL.Image.BILINEAR))
    binary = resized >= 127.5
    if not binary.any():
        raise InvalidInputError(f"{field} is all black: paint the region white (white = region, black = elsewhere)")
    return PIL.Image.fromarray(binary.astype(np.uint8) * 255, mode="L")


def decode_masks(masks_base64: Sequence[str], height: int, width: int) -> list[PIL.Image.Image]:
    """The region API's ``masks`` (base64 PNG/JPEG/WebP, optionally ``data:`` URLs; RGB, RGBA or grey; white =
    region) as binary "L" masks of size (width, height); see :func:`binary_mask`.

    Raises:
        InvalidInputError: an entry that is not a string, not base64, not an image, or all black; the message names
            ``masks[i]``. PayloadTooLargeError (a subclass) for an oversized image.
    """
    masks = []
    for index, value in enumerate(masks_base64):
        field = f"masks[{index}]"
        if not isinstance(value, str):
            raise InvalidInputError(f"{field} must be a base64 string of a PNG or JPEG, got {type(value).__name__}")
        masks.append(binary_mask(decode_base64_image(value, field), height, width, field))
    return masks


def background_weights(foreground: torch.Tensor) -> torch.Tensor:
    """The background prompt's fusion weight where the regions leave room for it: ``max(0, 1 − Σ_i m_i)``, as the
    authors' ``region_based.py`` builds ``bg_mask`` (``1 − sum(fg_masks)``, negatives set to 0). Inside a region
    the background prompt then has no say, so the region's prompt alone makes its latent; with an all-ones
    background weight it would be an even blend of the two prompts there.

    Args:
        foreground: (k, 1, h, w) region weights in [0, 1] (k may be 0).

    Returns:
        (1, 1, h, w), in [0, 1]: 1 where no region is, 0 where the regions sum to 1 or more.

    Examples:
        >>> background_weights(torch.tensor([[[[1.0, 0.25, 0.0]]], [[[1.0, 0.5, 0.0]]]]))[0, 0].tolist()
        [[0.0, 0.25, 1.0]]
    """
    return (1.0 - foreground.sum(dim=0, keepdim=True)).clamp(min=0.0)


def latent_masks(masks: Sequence[PIL.Image.Image], latent_height: int, latent_width: int, *,
                 device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Fusion weights at latent resolution: the background's (:func:`background_weights`, 1 outside every region,
    0 inside one) then one binary mask per region.

    Each mask is downsampled with nearest-neighbour sampling and binarised at 0.5, as in MultiDiffusion.

    Args:
        masks: binary "L" images (see :func:`binary_mask`), any common size.
        latent_height, latent_width: latent size (pixels / the VAE's factor).

    Returns:
        (1 + len(masks), 1, latent_height, latent_width) of 0/1 values; at every cell the weights sum to at least 1
        (to the number of regions covering it, else the background's 1).

    Raises:
        InvalidInputError: a region covers no latent cell (its white area is thinner than a latent cell).
    """
    rows = []
    for index, mask in enumerate(masks):
        pixels = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
        small = F.interpolate(pixels, size=(latent_height, latent_width), mode="nearest") > 0.5
        if not small.any():
            raise InvalidInputError(f"masks[{index}]'s white area vanishes at latent resolution "
                                    f"({latent_height}×{latent_width} cells): make it larger")
        rows.append(small.to(device=device, dtype=dtype))
    foreground = torch.cat(rows) if rows else torch.zeros((0, 1, latent_height, latent_width), device=device,
                                                          dtype=dtype)
    return torch.cat([background_weights(foreground), foreground])


# ------------------------------------------------------------------------------------------------ fusion
def fuse_latents(latents: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """MultiDiffusion's fused step: the per-pixel average of the prompts' latents weighted by their masks,
    x = Σ_i m_i · x_i / Σ_i m_i (Bar-Tal et al. 2023, eq. 5, closed form for the region task).

    Args:
        latents: (n, C, h, w), one row per prompt (background first).
        masks: (n, 1, h, w) non-negative weights whose sum is positive everywhere, e.g. :func:`latent_masks`'
            (the background's weight ``max(0, 1 − Σ regions)``: a region's latent alone inside it, the mean of the
            regions' where they overlap, the background's outside every region).

    Returns:
        (1, C, h, w).

    Examples:
        >>> x = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
        >>> region = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
        >>> fuse_latents(x, torch.stack([background_weights(region[None])[0], region]))[0, 0].tolist()
        [[3.0, 1.0], [3.0, 1.0]]
    """
    return (latents * masks).sum(dim=0, keepdim=True) / masks.sum(dim=0, keepdim=True)


def bootstrap_inputs(latents: torch.Tensor, masks: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Bootstrapping inputs: each region's latent keeps its mask and shows ``background`` outside it; the first row
    (the background prompt) is unchanged (Bar-Tal et al. 2023, sec. 4.2, "bootstrapping").

    Args:
        latents: (n, C, h, w), row 0 the background prompt's.
        masks: (n, 1, h, w) binary.
        background: (1, C, h, w) or (n - 1, C, h, w): the noised constant-colour latent(s).

    Returns:
        (n, C, h, w): row 0 as given, rows i ≥ 1 ``latents[i] · m_i + background · (1 − m_i)``.
    """
    regions = latents[1:] * masks[1:] + background * (1 - masks[1:])
    return torch.cat([latents[:1], regions])
