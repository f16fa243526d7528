"""The synchronous image endpoints' core, HTTP-free: check the inputs, draw the seed, charge the caller, generate,
give the credits back when generation fails.

The images come from a ``generate`` callable (:class:`lift3d.pipeline.image_generation.ImageModels` in process,
the SDXL deployment's ``images`` method behind a Ray handle in the graph); both take an
:data:`~lift3d.pipeline.image_generation.ImageCall` and return its samples. Blocking: the routes
(:mod:`lift3d.service.api.routes.images`) call it in a worker thread.

Examples:
    >>> service = ImageService(ImageModels(TextToImage.tiny(seed=0)))
    >>> result = service.text_to_image(TextToImageParams(text_prompts=[{"text": "a robot"}], steps=2, seed=3))
    >>> [s.seed for s in result.samples]
    [3]
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.params.images import PoseParams, RegionParams, TextToImageParams, draw_seed
from lift3d.io.encoded import EncodedImage
from lift3d.io.image_calls import EncodedSample, ImageCall, PoseCall, RegionsCall, TextToImageCall
from lift3d.io.images import ImageLimits, decode_base64_image, load_image
from lift3d.service.accounts.credits import to_credits, to_mc
from lift3d.errors import describe_error, find_cause

if TYPE_CHECKING:
    from lift3d.service.accounts.principal import Principal
    from lift3d.service.accounts.keys import ApiKeyStore

__all__ = ["ImageResult", "ImageService", "ImageStageError"]

logger = logging.getLogger(__name__)


class ImageStageError(Lift3DError):
    """Generation failed for a reason that is not the caller's (the message is the one line users may see)."""

    name = "internal_error"


@dataclass
class ImageResult:
    """The samples of one request and what it cost (credits; 0 when nothing was charged)."""

    samples: list[EncodedSample]
    credits: float
    request_id: str


class ImageService:
    """Synchronous image generation with credits.

    Args:
        generate: answers an :data:`ImageCall` with its samples (blocking).
        keys: the API key store, to charge callers with keys (None: nothing is charged).
        price: credits of a request, ``(kind, params) → credits`` (kinds ``text-to-image``, ``regions``, ``pose``);
            None: free.
        limits: size limits of uploaded images.
    """

    def __init__(self, generate: Callable[[ImageCall], list[EncodedSample]], *, keys: ApiKeyStore | None = None,
                 price: Callable[[str, Any], float] | None = None, limits: ImageLimits = ImageLimits()) -> None:
        self.generate, self.keys, self.price, self.limits = generate, keys, price, limits

    def text_to_image(self, params: TextToImageParams, init_image: bytes | None = None,
                      mask_image: bytes | None = None, caller: Principal | None = None) -> ImageResult:
        """Stability text-to-image; with ``init_image`` image-to-image, with ``mask_image`` (or
        ``mask_source=INIT_IMAGE_ALPHA``) inpainting.

        Raises:
            InvalidInputError / PayloadTooLargeError: unusable parameters or images (nothing charged).
            InsufficientCredits: the caller's balance is below the price.
            ImageStageError: generation failed (the charge is returned).
        """
        # 1. check the images before anything is charged
        init = None if init_image is None else EncodedImage(init_image)
        mask = None if mask_image is None else EncodedImage(mask_image)
        for label, image in (("init_image", init), ("mask_image", mask)):
            if image is not None:
                try:
                    load_image(image.data, self.limits)
                except InvalidInputError as error:
                    raise type(error)(f"{label}: {error}") from None
        if mask is not None and init is None:
            raise InvalidInputError("mask_image needs an init_image to paint into")
        if params.mask_source == "INIT_IMAGE_ALPHA" and init is not None and mask is None \
                and init.image.mode != "RGBA":
            raise InvalidInputError("mask_source INIT_IMAGE_ALPHA needs an init_image with an alpha channel")
        # 2. seed, charge, generate
        seed = draw_seed(params.seed)
        params = params.model_copy(update={"seed": seed})
        return self._run("text-to-image", params, TextToImageCall(params, seed, init, mask), caller)

    def regions(self, params: RegionParams, caller: Principal | None = None) -> ImageResult:
        """MultiDiffusion regions. Raises as :meth:`text_to_image`."""
        for index, mask in enumerate(params.masks):  # fail before charging, naming the mask
            decode_base64_image(mask, f"masks[{index}]", self.limits)
        seed = draw_seed(params.seed)
        params = params.model_copy(update={"seed": seed})
        return self._run("regions", params, RegionsCall(params, seed), caller)

    def pose(self, params: PoseParams, caller: Principal | None = None) -> ImageResult:
        """Pose-conditioned generation. Raises as :meth:`text_to_image`."""
        decode_base64_image(params.image, "image", self.limits)
        seed = draw_seed(params.seed)
        params = params.model_copy(update={"seed": seed})
        return self._run("pose", params, PoseCall(params, seed), caller)

    def _run(self, kind: str, params: Any, call: ImageCall, caller: Principal | None) -> ImageResult:
        request_id = uuid.uuid4().hex
        key_id = None if caller is None else caller.key_id
        amount_mc = 0
        if key_id is not None and self.keys is not None and self.price is not None:
            amount_mc = to_mc(self.price(kind, params))
            if amount_mc > 0:
                self.keys.charge(key_id, request_id, amount_mc)
        try:
            samples = self.generate(call)
        except Exception as exc:  # noqa: BLE001 - the charge goes back whatever went wrong, then the error is sorted
            if amount_mc > 0:
                self.keys.return_charge(key_id, request_id, amount_mc)
            error = self._user_error(exc)
            if error is exc:
                raise
            raise error from exc
        return ImageResult(samples, to_credits(amount_mc), request_id)

    @staticmethod
    def _user_error(exc: Exception) -> Exception:
        """The caller's error (input, missing model) as raised by the stage, even when it crossed a Ray handle
        wrapped; anything else as :class:`ImageStageError` with a generic line (details in the log)."""
        cause = find_cause(exc)
        if cause is not None and not isinstance(cause, ImageStageError):
            if cause is exc:
                return exc
            rebuilt = type(cause)(describe_error(cause))
            rebuilt.errors = getattr(cause, "errors", None)  # type: ignore[attr-defined]
            return rebuilt
        logger.error("image generation failed: %r", exc, exc_info=exc)
        return ImageStageError(describe_error(exc))
