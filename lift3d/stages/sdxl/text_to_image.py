"""Text → image with Stable Diffusion XL (the first stage of the text→3D path).

Wraps a diffusers ``StableDiffusionXLPipeline`` (Podell et al. 2023, "SDXL", arXiv:2307.01952) behind two seeded,
validated calls:

- ``__call__``: one prompt and one negative prompt → one RGB ``PIL.Image`` (the 3D pipeline's SDXL step);
- :meth:`TextToImage.generate_images`: Stability's v1 text-to-image body
  (:class:`~lift3d.params.images.TextToImageParams`: weighted prompts, sampler and schedule, several samples,
  image-to-image and inpainting) → one :class:`~lift3d.stages.sdxl.generated.GeneratedImage` per sample. Weighted
  prompts go through compel (:mod:`lift3d.stages.sdxl.weighted_prompts`), samplers through
  :mod:`lift3d.stages.sdxl.schedulers`, the init-image modes through :mod:`lift3d.stages.sdxl.image_edit`.

Examples:
    >>> t2i = TextToImage.tiny(seed=0)               # random weights, 64×64, offline
    >>> image = t2i("a wooden toy robot", seed=1, num_inference_steps=2)
    >>> image.size, image.mode
    ((64, 64), 'RGB')
    >>> params = TextToImageParams(text_prompts=[{"text": "a robot", "weight": 1}], steps=2, samples=2)
    >>> [(s.seed, s.image.size) for s in t2i.generate_images(params, seed=7)]
    [(7, (64, 64)), (8, (64, 64))]
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import PIL.Image
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from lift3d.errors import InvalidInputError
from lift3d.params.images import MAX_IMAGE_SIDE, TextToImageParams
from lift3d.params import SDXL_GUIDANCE_SCALE_RANGE as GUIDANCE_SCALE_RANGE
from lift3d.stages.sdxl.generated import GeneratedImage
from lift3d.stages.sdxl.image_edit import (
    EditMode, diffusers_strength, edit_mode, paste_over, pipeline_for, repaint_mask, round_down_64,
)
from lift3d.stages.loading import default_dtype, diffusers_dtype, loading_errors, resolve_pretrained
from lift3d.stages.sdxl.schedulers import build_scheduler
from lift3d.stages.tiny import SD_SCHEDULE, seeded, tiny_clip_tokenizer, tiny_text_config, tiny_vae
from lift3d.stages.sdxl.weighted_prompts import encode_weighted_prompts

__all__ = ["TILED_VAE_ABOVE", "TextToImage", "tiny_sdxl_components", "vae_tiling_for"]

logger = logging.getLogger(__name__)

MAX_SIDE = 2048
"""Largest height/width accepted, pixels (SDXL is trained at ~1024²; 2048 bounds memory and latency)."""

TILED_VAE_ABOVE = 1024
"""Images with a side above this many pixels go through the VAE in overlapping tiles (diffusers'
``AutoencoderKL.enable_tiling``: tiles of the VAE's ``sample_size``, 1024 px for SDXL, a quarter overlapping). The
fp32 VAE decode of a 2048² image keeps ~12 GiB of temporaries at once (``benchmarks/memory_model.py``, item
``sdxl_2048``), more than the SDXL replica's 16 GiB target allows beside the weights; tiled, it needs about what a
1024² decode needs. Sizes up to 1024 px decode whole, as before (bit for bit)."""


@contextmanager
def vae_tiling_for(vae: Any, width: int, height: int) -> Iterator[bool]:
    """Within the block, the VAE ``vae`` works in tiles when ``max(width, height)`` (pixels) exceeds
    :data:`TILED_VAE_ABOVE`; yields whether it does. Tiling is switched off again on leaving. Callers hold the
    stage's lock, so no other call of this stage sees the switch."""
    tiled = max(width, height) > TILED_VAE_ABOVE
    if not tiled:
        yield False
        return
    vae.enable_tiling()
    try:
        yield True
    finally:
        vae.disable_tiling()


class TextToImage:
    """Stable Diffusion XL text-to-image stage.

    Args:
        pipe: a loaded ``StableDiffusionXLPipeline``; the stage runs it as is (device, dtype, scheduler).
        random_weights: True when the weights are random (``tiny``); results are then noise-like.
        source: where the weights came from (hub id, directory, or ``"tiny(seed=…)"``).

    Attributes:
        pipe, random_weights, source: as given.
        lock: held by every call on these modules (this stage's, and the region and pose generators' built on
            it). The fast tokenizers keep padding/truncation state and diffusers casts the shared VAE's dtype
            during a call, so two concurrent calls garble each other's prompts (seen: "Sizes of tensors must
            match" in ``encode_prompt``); one GPU runs one call at a time anyway.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, *, random_weights: bool, source: str) -> None:
        self.lock = threading.RLock()
        self.pipe = pipe
        self.random_weights = random_weights
        self.source = source
        self.pipe.set_progress_bar_config(disable=True)
        if random_weights:
            logger.warning("TextToImage uses random weights (%s): outputs are noise, not real images", source)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "stabilityai/stable-diffusion-xl-base-1.0",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> TextToImage:
        """Load SDXL from a local diffusers directory or a Hub id (see :mod:`lift3d.stages.loading`).

        Args:
            name_or_path: directory with ``model_index.json`` or Hub repo id.
            device: torch device to run on.
            dtype: weight dtype; default fp16 on CUDA, fp32 elsewhere.

        Raises:
            ModelNotFoundError: within seconds when the model is not available locally and cannot be fetched.
        """
        path = resolve_pretrained(name_or_path)
        dtype = dtype or default_dtype(device)
        with loading_errors(os.fspath(name_or_path), path):
            pipe = StableDiffusionXLPipeline.from_pretrained(path, **diffusers_dtype(dtype), local_files_only=True)
        return cls(pipe.to(device), random_weights=False, source=os.fspath(name_or_path))

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu") -> TextToImage:
        """The same pipeline class from tiny configs (64² output), random weights fixed by ``seed``; offline."""
        with seeded(seed):
            pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
        return cls(pipe.to(device), random_weights=True, source=f"tiny(seed={seed})")

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write the pipeline in diffusers layout (safetensors), loadable with :meth:`from_pretrained`."""
        self.pipe.save_pretrained(directory, safe_serialization=True)

    @property
    def default_size(self) -> int:
        """Default output side, pixels: the UNet's latent sample size × the VAE's spatial factor (SDXL: 1024)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def __call__(
        self,
        prompt: str,
        negative_prompt: str = "",
        *,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 30,
        seed: int,
        height: int | None = None,
        width: int | None = None,
    ) -> PIL.Image.Image:
        """Generate one image.

        Args:
            prompt: non-empty text.
            negative_prompt: text to steer away from; "" means none (SDXL then uses zero embeddings).
            guidance_scale: classifier-free guidance weight, ≥ 1 (Ho & Salimans 2022); 1 disables guidance.
            num_inference_steps: scheduler steps, 1..1000.
            seed: seeds a CPU ``torch.Generator``; the same seed and arguments give the same image.
            height, width: pixels, multiples of 8 in [64, 2048]; default :attr:`default_size`.

        Returns:
            RGB ``PIL.Image.Image`` of size (width, height).

        Raises:
            InvalidInputError: for an empty prompt or out-of-range parameters.
        """
        # 1. check inputs
        height = height or self.default_size
        width = width or self.default_size
        self.check_inputs(prompt, negative_prompt, guidance_scale, num_inference_steps, height, width)
        # 2. seed; a CPU generator makes results identical across devices for a given seed
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        # 3. denoise and decode
        with self.lock, vae_tiling_for(self.pipe.vae, width, height):
            images = self._generate(prompt, negative_prompt, guidance_scale, num_inference_steps, height, width,
                                    generator)
        # 4. convert
        return images[0].convert("RGB")

    def check_inputs(
        self, prompt: str, negative_prompt: str, guidance_scale: float, num_inference_steps: int, height: int,
        width: int,
    ) -> None:
        """Raise :class:`InvalidInputError` with the fix for any unusable argument."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInputError("prompt must be a non-empty string, e.g. 'a wooden toy robot'")
        if not isinstance(negative_prompt, str):
            raise InvalidInputError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if not GUIDANCE_SCALE_RANGE[0] <= guidance_scale <= GUIDANCE_SCALE_RANGE[1]:
            low, high = GUIDANCE_SCALE_RANGE
            raise InvalidInputError(f"guidance_scale must be in [{low:g}, {high:g}] (SDXL default 5-8), got {guidance_scale}")
        if not 1 <= num_inference_steps <= 1000:
            raise InvalidInputError(f"num_inference_steps must be in [1, 1000], got {num_inference_steps}")
        for label, side in (("height", height), ("width", width)):
            if side % 8 or not 64 <= side <= MAX_SIDE:
                raise InvalidInputError(f"{label} must be a multiple of 8 in [64, {MAX_SIDE}], got {side}")

    @torch.no_grad()
    def _generate(
        self, prompt: str, negative_prompt: str, guidance_scale: float, num_inference_steps: int, height: int,
        width: int, generator: torch.Generator,
    ) -> list[PIL.Image.Image]:
        output = self._fresh_pipe()(
            prompt=prompt,
            negative_prompt=negative_prompt or None,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            generator=generator,
            output_type="pil",
        )
        return output.images

    def _fresh_pipe(self) -> StableDiffusionXLPipeline:
        """A pipeline sharing this one's modules with its own scheduler: diffusers pipelines keep per-call state
        (``scheduler.set_timesteps``, ``_guidance_scale``…) on the instance, so concurrent calls must not share one."""
        return pipeline_for("text", self.pipe, type(self.pipe.scheduler).from_config(self.pipe.scheduler.config))

    # ---------------------------------------------------------------------------- Stability-style generation
    @property
    def side_range(self) -> tuple[int, int]:
        """Smallest and largest height/width :meth:`generate_images` accepts, pixels: a quarter of
        :attr:`default_size` (at least 64) to 2048. SDXL: (256, 2048); the tiny preset: (64, 2048)."""
        return max(64, self.default_size // 4), MAX_IMAGE_SIDE

    def image_size(self, params: TextToImageParams, init_image: PIL.Image.Image | None = None) -> tuple[int, int]:
        """Output (width, height) in pixels: ``params.width``/``height``; where omitted, the init image's side rounded
        down to a multiple of 64, else :attr:`default_size`.

        Raises:
            InvalidInputError: a side that is not a multiple of 64 within :attr:`side_range`.
        """
        low, high = self.side_range
        sides = {}
        for label, given, index in (("width", params.width, 0), ("height", params.height, 1)):
            side = given or (round_down_64(init_image.size[index]) if init_image is not None else self.default_size)
            if side % 64 or not low <= side <= high:
                origin = (f" (init_image is {init_image.size[0]}×{init_image.size[1]} px, cut down to multiples of 64)"
                          if given is None and init_image is not None else "")
                raise InvalidInputError(f"{label} must be a multiple of 64 in [{low}, {high}] for this model, got "
                                        f"{side}{origin}")
            sides[label] = side
        return sides["width"], sides["height"]

    @torch.no_grad()
    def generate_images(
        self,
        params: TextToImageParams,
        *,
        seed: int,
        init_image: PIL.Image.Image | None = None,
        mask_image: PIL.Image.Image | None = None,
    ) -> list[GeneratedImage]:
        """Stability v1 text-to-image, image-to-image and inpainting on this SDXL.

        The mode follows the images given: none → text-to-image; ``init_image`` → image-to-image (diffusers
        ``strength = 1 − params.image_strength``; ``image_strength = 1`` returns the init image, resized to the
        output size, without running the model); ``init_image`` and ``mask_image`` (or ``mask_source=
        "INIT_IMAGE_ALPHA"`` and an RGBA init image) → inpainting, repainting the mask's white pixels
        (``MASK_IMAGE_WHITE``), its black ones (``MASK_IMAGE_BLACK``) or the init image's transparent ones; pixels
        outside the mask are the init image's (see :mod:`lift3d.stages.sdxl.image_edit`). ``image_strength`` is not
        used by inpainting.

        Prompts: ``params.text_prompts`` weighted as
        :func:`~lift3d.stages.sdxl.weighted_prompts.encode_weighted_prompts` says (prompts of one sign blended by
        their weights; compel's syntax inside each). ``cfg_scale ≤ 1`` disables classifier-free guidance, and with
        it the negative prompts.

        Args:
            params: the request body (validated; sampler and schedule canonical).
            seed: the first sample's seed (the caller draws it when ``params.seed`` is 0): sample i uses a CPU
                ``torch.Generator`` seeded ``seed + i`` and runs on its own, so ``seed + i`` with ``samples=1``
                reproduces sample i exactly.
            init_image: image to start from (any size; resized to the output size, alpha dropped except as mask).
            mask_image: repaint mask, resized to the output size when its size differs.

        Returns:
            ``params.samples`` RGB images of the output size (:meth:`image_size`), seeds ``seed … seed + n − 1``.

        Raises:
            InvalidInputError: a bad size, a mask without an init image, an unsupported sampler × schedule.
        """
        # 1. check inputs: mode, output size, seeds
        mode = edit_mode(init_image, mask_image, params.mask_source)
        size = self.image_size(params, init_image)
        seeds = [int(seed) + i for i in range(params.samples)]
        if init_image is not None and init_image.size != size:
            init_image = init_image.resize(size, PIL.Image.Resampling.LANCZOS)
        if mode == "image" and params.image_strength >= 1:  # keep all of the init image: nothing to denoise
            return [GeneratedImage(init_image.convert("RGB"), s) for s in seeds]
        with self.lock, vae_tiling_for(self.pipe.vae, *size):
            return self._generate_images(params, mode, size, seeds, init_image, mask_image)

    def _generate_images(self, params: TextToImageParams, mode: EditMode, size: tuple[int, int], seeds: list[int],
                         init_image: PIL.Image.Image | None, mask_image: PIL.Image.Image | None
                         ) -> list[GeneratedImage]:
        # 2. encode the weighted prompts (negatives only matter with guidance)
        guided = params.cfg_scale > 1
        negatives = params.negative_prompts() if guided else []
        embeds = encode_weighted_prompts(self.pipe, params.positive_prompts(), negatives)
        if not guided:
            del embeds["negative_prompt_embeds"], embeds["negative_pooled_prompt_embeds"]
        # 3. the mode's images
        mask = repaint_mask(params.mask_source, init_image, mask_image, size) if mode == "inpaint" else None
        arguments = self._mode_arguments(mode, params, size, init_image, mask)
        # 4. denoise and decode each sample on its own: a scheduler and pipeline of its own on the shared modules, a
        #    CPU generator seeded seed + i. Not batched: a batch changes the UNet's float rounding (latents differ by
        #    ~1e-5, pixels by ±1), and a sample must come back bit for bit when asked for by its own seed.
        images = []
        for sample_seed in seeds:
            scheduler = build_scheduler(params.sampler, params.scheduler, self.pipe.scheduler,
                                        noise_seeds=[sample_seed])
            images.extend(pipeline_for(mode, self.pipe, scheduler)(
                **embeds, **arguments, guidance_scale=params.cfg_scale, num_inference_steps=params.steps,
                generator=torch.Generator(device="cpu").manual_seed(sample_seed), output_type="pil",
            ).images)
        # 5. keep the init image outside the mask, and wrap
        if mask is not None:
            images = [paste_over(image, init_image, mask) for image in images]
        return [GeneratedImage(image.convert("RGB"), s) for image, s in zip(images, seeds, strict=True)]

    @staticmethod
    def _mode_arguments(mode: EditMode, params: TextToImageParams, size: tuple[int, int],
                        init_image: PIL.Image.Image | None, mask: PIL.Image.Image | None) -> dict[str, Any]:
        width, height = size
        if mode == "text":
            return {"width": width, "height": height}
        image = init_image.convert("RGB")
        if mode == "image":
            return {"image": image, "strength": diffusers_strength(params.image_strength, params.steps)}
        return {"image": image, "mask_image": mask, "strength": 1.0, "width": width, "height": height}


def tiny_sdxl_components() -> dict[str, Any]:
    """Keyword arguments for ``StableDiffusionXLPipeline`` with tiny random components (call inside
    :func:`~lift3d.stages.tiny.seeded`).

    UNet (32, 64) channels with ``addition_embed_type="text_time"`` and cross-attention width 64 = 32 + 32 (the two
    text encoders' hidden states are concatenated); the second encoder projects its pooled output to 32, and the
    added-condition width is 6 × 8 (size/crop time ids) + 32 = 80. Default sample size 32 latents → 64 px.
    """
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizer_2, projection_dim=32))
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading")
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }
