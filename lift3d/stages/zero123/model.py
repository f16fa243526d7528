"""The Stable Zero123 stage: conditioning, DDIM novel views, and the SDS gradient for NeRF training.

Stable Zero123 (Stability AI 2023) fine-tunes Zero-1-to-3 (Liu et al., ICCV 2023): a Stable Diffusion UNet whose
input has 8 channels (4 noisy latent + 4 latent of the conditioning image, "c_concat") and whose cross-attention
context is one token, the CLIP ViT-L/14 image embedding of the conditioning image concatenated with a 4-d relative
camera (:func:`camera_embedding`) and projected back to 768 (:class:`CLIPCameraProjection`). Guidance recipe:
threestudio ``threestudio/models/guidance/stable_zero123_guidance.py`` and ``configs/stable-zero123.yaml``.

Weights layout, Hub ids and how to convert the official checkpoint: :mod:`lift3d.stages.zero123.weights`.

Examples:
    >>> model = Zero123.tiny(seed=0)                               # random weights, 32² images
    >>> cond = model.encode_condition(torch.ones(1, 3, 32, 32))    # conditioning view: el 5°, az 0°
    >>> model.novel_views([5.0], [90.0], num_inference_steps=2, seed=0, condition=cond)[0].size
    (32, 32)
    >>> out = model.sds(torch.rand(2, 3, 64, 64), torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]),
    ...                 torch.tensor([3.8, 3.8]), step=0, condition=cond, generator=torch.Generator().manual_seed(0))
    >>> out.grad_rgb.shape
    torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

import logging
import os

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import CLIPVisionModelWithProjection

from lift3d.errors import InvalidInputError
from lift3d.stages.tiny import seeded
from lift3d.stages.zero123.camera import CLIPCameraProjection, camera_embedding, clip_preprocess
from lift3d.stages.zero123.condition import ConditionEmbedding
from lift3d.stages.zero123.sds import ScoreDistillation, SDSConfig
from lift3d.stages.zero123.tiny import tiny_zero123_components
from lift3d.stages.zero123.weights import load_components, save_components

__all__ = ["Zero123", "component_dtypes"]

logger = logging.getLogger(__name__)


def component_dtypes(device: str | torch.device) -> tuple[torch.dtype, torch.dtype]:
    """``(UNet, CLIP and camera projection dtype, VAE dtype)`` that :meth:`Zero123.from_pretrained` loads on
    ``device``: on CUDA the UNet in fp16 and the VAE in fp32, elsewhere fp32 for both.

    Decided by measurement (``benchmarks/sds_precision.py``, CPU): the SDS pixel gradient (d loss / d rendered RGB)
    with each component in fp16 / bf16 / fp32 against all-fp32, same requests and draws; bound: smallest cosine
    ≥ 0.999; the cheapest dtype within it wins.

    Tiny model, whole ``sds_batch`` path, 6 requests × 4 views (smallest cosine / largest relative error)::

        VAE ↓ UNet → fp32                  bf16                  fp16
        fp32         1.000000 / 0           0.999746 / 2.3e-02    0.999997 / 2.5e-03
        bf16         0.999395 / 3.5e-02     0.999181 / 4.1e-02    0.999391 / 3.5e-02
        fp16         0.999990 / 4.5e-03     0.999774 / 2.1e-02    0.999987 / 5.2e-03

    The VAE encoder path alone, one view, latent gradient 0.5·N(0, 1)/12 × scale (cosine): the tiny VAE at 32²
    (native kernels; median |pixel gradient| 6.3e-3 × scale) and the full-size SD VAE at 256² (random weights;
    fp16 and bf16 emulated by rounding every module's output and gradient; median 1.2e-3 × scale)::

        scale              1          0.1        0.01       0.001      1e-4
        tiny fp16          0.999991   -          0.999703   0.971114   0.326115
        tiny bf16          0.999518   -          0.999473   0.999501   0.999501
        full-size fp16     0.999969   0.999905   0.993904   0.672131   -
        full-size bf16     0.998652   0.998649   0.998650   0.998662   -

    UNet: fp16 (cosine 0.999997; it runs without a graph, so no gradient goes through its precision). VAE
    encoder, whose backward carries the pixel gradient: fp32. fp16 passes for large gradients, but its range loses
    small ones (full size: cosine 0.994 when the median pixel gradient is 1e-5, as a converging denoiser gives);
    bf16 keeps the range but not the bound (0.9987) at full size. threestudio's
    stable-zero123 guidance runs the whole model in fp32 (``weights_dtype = torch.float32``). Cost: the 84M-parameter VAE in fp32 (+0.16 GiB) and one
    view's encoder graph in fp32 (about 0.9 GiB) during the backward (:attr:`SDSConfig.encoder_chunk_views`).
    """
    if torch.device(device).type == "cuda":
        return torch.float16, torch.float32
    return torch.float32, torch.float32

class Zero123(ScoreDistillation):
    """Stable Zero123 novel-view model and SDS guidance.

    Args:
        unet: UNet2DConditionModel with ``in_channels=8``, ``out_channels=4``, cross-attention width D.
        vae: AutoencoderKL with 4 latent channels.
        image_encoder: CLIPVisionModelWithProjection whose ``image_embeds`` have width D.
        clip_camera_projection: (D + 4) → D projection.
        scheduler: DDIMScheduler; copied per :meth:`novel_views` call, never mutated.
        random_weights: True for :meth:`tiny` models.
        source: where the weights came from.
        sds_config: SDS settings; default :class:`SDSConfig` (threestudio stable-zero123 recipe) with
            ``guidance_resolution`` = :attr:`resolution`.

    The conditioning view is encoded by :meth:`encode_condition` and passed to every call (``condition=``): the
    model keeps no per-job state, so one instance serves concurrent jobs.

    Raises:
        ValueError: if the components' channel counts or widths do not fit together.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        clip_camera_projection: CLIPCameraProjection,
        scheduler: DDIMScheduler,
        *,
        random_weights: bool,
        source: str,
        sds_config: SDSConfig | None = None,
    ) -> None:
        self.unet, self.vae, self.image_encoder = unet.eval(), vae.eval(), image_encoder.eval()
        self.clip_camera_projection, self.scheduler = clip_camera_projection.eval(), scheduler
        self.random_weights, self.source = random_weights, source
        self.sds_config = sds_config or SDSConfig(guidance_resolution=self.resolution)
        self._check_components()
        for module in self._modules():
            module.requires_grad_(False)
        if random_weights:
            logger.warning("Zero123 uses random weights (%s): outputs are noise, not real views", source)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "ashawkey/stable-zero123-diffusers",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype | None = None,
    ) -> Zero123:
        """Load from a local directory or Hub id in diffusers layout (:mod:`lift3d.stages.zero123.weights`).

        Repos with this layout, per public code (unverified against the Hub): ``ashawkey/stable-zero123-diffusers``
        (``clip_camera_projection/``), ``kxic/stable-zero123`` (community Zero1to3 ``cc_projection/``).

        Args:
            name_or_path: directory or Hub repo id.
            device: torch device.
            dtype: weight dtype of the UNet, CLIP image encoder and camera projection; default
                :func:`component_dtypes` (fp16 on CUDA, fp32 elsewhere).
            vae_dtype: weight dtype of the VAE, whose encoder's backward carries the SDS pixel gradient; default
                :func:`component_dtypes` (fp32).

        Raises:
            ModelNotFoundError: within seconds when the model or one of its sub-folders is missing.
        """
        default, default_vae = component_dtypes(device)
        components = load_components(name_or_path, dtype or default, vae_dtype or default_vae)
        return cls(**components, random_weights=False, source=os.fspath(name_or_path)).to(device)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu") -> Zero123:
        """The same classes from tiny configs (32² images, width 32), random weights fixed by ``seed``; offline."""
        with seeded(seed):
            components = tiny_zero123_components()
        model = cls(**components, random_weights=True, source=f"tiny(seed={seed})")
        return model.to(device)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write every component (safetensors) and ``model_index.json``; loadable with :meth:`from_pretrained`."""
        save_components(directory, unet=self.unet, vae=self.vae, image_encoder=self.image_encoder,
                        clip_camera_projection=self.clip_camera_projection, scheduler=self.scheduler)

    def to(self, device: str | torch.device) -> Zero123:
        """Move every module to ``device`` (dtype unchanged); returns self."""
        for module in self._modules():
            module.to(device)
        return self

    def _modules(self) -> tuple[torch.nn.Module, ...]:
        return self.unet, self.vae, self.image_encoder, self.clip_camera_projection

    def _check_components(self) -> None:
        width = self.clip_camera_projection.config.embedding_dim
        if self.unet.config.in_channels != 2 * self.vae.config.latent_channels:
            raise ValueError(f"unet.in_channels must be 2 × vae latent channels (noisy + c_concat), got "
                             f"{self.unet.config.in_channels} and {self.vae.config.latent_channels}")
        if self.unet.config.cross_attention_dim != width or self.image_encoder.config.projection_dim != width:
            raise ValueError(f"unet cross_attention_dim ({self.unet.config.cross_attention_dim}), image_encoder "
                             f"projection_dim ({self.image_encoder.config.projection_dim}) and the camera "
                             f"projection width ({width}) must be equal")
        if self.sds_config.guidance_resolution != self.resolution:
            raise ValueError(f"sds_config.guidance_resolution ({self.sds_config.guidance_resolution}) must equal the "
                             f"model resolution ({self.resolution}): c_concat latents are encoded at that size")

    # ------------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (VAE blocks − 1) (8 for the SD VAE, 2 for tiny)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image side, pixels: UNet sample size × VAE factor (256 for Stable Zero123, 32 for tiny)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def encode_condition(
        self, image: Tensor, elevation_deg: float = 5.0, azimuth_deg: float = 0.0, camera_distance: float = 3.8,
    ) -> ConditionEmbedding:
        """Encode the conditioning view: CLIP embedding (cross-attention) and unscaled VAE mode (c_concat).

        Defaults are threestudio ``configs/stable-zero123.yaml`` (``default_elevation_deg`` 5,
        ``default_azimuth_deg`` 0, ``default_camera_distance`` 3.8).

        Args:
            image: Tensor with shape (1, 3, H, W), RGB in [0, 1], object composited on white; resized to
                :attr:`resolution` (antialiased bilinear) for the VAE, to the encoder's size for CLIP.
            elevation_deg, azimuth_deg: the camera that saw ``image``, degrees (``nerf/cameras.py`` conventions).
            camera_distance: scene units; kept in the result only.

        Returns:
            A :class:`ConditionEmbedding` on the model's device (``.cpu()`` it to send it elsewhere).

        Raises:
            InvalidInputError: wrong shape, dtype or value range.
        """
        # 1. check inputs
        self._check_image(image)
        # 2. resize to the model's resolution
        image = image.to(self.device, torch.float32)
        image = F.interpolate(image, size=(self.resolution,) * 2, mode="bilinear", antialias=True, align_corners=False)
        # 3. encode: CLIP embedding for cross-attention, unscaled VAE mode for c_concat
        pixels = clip_preprocess(image, self.image_encoder.config.image_size).to(self.dtype)
        image_embeds = self.image_encoder(pixel_values=pixels).image_embeds[:, None]
        latents = self.vae.encode((image * 2.0 - 1.0).to(self.vae.dtype)).latent_dist.mode()
        return ConditionEmbedding(image_embeds, latents, float(elevation_deg), float(azimuth_deg),
                                  float(camera_distance))

    @staticmethod
    def _check_image(image: Tensor) -> None:
        if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[:2] != (1, 3):
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InvalidInputError(f"condition image must be a tensor of shape (1, 3, H, W), got {shape}")
        if not image.is_floating_point() or min(image.shape[2:]) < 8:
            raise InvalidInputError("condition image must be float RGB in [0, 1] and at least 8×8 pixels")
        if float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
            raise InvalidInputError("condition image values must lie in [0, 1] (divide uint8 images by 255)")

    def _context(
        self, condition: ConditionEmbedding, elevation_deg: Tensor, azimuth_deg: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cross-attention context (2B, 1, D) and c_concat (2B, 4, h, w), unconditional half first.

        The unconditional branch zeros the *projected* CLIP embedding and the c_concat latent (threestudio).
        """
        camera = camera_embedding(elevation_deg, azimuth_deg, condition.elevation_deg, condition.azimuth_deg)
        batch = camera.shape[0]
        clip = condition.image_embeds.to(self.device, self.dtype).expand(batch, -1, -1)
        camera = camera[:, None].to(self.device, self.dtype)
        context = self.clip_camera_projection(torch.cat([clip, camera], dim=-1))
        concat = condition.latents.to(self.device, self.dtype).expand(batch, -1, -1, -1)
        return torch.cat([torch.zeros_like(context), context]), torch.cat([torch.zeros_like(concat), concat])

    def _guided_noise(self, noisy: Tensor, timesteps: Tensor, context: Tensor, concat: Tensor, scale: float) -> Tensor:
        """Classifier-free guided ε̂ (Ho & Salimans 2022) in float32; ``noisy`` (B, 4, h, w), ``timesteps`` (B,)."""
        model_input = torch.cat([torch.cat([noisy] * 2).to(self.dtype), concat], dim=1)
        noise = self.unet(model_input, torch.cat([timesteps] * 2), encoder_hidden_states=context).sample.float()
        uncond, cond = noise.chunk(2)
        return uncond + scale * (cond - uncond)

    # ------------------------------------------------------------------------------------------ novel views
    @torch.no_grad()
    def novel_views(
        self,
        elevations_deg: list[float],
        azimuths_deg: list[float],
        *,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        seed: int,
        condition: ConditionEmbedding,
    ) -> list[PIL.Image.Image]:
        """Sample one image per target camera with DDIM (eta 0) and classifier-free guidance.

        Args:
            elevations_deg, azimuths_deg: absolute target cameras, degrees, same length B ≥ 1, in the frame of
                the conditioning camera (only differences to it matter, see :func:`camera_embedding`).
            num_inference_steps: DDIM steps, 1..1000.
            guidance_scale: CFG weight ≥ 0 (threestudio uses 3 for Stable Zero123).
            seed: seeds the initial noise (CPU generator): same seed → identical images.
            condition: the conditioning view (:meth:`encode_condition`).

        Returns:
            B RGB ``PIL.Image`` of side :attr:`resolution` (256 for the real model).

        Raises:
            InvalidInputError: mismatched lists or out-of-range values.
        """
        # 1. check inputs
        elevation, azimuth = self._check_views(elevations_deg, azimuths_deg, num_inference_steps, guidance_scale)
        # 2. conditioning for both CFG branches
        context, concat = self._context(condition, elevation, azimuth)
        # 3. initial noise
        side = self.resolution // self.vae_scale_factor
        shape = (len(elevation), self.vae.config.latent_channels, side, side)
        latents = randn_tensor(shape, generator=torch.Generator().manual_seed(int(seed)), device=self.device,
                               dtype=torch.float32)
        # 4. DDIM loop on a private scheduler copy (set_timesteps mutates it)
        latents = self._denoise(latents, context, concat, num_inference_steps, guidance_scale)
        # 5. decode
        return self._decode(latents)

    @staticmethod
    def _check_views(elevations: list[float], azimuths: list[float], steps: int, scale: float) -> tuple[Tensor, Tensor]:
        elevation = torch.as_tensor(elevations, dtype=torch.float32).reshape(-1)
        azimuth = torch.as_tensor(azimuths, dtype=torch.float32).reshape(-1)
        if elevation.numel() == 0 or elevation.shape != azimuth.shape:
            raise InvalidInputError(f"need as many elevations as azimuths (≥ 1), got {elevation.numel()} and "
                                    f"{azimuth.numel()}")
        if not torch.isfinite(elevation).all() or float(elevation.abs().max()) >= 90:
            raise InvalidInputError("elevations must be finite degrees strictly inside (-90, 90)")
        if not torch.isfinite(azimuth).all():
            raise InvalidInputError("azimuths must be finite degrees")
        if not 1 <= steps <= 1000:
            raise InvalidInputError(f"num_inference_steps must be in [1, 1000], got {steps}")
        if not 0 <= scale <= 50:
            raise InvalidInputError(f"guidance_scale must be in [0, 50] (Stable Zero123 uses 3), got {scale}")
        return elevation, azimuth

    def _denoise(self, latents: Tensor, context: Tensor, concat: Tensor, steps: int, scale: float) -> Tensor:
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        for t in scheduler.timesteps:
            timesteps = t.expand(latents.shape[0]).to(self.device)
            noise = self._guided_noise(latents, timesteps, context, concat, scale)
            latents = scheduler.step(noise, t, latents, eta=0.0).prev_sample
        return latents

    def _decode(self, latents: Tensor) -> list[PIL.Image.Image]:
        images = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        images = (images.float() * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [PIL.Image.fromarray(np.round(image * 255).astype(np.uint8), mode="RGB") for image in images]
