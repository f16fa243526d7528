"""What travels between the image endpoints and the SDXL replica: the calls and their samples (torch-free, so the
HTTP ingress can build them without loading any model code).

:class:`lift3d.pipeline.image_generation.ImageModels` answers a call with one :class:`EncodedSample` per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from lift3d.params.images import PoseParams, RegionParams, TextToImageParams
from lift3d.io.encoded import EncodedImage

__all__ = ["EncodedSample", "ImageCall", "PoseCall", "RegionsCall", "TextToImageCall"]


@dataclass
class EncodedSample:
    """One generated image as PNG bytes, its seed and Stability's ``finishReason``."""

    image: EncodedImage
    seed: int
    finish_reason: str = "SUCCESS"


@dataclass
class TextToImageCall:
    """Text-to-image; with ``init_image`` image-to-image, with ``mask_image`` (or an alpha mask) inpainting."""

    params: TextToImageParams
    seed: int
    init_image: EncodedImage | None = None
    mask_image: EncodedImage | None = None


@dataclass
class RegionsCall:
    """MultiDiffusion regions; the masks are the base64 strings of ``params.masks``."""

    params: RegionParams
    seed: int


@dataclass
class PoseCall:
    """Pose-conditioned generation; ``params.image`` (base64) is the reference photo."""

    params: PoseParams
    seed: int


ImageCall = Union[TextToImageCall, RegionsCall, PoseCall]
