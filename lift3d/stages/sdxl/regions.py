"""Region-based text → image on SDXL with MultiDiffusion (Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion
Paths for Controlled Image Generation", ICML 2023; the authors' repo omerbt/MultiDiffusion, ``region_based.py``).

One latent covers the whole image. At every DDIM step it is denoised once per prompt — the background prompt over
the whole image and one prompt per region — in one batched UNet call with classifier-free guidance, and the
per-prompt DDIM results are averaged pixel by pixel, each weighted by its mask at latent resolution
(:func:`fuse_latents`; the background's weight is 1 − Σ region masks, at least 0, as in the authors' code, so a
region's latent comes from its own prompt alone). During the first ``bootstrapping`` steps each region
is denoised over a noised constant-colour image outside its mask (:func:`bootstrap_inputs`), which makes the
region's subject form inside its mask instead of spreading over the image.

Examples:
    >>> from lift3d.stages.sdxl.text_to_image import TextToImage
    >>> regions = RegionGenerator(TextToImage.tiny(seed=0).pipe)
    >>> mask = PIL.Image.new("L", (64, 64)); mask.paste(255, (0, 0, 32, 64))
    >>> out = regions(bg_prompt="a wooden table", fg_prompts=["a toy robot"], masks=[mask], height=64, width=64,
    ...               num_inference_steps=2, bootstrapping=1, seed=7)
    >>> out.image.size, out.seed
    ((64, 64), 7)
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline

from lift3d.errors import InvalidInputError
from lift3d.params import SDXL_GUIDANCE_SCALE_RANGE as GUIDANCE_SCALE_RANGE
from lift3d.stages.sdxl.generated import GeneratedImage
from lift3d.stages.sdxl.region_fusion import binary_mask, bootstrap_inputs, decode_masks, fuse_latents, latent_masks

__all__ = ["RegionGenerator", "RegionLatents", "binary_mask", "bootstrap_inputs", "decode_masks", "fuse_latents",
           "latent_masks"]

MAX_SIDE = 2048
"""Largest height/width accepted, pixels (as the SDXL stage)."""

_VAE_BATCH = 4
"""Constant-colour images encoded per VAE call (bounds memory at 1024²)."""


@dataclass
class RegionLatents:
    """The denoised latent of a region call (``output_type="latent"``).

    Attributes:
        latents: (1, C, height/f, width/f) in the UNet's dtype and device, f the VAE's factor (SDXL: C=4, f=8),
            in the diffusion space (already multiplied by ``vae.config.scaling_factor``).
        seed: the seed that made it.
    """

    latents: torch.Tensor
    seed: int


@dataclass
class _Conditioning:
    """Text conditioning of the batched UNet call: negatives first (with guidance), then positives."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    guided: bool


