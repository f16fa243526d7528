"""The image side on one SDXL: what travels to the SDXL replica and how it is answered.

A call (:mod:`lift3d.io.image_calls`) is a text-to-image (Stability text-to-image, img2img, inpainting), regions
(MultiDiffusion) or pose (OpenPose ControlNet) call; :class:`ImageModels` answers any of them with PNG-encoded
samples. The SDXL deployment holds one ``ImageModels`` (``deployments/text_to_image.py``); tests and
the CLI hold one in process. The 3D pipeline's SDXL step builds its call with :func:`call_for_3d`, so a text-to-3D
job's image takes the same prompt controls as the image endpoints.

Examples:
    >>> models = ImageModels(TextToImage.tiny(seed=0))
    >>> call = TextToImageCall(TextToImageParams(text_prompts=[{"text": "a robot"}], steps=2), seed=7)
    >>> [(s.seed, s.image.image.size) for s in models(call)]
    [(7, (64, 64))]
"""

from __future__ import annotations

import logging
from typing import Callable

from lift3d.errors import InvalidInputError
from lift3d.params.images import PoseParams, RegionParams, TextToImageParams
from lift3d.io.encoded import EncodedImage
from lift3d.io.images import decode_base64_image
from lift3d.params import GenerationParams
from lift3d.presets import TINY, ModelPreset
from lift3d.io.image_calls import EncodedSample, ImageCall, PoseCall, RegionsCall, TextToImageCall
from lift3d.stages.sdxl.generated import GeneratedImage
from lift3d.stages.sdxl.text_to_image import TextToImage

__all__ = ["EncodedSample", "ImageCall", "ImageModels", "PoseCall", "RegionsCall", "TextToImageCall", "call_for_3d",
           "pose_loader", "uses_prompt_controls"]

logger = logging.getLogger(__name__)


class ImageModels:
    """Answers image calls on one SDXL stage; the region and pose generators share its modules.

    Args:
        sdxl: the loaded SDXL stage.
        pose: builds the pose stage on first use (its ControlNet and detector weights are loaded then, so a
            server without them serves every other call; a pose call then fails fast with ``ModelNotFoundError``).
    """

    def __init__(self, sdxl: TextToImage, pose: Callable[[TextToImage], object] | None = None) -> None:
        self.sdxl = sdxl
        self._pose_factory = pose
        self._pose = None
        self._regions = None

    def __call__(self, call: ImageCall) -> list[EncodedSample]:
        """Generate; returns one :class:`EncodedSample` per requested sample, in order.

        Raises:
            InvalidInputError: unusable parameters or images; ModelNotFoundError: pose weights missing.
        """
        with self.sdxl.lock:  # region and pose calls share the SDXL's tokenizers and VAE (see TextToImage.lock)
            samples = self._generate(call)
        return [EncodedSample(EncodedImage.from_image(s.image), s.seed, s.finish_reason) for s in samples]

    def _generate(self, call: ImageCall) -> list[GeneratedImage]:
        if isinstance(call, TextToImageCall):
            samples = self.sdxl.generate_images(
                call.params, seed=call.seed,
                init_image=None if call.init_image is None else call.init_image.image,
                mask_image=None if call.mask_image is None else call.mask_image.image)
        elif isinstance(call, RegionsCall):
            samples = [self._region_sample(call)]
        elif isinstance(call, PoseCall):
            samples = self._pose_samples(call)
        else:
            raise TypeError(f"not an image call: {type(call).__name__}")
        return samples

    def _region_sample(self, call: RegionsCall) -> GeneratedImage:
        from lift3d.stages.sdxl.regions import RegionGenerator, decode_masks

        if self._regions is None:
            self._regions = RegionGenerator(self.sdxl.pipe)
        p = call.params
        masks = decode_masks(p.masks, p.height, p.width)
        return self._regions(bg_prompt=p.bg_prompt, bg_negative=p.bg_nprompt, fg_prompts=list(p.fg_prompt),
                             fg_negatives=p.fg_negatives(), masks=masks, height=p.height, width=p.width,
                             num_inference_steps=p.ddim_steps, bootstrapping=p.bootstrapping,
                             guidance_scale=p.guidance_scale, seed=call.seed)

    def pose_stage(self):
        """The pose stage, built on first use."""
        if self._pose is None:
            if self._pose_factory is None:
                raise InvalidInputError("pose-conditioned generation is not configured on this server")
            self._pose = self._pose_factory(self.sdxl)
        return self._pose

    def _pose_samples(self, call: PoseCall) -> list[GeneratedImage]:
        reference = decode_base64_image(call.params.image, "image")
        return self.pose_stage()(call.params, reference, seed=call.seed).images

    def image_for_3d(self, params: GenerationParams, seed: int) -> EncodedImage:
        """The SDXL image of a text-to-3D job with prompt controls (:func:`call_for_3d` at this model's size)."""
        return self(call_for_3d(params, seed, size=self.sdxl.default_size))[0].image

    def describe(self) -> dict:
        return {"source": self.sdxl.source, "random_weights": bool(self.sdxl.random_weights)}


