"""Pose-conditioned SDXL: a reference photo's body pose steers text-to-image (Segmind's pose API on SDXL).

The pose is detected in the reference (:class:`lift3d.stages.sdxl.pose.PoseDetector`), drawn as an OpenPose skeleton on
the output canvas, and fed to an OpenPose ControlNet (Zhang et al. 2023, "Adding Conditional Control to
Text-to-Image Diffusion Models", arXiv:2302.05543) through diffusers' ``StableDiffusionXLControlNetPipeline``,
built per call from the modules of an already loaded :class:`~lift3d.stages.sdxl.text_to_image.TextToImage` (no second
SDXL in memory) with a fresh scheduler (:func:`lift3d.stages.sdxl.schedulers.build_scheduler`).

Default ControlNet: ``thibaud/controlnet-openpose-sdxl-1.0`` (diffusers layout: ``config.json`` and a 5 GB fp32
``diffusion_pytorch_model.bin``; the one diffusers' SDXL ControlNet docs use). ``xinsir/controlnet-openpose-sdxl-1.0``
(``diffusion_pytorch_model.safetensors``, fp16, Apache-2.0) loads the same way.

Control image: the skeleton is redrawn on the (width, height) output canvas, the reference fitted inside it
(:meth:`PoseResult.fitted`: uniform scale, centred, black bars; nothing cropped or stretched). When no person is
found the request still generates, as Segmind's does: the control image is all black (the ControlNet then mostly
asks for "no person here"), :attr:`PoseOutput.people` is 0 and the event is logged.

Examples:
    >>> sdxl = TextToImage.tiny(seed=0)
    >>> stage = PoseToImage.tiny(sdxl, seed=0)                    # random weights, logs WARNINGs
    >>> params = PoseParams(prompt="a robot", image="-", num_inference_steps=2)
    >>> out = stage(params, PIL.Image.new("RGB", (64, 64)), seed=7)
    >>> [(g.seed, g.image.size) for g in out.images], out.pose_image.size
    ([(7, (64, 64))], (64, 64))
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

from lift3d.errors import InvalidInputError
from lift3d.params.images import PoseParams
from lift3d.stages.sdxl.generated import GeneratedImage
from lift3d.stages.loading import diffusers_dtype, loading_errors, resolve_pretrained
from lift3d.stages.sdxl.pose import PoseDetector, PoseResult
from lift3d.stages.sdxl.schedulers import build_scheduler
from lift3d.stages.sdxl.text_to_image import TextToImage
from lift3d.stages.tiny import seeded

__all__ = ["DEFAULT_CONTROLNET", "PoseOutput", "PoseToImage"]

logger = logging.getLogger(__name__)

DEFAULT_CONTROLNET = "thibaud/controlnet-openpose-sdxl-1.0"

_HINT = ("An SDXL OpenPose ControlNet in diffusers layout has config.json and diffusion_pytorch_model.safetensors "
         "(or .bin) at its root, e.g. thibaud/controlnet-openpose-sdxl-1.0 or xinsir/controlnet-openpose-sdxl-1.0.")


@dataclass(eq=False)
class PoseOutput:
    """What :class:`PoseToImage` returns.

    Attributes:
        images: one per sample; sample i used seed + i.
        pose_image: the control image, RGB of the output size (width, height).
        keypoints: (people, 18, 2) float32, OpenPose order, x and y in pixels of the output canvas.
        scores: (people, 18) float32 keypoint confidences.
        people: number of people detected; 0 means an all-black control image.
    """

    images: list[GeneratedImage]
    pose_image: PIL.Image.Image
    keypoints: np.ndarray
    scores: np.ndarray
    people: int


class PoseToImage:
    """SDXL + an OpenPose ControlNet + a pose detector.

    Args:
        sdxl: the loaded SDXL stage whose modules (UNet, VAE, text encoders, tokenizers, scheduler config) are used.
        controlnet: a diffusers ``ControlNetModel`` matching that UNet, on its device and dtype.
        detector: the pose detector.
        source: where the ControlNet came from; random_weights: True when the ControlNet or detector is random.
    """

    def __init__(self, sdxl: TextToImage, controlnet: ControlNetModel, detector: PoseDetector, *, source: str,
                 random_weights: bool) -> None:
        self.sdxl = sdxl
        self.controlnet = controlnet
        self.detector = detector
        self.source = source
        self.random_weights = random_weights

    @classmethod
    def from_pretrained(
        cls,
        controlnet: str | os.PathLike[str] = DEFAULT_CONTROLNET,
        detector_dir: str | os.PathLike[str] | None = None,
        *,
        sdxl: TextToImage,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> PoseToImage:
        """Load the ControlNet (hub id or local directory, :func:`~lift3d.stages.loading.resolve_pretrained`) and the
        detector (:meth:`PoseDetector.from_pretrained`; ``detector_dir`` None: ``$LIFT3D_POSE_HOME``).

        Args:
            device, dtype: default: those of ``sdxl``'s UNet (the ControlNet must match them).

        Raises:
            ModelNotFoundError: detector files missing (checked first, milliseconds), or the ControlNet not found
                locally and not downloadable (seconds); the message names what is missing and where it looked.
        """
        device = torch.device(device) if device is not None else sdxl.pipe.unet.device
        dtype = dtype or sdxl.pipe.unet.dtype
        detector = PoseDetector.from_pretrained(detector_dir, device=device)
        name = os.fspath(controlnet)
        path = resolve_pretrained(name, required=("config.json",), hint=_HINT)
        with loading_errors(name, path, _HINT):
            model = ControlNetModel.from_pretrained(path, **diffusers_dtype(dtype), local_files_only=True)
        return cls(sdxl, model.to(device), detector, source=name, random_weights=False)

    @classmethod
    def tiny(
        cls, sdxl: TextToImage, seed: int = 0, *, detector_home: str | os.PathLike[str] | None = None,
    ) -> PoseToImage:
        """A ControlNet copied from ``sdxl``'s UNet (``ControlNetModel.from_unet``, so it matches the tiny SDXL of
        :func:`~lift3d.stages.sdxl.text_to_image.tiny_sdxl_components`) and :meth:`PoseDetector.tiny`, random weights
        from ``seed``.

        The conditioning encoder downsamples by the VAE's factor (channels (16, 32) for the tiny VAE's factor 2,
        (16, 32, 96, 256) for SDXL's 8), and the zero-initialised convolutions (``controlnet_down_blocks``,
        ``controlnet_mid_block``, the encoder's ``conv_out``) get PyTorch's default random init, so the ControlNet
        does change the result. Logs WARNINGs: weights are random.
        """
        unet = sdxl.pipe.unet
        levels = int(round(math.log2(sdxl.pipe.vae_scale_factor))) + 1
        with seeded(seed):
            controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels])
            zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                          controlnet.controlnet_cond_embedding.conv_out]
            for conv in zero_convs:
                conv.reset_parameters()
        logger.warning("PoseToImage uses a ControlNet with random weights (tiny(seed=%d)): outputs are noise", seed)
        detector = PoseDetector.tiny(seed=seed, home=detector_home, device=unet.device)
        controlnet = controlnet.to(unet.device)
        if controlnet.dtype != unet.dtype:
            controlnet = controlnet.to(dtype=unet.dtype)
        return cls(sdxl, controlnet, detector, source=f"tiny(seed={seed})", random_weights=True)

    def __call__(self, params: PoseParams, reference: PIL.Image.Image, *, seed: int) -> PoseOutput:
        """Generate ``params.samples`` images whose people take the pose found in ``reference``.

        Args:
            params: the request (``params.image`` is not read: ``reference`` is its decoded image). ``strength`` is
                the ControlNet conditioning scale (0: no pose influence); ``width``/``height`` default to the
                model's size (SDXL: 1024; tiny: 64).
            reference: the photo whose pose is detected, any size and mode.
            seed: the seed of sample 0 (already drawn: 0 is not "random" here); sample i uses a CPU generator
                seeded ``seed + i``, so asking again with that seed and ``samples=1`` gives the same image.

        Returns:
            :class:`PoseOutput`.

        Raises:
            InvalidInputError: ``reference`` is not an image, a side is not a multiple of 8, or the sampler and
                schedule do not combine.
        """
        # 1. check inputs
        width = params.width or self.sdxl.default_size
        height = params.height or self.sdxl.default_size
        self.check_inputs(reference, width, height)
        # 2. detect the pose and draw it on the output canvas
        control = self.detect(reference, width, height)
        # 3. denoise each sample with its own generator and scheduler
        images = [GeneratedImage(image=self._generate(params, control.pose_image, width, height, seed + i),
                                 seed=seed + i) for i in range(params.samples)]
        return PoseOutput(images=images, pose_image=control.pose_image, keypoints=control.keypoints,
                          scores=control.scores, people=control.people)

    @staticmethod
    def check_inputs(reference: object, width: int, height: int) -> None:
        """Raise :class:`InvalidInputError` with the fix for an unusable reference image or size."""
        if not isinstance(reference, PIL.Image.Image) or 0 in reference.size:
            raise InvalidInputError("image must be a non-empty photo of a person (base64 JPEG or PNG)")
        for label, side in (("width", width), ("height", height)):
            if side % 8 or side < 64:
                raise InvalidInputError(f"{label} must be a multiple of 8 (64 for the API), ≥ 64, got {side}")

    def detect(self, reference: PIL.Image.Image, width: int, height: int) -> PoseResult:
        """The detector's result for ``reference``, fitted to a (width, height) canvas (:meth:`PoseResult.fitted`)."""
        control = self.detector(reference).fitted(width, height)
        if control.people == 0:
            logger.info("no person detected in the %dx%d reference; generating with an all-black pose image",
                        *reference.size)
        return control

    @torch.no_grad()
    def _generate(self, params: PoseParams, control: PIL.Image.Image, width: int, height: int,
                  seed: int) -> PIL.Image.Image:
        pipe = self._fresh_pipe(params, seed)
        output = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            image=control,
            height=height,
            width=width,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            controlnet_conditioning_scale=float(params.strength),
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            output_type="pil",
        )
        return output.images[0].convert("RGB")

    def _fresh_pipe(self, params: PoseParams, seed: int) -> StableDiffusionXLControlNetPipeline:
        """A ControlNet pipeline on the shared modules with a scheduler of its own (schedulers and pipelines keep
        per-call state, so concurrent requests must not share them)."""
        base = self.sdxl.pipe
        components = {key: value for key, value in base.components.items() if key != "scheduler"}
        scheduler = build_scheduler(params.sampler, params.scheduler, base.scheduler, noise_seeds=[seed])
        pipe = StableDiffusionXLControlNetPipeline(
            **components,
            controlnet=self.controlnet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
            add_watermarker=getattr(base, "watermark", None) is not None,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