class RegionGenerator:
    """MultiDiffusion region generation on a loaded SDXL pipeline.

    Args:
        pipe: the SDXL stage's pipeline (``TextToImage.pipe``). Its modules are shared and never modified; each
            call builds its own ``DDIMScheduler`` from ``pipe.scheduler.config``, so concurrent calls are safe.
            Prompts are encoded with private copies of the tokenizers, one call at a time: a fast tokenizer keeps
            its padding/truncation settings in shared state, which concurrent calls would garble.
            When the VAE is float16 and ``vae.config.force_upcast`` is set (SDXL's VAE overflows in float16), a
            float32 copy of the VAE is made once, on first use, and used for encoding and decoding.
    """

    def __init__(self, pipe: StableDiffusionXLPipeline) -> None:
        self.pipe = pipe
        self._vae32: AutoencoderKL | None = None
        self._vae_lock = threading.Lock()
        tokenizers = {name: copy.deepcopy(getattr(pipe, name)) for name in ("tokenizer", "tokenizer_2")}
        self._text_pipe = StableDiffusionXLPipeline(
            **{**pipe.components, **tokenizers}, add_watermarker=False,
            force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
        self._text_lock = threading.Lock()

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (SDXL: 8; the tiny preset: 2)."""
        return int(self.pipe.vae_scale_factor)

    def __call__(
        self, *, bg_prompt: str, bg_negative: str = "", fg_prompts: Sequence[str],
        fg_negatives: Sequence[str] | None = None, masks: Sequence[PIL.Image.Image], height: int, width: int,
        num_inference_steps: int = 50, bootstrapping: int = 20, guidance_scale: float = 7.5, seed: int,
        output_type: Literal["pil", "latent"] = "pil",
    ) -> GeneratedImage | RegionLatents:
        """Generate one image whose regions follow their own prompts.

        Args:
            bg_prompt: prompt of the whole image, non-empty.
            bg_negative: negative prompt of the background; "" means none (SDXL's zero embedding).
            fg_prompts: one non-empty prompt per region (may be empty: plain DDIM with ``bg_prompt``).
            fg_negatives: one negative prompt per region; None: none.
            masks: one image per region, white = the region, any mode and size (see :func:`binary_mask`).
            height, width: output size, pixels: multiples of 64 (and of the VAE's factor) in [64, 2048].
            num_inference_steps: DDIM steps, 1..1000 (the API's ``ddim_steps``).
            bootstrapping: first steps with constant-colour bootstrapping, 0..num_inference_steps.
            guidance_scale: classifier-free guidance weight, [1, 50]; 1 disables guidance and negative prompts.
            seed: seeds a CPU ``torch.Generator`` (noise, then the bootstrapping colours); same arguments and seed
                give the same image.
            output_type: "pil" for an image, "latent" for the denoised latent (:class:`RegionLatents`).

        Returns:
            :class:`GeneratedImage` with an RGB image of size (width, height), or :class:`RegionLatents`.

        Raises:
            InvalidInputError: counts of ``fg_prompt``/``fg_nprompt``/``masks`` differ, an empty prompt, an
                all-black or too small mask, or an out-of-range parameter (the message names the API field).
        """
        if output_type not in ("pil", "latent"):
            raise ValueError(f"output_type must be 'pil' or 'latent', got {output_type!r}")
        latents = self.denoise_latents(
            bg_prompt=bg_prompt, bg_negative=bg_negative, fg_prompts=fg_prompts, fg_negatives=fg_negatives,
            masks=masks, height=height, width=width, num_inference_steps=num_inference_steps,
            bootstrapping=bootstrapping, guidance_scale=guidance_scale, seed=seed)
        if output_type == "latent":
            return RegionLatents(latents, int(seed))
        return GeneratedImage(self.decode(latents), int(seed))

    @torch.no_grad()
    def denoise_latents(
        self, *, bg_prompt: str, bg_negative: str = "", fg_prompts: Sequence[str],
        fg_negatives: Sequence[str] | None = None, masks: Sequence[PIL.Image.Image], height: int, width: int,
        num_inference_steps: int = 50, bootstrapping: int = 20, guidance_scale: float = 7.5, seed: int,
    ) -> torch.Tensor:
        """The MultiDiffusion denoising loop; arguments and errors as :meth:`__call__`.

        Returns:
            (1, C, height/f, width/f) latent in the diffusion space, the UNet's dtype and device.
        """
        # 1. check inputs
        negatives = self.check_inputs(bg_prompt, bg_negative, fg_prompts, fg_negatives, masks, height, width,
                                      num_inference_steps, bootstrapping, guidance_scale, seed)
        unet = self.pipe.unet
        device, dtype = unet.device, unet.dtype
        shape = (1, int(unet.config.in_channels), height // self.vae_scale_factor, width // self.vae_scale_factor)
        # 2. masks at latent resolution, background first
        binary = [binary_mask(m, height, width, f"masks[{i}]") for i, m in enumerate(masks)]
        weights = latent_masks(binary, shape[2], shape[3], device=device, dtype=dtype)
        # 3. text conditioning of every prompt
        cond = self._encode_prompts([bg_prompt, *fg_prompts], [bg_negative, *negatives], height, width,
                                    guided=guidance_scale > 1)
        # 4. this call's scheduler, noise and bootstrapping backgrounds (clip_sample off: latents are unbounded)
        scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config, clip_sample=False)
        scheduler.set_timesteps(num_inference_steps, device=device)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        latent = noise * scheduler.init_noise_sigma
        bootstrapping = bootstrapping if fg_prompts else 0
        colours = torch.rand((bootstrapping, 3), generator=generator)
        backgrounds = self.colour_latents(colours, height, width) if bootstrapping else None
        # 5. denoise every prompt, step each with DDIM, fuse by the masks
        for step, t in enumerate(scheduler.timesteps):
            inputs = latent.expand(weights.shape[0], -1, -1, -1)
            if step < bootstrapping:
                background = scheduler.add_noise(backgrounds[step:step + 1], noise, t.reshape(1))
                inputs = bootstrap_inputs(inputs, weights, background)
            eps = self._guided_noise(scheduler.scale_model_input(inputs, t), t, cond, guidance_scale)
            stepped = scheduler.step(eps, t, inputs, return_dict=False)[0]
            latent = fuse_latents(stepped, weights)
        return latent

    def check_inputs(
        self, bg_prompt: str, bg_negative: str, fg_prompts: Sequence[str], fg_negatives: Sequence[str] | None,
        masks: Sequence[PIL.Image.Image], height: int, width: int, num_inference_steps: int, bootstrapping: int,
        guidance_scale: float, seed: int,
    ) -> list[str]:
        """Raise :class:`InvalidInputError` naming the API field for any unusable argument; return one negative
        prompt per region ("" where none was given)."""
        if not isinstance(bg_prompt, str) or not bg_prompt.strip():
            raise InvalidInputError("bg_prompt must be a non-empty string, e.g. 'a photo of a wooden table'")
        if not isinstance(bg_negative, str):
            raise InvalidInputError(f"bg_nprompt must be a string, got {type(bg_negative).__name__}")
        negatives = [""] * len(fg_prompts) if fg_negatives is None else list(fg_negatives)
        counts = {"fg_prompt": len(fg_prompts), "masks": len(masks)}
        if fg_negatives is not None:
            counts["fg_nprompt"] = len(negatives)
        if len(set(counts.values())) > 1:
            raise InvalidInputError("fg_prompt, fg_nprompt and masks need one entry per region; got "
                                    + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        for index, (prompt, negative) in enumerate(zip(fg_prompts, negatives)):
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidInputError(f"fg_prompt[{index}] must be a non-empty string, e.g. 'a red toy robot'")
            if not isinstance(negative, str):
                raise InvalidInputError(f"fg_nprompt[{index}] must be a string, got {type(negative).__name__}")
        step = math.lcm(64, self.vae_scale_factor)
        for label, side in (("height", height), ("width", width)):
            if not isinstance(side, int) or side % step or not 64 <= side <= MAX_SIDE:
                raise InvalidInputError(f"{label} must be a multiple of {step} in [64, {MAX_SIDE}], got {side}")
        if not 1 <= num_inference_steps <= 1000:
            raise InvalidInputError(f"ddim_steps must be in [1, 1000], got {num_inference_steps}")
        if not 0 <= bootstrapping <= num_inference_steps:
            raise InvalidInputError(f"bootstrapping must be in [0, ddim_steps={num_inference_steps}], "
                                    f"got {bootstrapping}")
        low, high = GUIDANCE_SCALE_RANGE
        if not low <= guidance_scale <= high:
            raise InvalidInputError(f"guidance_scale must be in [{low:g}, {high:g}] (usual: 5-8), got {guidance_scale}")
        if not isinstance(seed, int) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        return negatives

    # -------------------------------------------------------------------------------------------- helpers
    def _encode_prompts(self, prompts: list[str], negatives: list[str], height: int, width: int, *,
                        guided: bool) -> _Conditioning:
        """Encode each prompt with the pipeline's own ``encode_prompt`` (both text encoders; an empty negative
        gives SDXL's zero embedding when ``force_zeros_for_empty_prompt``) and build SDXL's size/crop time ids
        (original = target = (height, width), crop (0, 0)) with the pipeline's ``_get_add_time_ids``."""
        unet = self.pipe.unet
        # each entry: (embeds, negative embeds or None, pooled, negative pooled or None), batch 1
        with self._text_lock:
            encoded = [self._text_pipe.encode_prompt(prompt, device=unet.device, num_images_per_prompt=1,
                                                     do_classifier_free_guidance=guided,
                                                     negative_prompt=negative or None)
                       for prompt, negative in zip(prompts, negatives)]
        embeds = torch.cat([e[0] for e in encoded])
        pooled = torch.cat([e[2] for e in encoded])
        if guided:
            embeds = torch.cat([*(e[1] for e in encoded), embeds])
            pooled = torch.cat([*(e[3] for e in encoded), pooled])
        time_ids = self.pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=unet.dtype,
                                               text_encoder_projection_dim=int(pooled.shape[-1]))
        return _Conditioning(embeds.to(unet.dtype), pooled.to(unet.dtype),
                             time_ids.to(unet.device).repeat(embeds.shape[0], 1), guided)

    def _guided_noise(self, inputs: torch.Tensor, t: torch.Tensor, cond: _Conditioning,
                      guidance_scale: float) -> torch.Tensor:
        """One batched UNet call for every prompt (unconditional halves first); returns the guided ε (n, C, h, w)
        (Ho & Salimans 2022: ε_u + g (ε_c − ε_u))."""
        model_input = torch.cat([inputs, inputs]) if cond.guided else inputs
        eps = self.pipe.unet(model_input, t, encoder_hidden_states=cond.embeds,
                             added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids},
                             return_dict=False)[0]
        if not cond.guided:
            return eps
        uncond, text = eps.chunk(2)
        return uncond + guidance_scale * (text - uncond)

    def _vae(self) -> AutoencoderKL:
        """The VAE to run: the pipeline's, or its float32 copy when float16 would overflow (``force_upcast``)."""
        vae = self.pipe.vae
        if vae.dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
            return vae
        with self._vae_lock:
            if self._vae32 is None:
                self._vae32 = copy.deepcopy(vae).to(dtype=torch.float32)
            return self._vae32

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(mean, std) of the VAE's latents when its config has them, else (0, 1)."""
        config = self.pipe.vae.config
        if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
            return 0.0, 1.0
        mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(like.device, like.dtype)
        return mean, torch.tensor(config.latents_std).view(1, -1, 1, 1).to(like.device, like.dtype)

    @torch.no_grad()
    def colour_latents(self, colours: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Diffusion-space latents of constant-colour images (the bootstrapping backgrounds).

        Args:
            colours: (k, 3) RGB in [0, 1].
            height, width: image size, pixels.

        Returns:
            (k, C, height/f, width/f) in the UNet's dtype and device: the VAE posterior's mean, then
            ``(z − latents_mean) · scaling_factor / latents_std`` (SDXL: ``z · 0.13025``). The mean, not a sample
            as in the authors' code: the posterior's noise is negligible next to the diffusion noise added after.
        """
        vae = self._vae()
        pixels = (colours * 2 - 1).to(device=vae.device, dtype=vae.dtype)[:, :, None, None]
        parts = [vae.encode(chunk.expand(-1, -1, height, width).contiguous()).latent_dist.mean
                 for chunk in pixels.split(_VAE_BATCH)]
        latents = torch.cat(parts)
        mean, std = self._latent_stats(latents)
        latents = (latents - mean) * float(self.pipe.vae.config.scaling_factor) / std
        return latents.to(device=self.pipe.unet.device, dtype=self.pipe.unet.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> PIL.Image.Image:
        """Decode a (1, C, h, w) diffusion-space latent to an RGB image of size (w·f, h·f), as the SDXL pipeline
        does (undo the scaling, VAE decode, the pipeline's watermarker if any, postprocess)."""
        vae = self._vae()
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        mean, std = self._latent_stats(latents)
        latents = latents * std / float(vae.config.scaling_factor) + mean
        image = vae.decode(latents, return_dict=False)[0]
        if getattr(self.pipe, "watermark", None) is not None:
            image = self.pipe.watermark.apply_watermark(image)
        return self.pipe.image_processor.postprocess(image, output_type="pil")[0].convert("RGB")
