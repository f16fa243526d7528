"""Text → image with Stable Diffusion XL (the first stage of the text→3D path).

Wraps a diffusers ``StableDiffusionXLPipeline`` (Podell et al. 2023, "SDXL", arXiv:2307.01952) behind a small,
seeded, validated call that returns one RGB ``PIL.Image``.

Examples:
    >>> t2i = TextToImage.tiny(seed=0)               # random weights, 64×64, offline
    >>> image = t2i("a wooden toy robot", seed=1, num_inference_steps=2)
    >>> image.size, image.mode
    ((64, 64), 'RGB')
"""

from __future__ import annotations

import logging
import os

from typing import Any

import PIL.Image
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from lift3d.errors import InvalidInputError
from lift3d.params import SDXL_GUIDANCE_SCALE_RANGE as GUIDANCE_SCALE_RANGE
from lift3d.stages.loading import default_dtype, diffusers_dtype, loading_errors, resolve_pretrained
from lift3d.stages.tiny import SD_SCHEDULE, seeded, tiny_clip_tokenizer, tiny_text_config, tiny_vae

__all__ = ["TextToImage", "tiny_sdxl_components"]

logger = logging.getLogger(__name__)

MAX_SIDE = 2048
"""Largest height/width accepted, pixels (SDXL is trained at ~1024²; 2048 bounds memory and latency)."""


class TextToImage:
    """Stable Diffusion XL text-to-image stage.

    Args:
        pipe: a loaded ``StableDiffusionXLPipeline``; the stage runs it as is (device, dtype, scheduler).
        random_weights: True when the weights are random (``tiny``); results are then noise-like.
        source: where the weights came from (hub id, directory, or ``"tiny(seed=…)"``).

    Attributes:
        pipe, random_weights, source: as given.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline, *, random_weights: bool, source: str) -> None:
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
        images = self._generate(prompt, negative_prompt, guidance_scale, num_inference_steps, height, width, generator)
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
        components = dict(self.pipe.components)
        components["scheduler"] = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        pipe = StableDiffusionXLPipeline(
            **components,
            force_zeros_for_empty_prompt=self.pipe.config.force_zeros_for_empty_prompt,
            add_watermarker=getattr(self.pipe, "watermark", None) is not None,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


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