def pose_loader(preset: ModelPreset) -> Callable[[TextToImage], object]:
    """Builds the preset's pose stage on a loaded SDXL: tiny stand-ins for ``"tiny"``, else the ControlNet and
    detector weights (:meth:`PoseToImage.from_pretrained`, ``ModelNotFoundError`` within seconds when missing)."""

    def load(sdxl: TextToImage):
        from lift3d.stages.sdxl.pose_to_image import PoseToImage

        if preset.pose_controlnet == TINY:
            return PoseToImage.tiny(sdxl, seed=0)
        detector = None if preset.pose_detector in (None, TINY) else preset.pose_detector
        return PoseToImage.from_pretrained(preset.pose_controlnet, detector, sdxl=sdxl)

    return load


def uses_prompt_controls(params: GenerationParams) -> bool:
    """Whether a job's SDXL step needs more than a prompt and a negative prompt (weights, sampler, schedule,
    regions or pose); plain prompts keep the stage's own call, so their images stay as they were."""
    return (params.text_prompts is not None or params.sampler is not None or params.scheduler != "normal"
            or params.regions is not None or params.pose_image is not None)


def call_for_3d(params: GenerationParams, seed: int, size: int | None = None) -> ImageCall:
    """The SDXL call of a text-to-3D job: weighted prompts, sampler, schedule, regions or pose from ``params``.

    Without ``text_prompts`` the job's ``prompt`` (weight 1) and ``negative_prompt`` (weight −1) are the prompts;
    ``guidance_scale`` and ``num_inference_steps`` are the job's. ``size``: image side in pixels (None: the
    model's; regions need it, the region API's default being 1024). With ``regions`` the job's prompt is the background prompt; with ``pose_image`` its pose conditions
    the image (steps and guidance capped at the pose endpoint's 100 and 20). Regions and pose cannot be combined.

    Raises:
        InvalidInputError: both regions and a pose image, or no prompt.
    """
    if params.prompt is None:
        raise InvalidInputError("a text-to-3D job needs a prompt")
    if params.regions is not None and params.pose_image is not None:
        raise InvalidInputError("regions and pose_image cannot be combined in one job; give one of them")
    if params.regions is not None:
        r = params.regions
        if size is None:
            raise InvalidInputError("regions need the image size of the model (call_for_3d(..., size=...))")
        side = size
        return RegionsCall(RegionParams(
            bg_prompt=params.prompt, bg_nprompt=params.negative_prompt, fg_prompt=r.fg_prompt, fg_nprompt=r.fg_nprompt,
            masks=r.masks, width=side, height=side, ddim_steps=params.num_inference_steps,
            bootstrapping=min(r.bootstrapping, params.num_inference_steps),
            guidance_scale=params.guidance_scale, seed=seed), seed)
    if params.pose_image is not None:
        return PoseCall(PoseParams(
            prompt=params.prompt, negative_prompt=params.negative_prompt, image=params.pose_image,
            num_inference_steps=min(params.num_inference_steps, 100), guidance_scale=min(params.guidance_scale, 20),
            seed=seed, sampler=params.sampler, scheduler=params.scheduler, width=size, height=size), seed)
    if params.text_prompts is not None:
        prompts = [p.model_dump() for p in params.text_prompts]
    else:
        prompts = [{"text": params.prompt, "weight": 1.0}]
        if params.negative_prompt:
            prompts.append({"text": params.negative_prompt, "weight": -1.0})
    return TextToImageCall(TextToImageParams(
        text_prompts=prompts, cfg_scale=params.guidance_scale, steps=params.num_inference_steps, seed=seed,
        samples=1, sampler=params.sampler, scheduler=params.scheduler, height=size, width=size), seed)
