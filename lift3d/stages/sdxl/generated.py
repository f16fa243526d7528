"""What the image stages return: one generated image and the seed that made it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import PIL.Image

__all__ = ["GeneratedImage"]


@dataclass
class GeneratedImage:
    """One sample of an image stage.

    Attributes:
        image: RGB image of the requested size.
        seed: the seed of this sample's CPU ``torch.Generator`` (sample i of a request seeded s uses s + i), so
            asking again with ``seed`` and ``samples=1`` reproduces it.
        finish_reason: Stability's ``finishReason``; lift3d has no content filter, so always ``"SUCCESS"``.
    """

    image: PIL.Image.Image
    seed: int
    finish_reason: Literal["SUCCESS", "ERROR", "CONTENT_FILTERED"] = "SUCCESS"
