"""The image-to-image and inpainting half of the SDXL stage: sizes, masks, strengths and pipelines.

:meth:`lift3d.stages.sdxl.text_to_image.TextToImage.generate_images` calls these helpers when a request carries an init
image (Stability's ``image-to-image``) or an init image and a mask (Stability's ``image-to-image/masking``):

- img2img runs diffusers' ``StableDiffusionXLImg2ImgPipeline`` on the stage's own modules. Stability's
  ``image_strength`` is how much of the init image to *keep*; diffusers' ``strength`` is how much to *noise*, so
  ``strength = 1 − image_strength`` (:func:`diffusers_strength`).
- inpainting runs ``StableDiffusionXLInpaintPipeline`` on the same modules with ``strength = 1`` (Stability's masking
  endpoint has no image strength: the masked pixels are repainted from pure noise). A UNet with 4 input channels
  (SDXL base, the tiny preset) inpaints by latent blending: after each step the unmasked latents are replaced by the
  init image's latents noised to the next timestep (diffusers ``pipeline_stable_diffusion_xl_inpaint.py``). The VAE
  round trip still alters unmasked pixels, so the result is pasted over the init image through the mask
  (:func:`paste_over`), as A1111 does: pixels outside a binary mask come back exactly.

Masks are "white = repaint" images (mode ``L``) built by :func:`repaint_mask` from Stability's ``mask_source``.
"""

from __future__ import annotations

import math
from typing import Literal

import PIL.Image
import PIL.ImageOps
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lift3d.errors import InvalidInputError

__all__ = ["EditMode", "diffusers_strength", "edit_mode", "paste_over", "pipeline_for", "repaint_mask", "round_down_64"]

EditMode = Literal["text", "image", "inpaint"]
"""What a request asks for: text-to-image, image-to-image, or inpainting."""

MaskSource = Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]

_PIPELINES: dict[str, type[StableDiffusionXLPipeline]] = {
    "text": StableDiffusionXLPipeline,
    "image": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}


def edit_mode(init_image: PIL.Image.Image | None, mask_image: PIL.Image.Image | None,
              mask_source: MaskSource) -> EditMode:
    """The mode a request asks for; ``inpaint`` needs an init image and a mask (a ``mask_image``, or the init
    image's alpha with ``mask_source="INIT_IMAGE_ALPHA"``).

    Raises:
        InvalidInputError: a mask without an init image, ``INIT_IMAGE_ALPHA`` without an init image with an alpha
            channel, or a ``mask_image`` with ``INIT_IMAGE_ALPHA`` (one mask at a time).
    """
    if init_image is None:
        if mask_image is not None:
            raise InvalidInputError("mask_image needs an init_image to repaint; send both, or neither for "
                                    "text-to-image")
        if mask_source == "INIT_IMAGE_ALPHA":
            raise InvalidInputError("mask_source INIT_IMAGE_ALPHA needs an init_image with transparency (an RGBA PNG)")
        return "text"
    if mask_source == "INIT_IMAGE_ALPHA":
        if mask_image is not None:
            raise InvalidInputError("mask_source INIT_IMAGE_ALPHA takes the mask from init_image's alpha: drop "
                                    "mask_image, or use MASK_IMAGE_WHITE / MASK_IMAGE_BLACK to use it")
        if "A" not in init_image.getbands():
            raise InvalidInputError("mask_source INIT_IMAGE_ALPHA needs an init_image with an alpha channel (an RGBA "
                                    "PNG whose transparent pixels are repainted)")
        return "inpaint"
    return "image" if mask_image is None else "inpaint"


def round_down_64(side: int) -> int:
    """``side`` rounded down to a multiple of 64 pixels (the SDXL UNet needs latents divisible by 8)."""
    return side - side % 64


def repaint_mask(mask_source: MaskSource, init_image: PIL.Image.Image, mask_image: PIL.Image.Image | None,
                 size: tuple[int, int]) -> PIL.Image.Image:
    """The mask of the pixels to repaint (mode ``L``, 255 = repaint, 0 = keep) at ``size`` = (width, height).

    ``MASK_IMAGE_WHITE``: the luminance of ``mask_image``; ``MASK_IMAGE_BLACK``: its inverse; ``INIT_IMAGE_ALPHA``:
    255 − the init image's alpha (transparent = repaint). A mask of another size than the output is resized
    (bilinear; the inpainting pipeline binarises it at 0.5).
    """
    if mask_source == "INIT_IMAGE_ALPHA":
        mask = PIL.ImageOps.invert(init_image.getchannel("A"))
    else:
        mask = mask_image.convert("L")
        if mask_source == "MASK_IMAGE_BLACK":
            mask = PIL.ImageOps.invert(mask)
    return mask if mask.size == size else mask.resize(size, PIL.Image.Resampling.BILINEAR)


def diffusers_strength(image_strength: float, steps: int) -> float:
    """diffusers' img2img ``strength`` for Stability's ``image_strength`` in [0, 1): 1 − image_strength, raised so
    that at least one of the ``steps`` runs (diffusers runs ⌊steps · strength⌋ of them and refuses zero).

    Examples:
        >>> diffusers_strength(0.35, 30), diffusers_strength(0.99, 10), diffusers_strength(0.9, 2)
        (0.65, 0.1, 0.5)
    """
    if not 0 <= image_strength < 1:
        raise InvalidInputError(f"image_strength must be in [0, 1) to denoise, got {image_strength}")
    strength = max(round(1.0 - image_strength, 6), 1.0 / steps)
    while int(steps * strength) < 1:  # steps · (1 / steps) rounds to just below 1 for some steps (e.g. 49)
        strength = math.nextafter(strength, 2.0)
    return min(strength, 1.0)


def pipeline_for(mode: EditMode, pipe: StableDiffusionXLPipeline,
                 scheduler: SchedulerMixin) -> StableDiffusionXLPipeline:
    """A pipeline of ``mode``'s class on ``pipe``'s modules (no weights copied) with ``scheduler``.

    Pipelines keep per-call state (timesteps, guidance scale…) on the instance, so every call gets its own.
    """
    components = {**pipe.components, "scheduler": scheduler}
    options = {"force_zeros_for_empty_prompt": pipe.config.force_zeros_for_empty_prompt,
               "add_watermarker": getattr(pipe, "watermark", None) is not None}
    if mode != "text":  # SDXL base conditions on size only, not on an aesthetic score (the refiner does)
        options["requires_aesthetics_score"] = False
    edit = _PIPELINES[mode](**components, **options)
    edit.set_progress_bar_config(disable=True)
    return edit


def paste_over(generated: PIL.Image.Image, init_image: PIL.Image.Image, mask: PIL.Image.Image) -> PIL.Image.Image:
    """``generated`` where ``mask`` is white, ``init_image`` where it is black, blended in between (RGB, the size
    of ``generated``)."""
    return PIL.Image.composite(generated.convert("RGB"), init_image.convert("RGB"), mask)
