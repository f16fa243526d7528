"""Full-size SDXL, Stable Zero123 and TripoSR architectures with seeded RANDOM weights, for timing and memory only.

The components are the classes the real loaders return (diffusers ``UNet2DConditionModel`` / ``AutoencoderKL``,
transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``,
:class:`~lift3d.stages.zero123.CLIPCameraProjection`), built from the published configurations below, wrapped in
the project's own stages (:class:`~lift3d.stages.sdxl.text_to_image.TextToImage`,
:class:`~lift3d.stages.zero123.Zero123`) with ``random_weights=True``. Every matrix has its real shape, so
FLOPs, kernels and memory are those of the real models; the outputs are noise.

Tokenizers are the in-memory tiny CLIP tokenizer (:func:`lift3d.stages.tiny.tiny_clip_tokenizer`, 559 ids): the
text encoders keep CLIP's real 49408-row embedding (its memory counts), and every tiny id is inside it.

Sources of the numbers (public configs, read with the project's code-search tools; file paths as published):

- SDXL UNet: ``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json`` (copies that record that repo
  as ``_name_or_path``, e.g. huggingface.co/jffacevedo/flax_lcm_unet ``config.json``).
- SDXL VAE: ``stabilityai/stable-diffusion-xl-base-1.0`` ``vae_decoder/config.json`` and
  ``common-canvas/CommonCanvas-XL-NC`` ``vae/config.json`` ("Duplicate from stabilityai/stable-diffusion-xl-base-1.0").
- SDXL text encoders: ``text_encoder/config.json`` and ``text_encoder_2/config.json`` of the same repo (copies
  recording it as ``_name_or_path``, e.g. huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1).
- Stable Zero123 UNet / VAE: ``cvlab-columbia/zero123`` ``zero123/configs/sd-objaverse-finetune-c_concat-256.yaml``
  (in_channels 8, model_channels 320, channel_mult [1, 2, 4, 4], num_heads 8, context_dim 768, image_size 32,
  VAE ch 128 × [1, 2, 4, 4], scale_factor 0.18215), which is the SD 1.x UNet of e.g.
  ``CompVis/stable-diffusion-v1-3`` ``unet/config.json`` with 8 input channels.
- Camera projection 772 → 768: ``cvlab-columbia/zero123`` ``zero123/ldm/models/diffusion/ddpm.py``
  (``self.cc_projection = nn.Linear(772, 768)``).
- CLIP ViT-L/14 vision tower: ``openai/clip-vit-large-patch14`` ``config.json`` ``vision_config`` (copies, e.g.
  ``kandinsky-community/kandinsky-2-1-prior`` ``image_encoder/config.json``).
- TripoSR: ``stabilityai/TripoSR`` ``config.yaml``, typed as
  :meth:`lift3d.stages.feedforward.triposr.TripoSRConfig.full` (its module docstring lists the numbers).

Examples:
    >>> unet = build_module(lambda: UNet2DConditionModel(**SDXL_UNET), "meta", torch.float16, seed=0)
    >>> round(parameter_count(unet) / 1e9, 2)
    2.57
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from lift3d.stages.sdxl.text_to_image import TextToImage
from lift3d.stages.tiny import SD_SCHEDULE, tiny_clip_tokenizer
from lift3d.stages.zero123 import CLIPCameraProjection, Zero123

__all__ = [
    "CLIP_VOCAB_SIZE",
    "SDXL_TEXT_ENCODER",
    "SDXL_TEXT_ENCODER_2",
    "SDXL_UNET",
    "SDXL_VAE",
    "SD_VAE",
    "ZERO123_IMAGE_ENCODER",
    "ZERO123_UNET",
    "build_module",
    "fullsize_feedforward",
    "fullsize_text_to_image",
    "fullsize_zero123",
    "parameter_count",
]

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

CLIP_VOCAB_SIZE = 49408
"""Rows of both SDXL text encoders' token embedding (``vocab_size`` in both text-encoder configs)."""

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json. 2816 = 6 size/crop ids × 256 + the 1280-d pooled
# embedding of text_encoder_2.
SDXL_UNET: MappingProxyType = MappingProxyType({
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
})

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (force_upcast: the pipeline decodes in fp32, as with
# the real weights).
SDXL_VAE: MappingProxyType = MappingProxyType({
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
})

# stabilityai/stable-diffusion-xl-base-1.0 text_encoder/config.json: OpenAI CLIP ViT-L/14 text tower.
SDXL_TEXT_ENCODER: MappingProxyType = MappingProxyType({
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
})

# stabilityai/stable-diffusion-xl-base-1.0 text_encoder_2/config.json: OpenCLIP ViT-bigG/14 text tower with its
# 1280 → 1280 projection.
SDXL_TEXT_ENCODER_2: MappingProxyType = MappingProxyType({
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 1280,
})

# Stable Zero123 = Zero-1-to-3's LDM UNet (cvlab-columbia/zero123 sd-objaverse-finetune-c_concat-256.yaml): the
# SD 1.x UNet with 8 input channels (noisy latent + c_concat latent) and 32² latents (256² images). The LDM
# ``num_heads: 8`` is what diffusers' SD 1.x configs call ``attention_head_dim: 8``.
ZERO123_UNET: MappingProxyType = MappingProxyType({
    "sample_size": 32,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
})

# The SD 1.x KL-f8 autoencoder of the same yaml (ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2, resolution 256).
SD_VAE: MappingProxyType = MappingProxyType({
    **SDXL_VAE,
    "sample_size": 256,
    "scaling_factor": 0.18215,
})

# openai/clip-vit-large-patch14 config.json vision_config, with its 1024 → 768 visual projection.
ZERO123_IMAGE_ENCODER: MappingProxyType = MappingProxyType({
    "image_size": 224,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
})


@contextlib.contextmanager
def _seeded_on(device: torch.device, seed: int) -> Iterator[None]:
    """Build on ``device`` (``torch.device`` context) with the RNGs of the CPU and of ``device`` seeded by ``seed``;
    the caller's RNG states are restored afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with device:
            yield


def build_module(
    factory: Callable[[], ModuleT], device: str | torch.device, dtype: torch.dtype, *, seed: int,
) -> ModuleT:
    """``factory()`` constructed directly on ``device`` with seeded random weights, cast to ``dtype``, in eval
    mode, without gradients. Diffusers attention layers get the SDPA processor (``AttnProcessor2_0``).

    Weights are initialised in float32 on ``device`` and cast right after, one module at a time, so the transient
    float32 copy is at most the largest module (SDXL UNet: ~10 GiB). ``device="meta"`` allocates nothing.
    """
    device = torch.device(device)
    with _seeded_on(device, seed):
        module = factory()
    # nn.Module.to, not diffusers' ModelMixin.to: the latter only adds a warning about fp32-pinned modules (none
    # here) when casting outside from_pretrained.
    module = torch.nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)
    if hasattr(module, "set_attn_processor") and hasattr(module, "attn_processors"):
        module.set_attn_processor(AttnProcessor2_0())
    return module


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def _text_config(spec: Any, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A CLIP text config from ``spec`` whose special-token ids are the tokenizer's (all < ``vocab_size``)."""
    return CLIPTextConfig(
        **spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa",
    )


def fullsize_text_to_image(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0,
) -> TextToImage:
    """SDXL base 1.0's architecture (UNet, VAE, both text encoders) with seeded random weights; 1024² default.

    Raises:
        ValueError: a tokenizer id falls outside the text encoders' embedding (cannot happen with the tiny one).
    """
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    for spec in (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2):
        if len(tokenizer) > spec["vocab_size"]:
            raise ValueError(f"tokenizer has {len(tokenizer)} ids, the text encoder embeds {spec['vocab_size']}")
    pipe = StableDiffusionXLPipeline(
        unet=build_module(lambda: UNet2DConditionModel(**SDXL_UNET), device, dtype, seed=seed),
        vae=build_module(lambda: AutoencoderKL(**SDXL_VAE), device, dtype, seed=seed + 1),
        text_encoder=build_module(lambda: CLIPTextModel(_text_config(SDXL_TEXT_ENCODER, tokenizer)), device, dtype,
                                  seed=seed + 2),
        text_encoder_2=build_module(
            lambda: CLIPTextModelWithProjection(_text_config(SDXL_TEXT_ENCODER_2, tokenizer_2)), device, dtype,
            seed=seed + 3),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json: Euler, SD betas, leading.
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading"),
    )
    return TextToImage(pipe, random_weights=True, source=f"fullsize-random(seed={seed})")


def fullsize_zero123(
    device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0,
    vae_dtype: torch.dtype = torch.float32,
) -> Zero123:
    """Stable Zero123's architecture (8-channel SD 1.x UNet, SD VAE, CLIP ViT-L/14 vision + projection, camera
    projection 772 → 768) with seeded random weights; 256² images, default SDS settings (threestudio). The VAE in
    ``vae_dtype`` (default fp32, as :func:`lift3d.stages.zero123.model.component_dtypes` loads it on CUDA)."""
    image_encoder = build_module(
        lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**ZERO123_IMAGE_ENCODER, attn_implementation="sdpa")),
        device, dtype, seed=seed + 2)
    projection = build_module(
        lambda: CLIPCameraProjection(embedding_dim=ZERO123_IMAGE_ENCODER["projection_dim"], additional_embeddings=4),
        device, dtype, seed=seed + 3)
    return Zero123(
        unet=build_module(lambda: UNet2DConditionModel(**ZERO123_UNET), device, dtype, seed=seed),
        vae=build_module(lambda: AutoencoderKL(**SD_VAE), device, vae_dtype, seed=seed + 1),
        image_encoder=image_encoder,
        clip_camera_projection=projection,
        # The DDIM schedule of lift3d.stages.zero123.weights (step 5 of the conversion recipe).
        scheduler=DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        random_weights=True,
        source=f"fullsize-random(seed={seed})",
    )


def fullsize_feedforward(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float32, seed: int = 0,
                         surface: bool = False) -> Any:
    """TripoSR's architecture (:meth:`TripoSRConfig.full`: DINO ViT-B/16 at 512², 16 transformer blocks over
    3 × 32² triplane tokens of 1024 channels, upsampler to 40 × 64², a 9-layer MLP) with seeded random weights, as
    the :class:`~lift3d.stages.feedforward.triposr.TripoSR` stage, in ``dtype`` (fp32: the reference runs so).

    ``surface``: give the density head the spread the tiny preset gives it (built on the CPU in fp32 first, one
    forward of a random image), so that a field of a random model has a surface at the threshold and marching
    cubes, remeshing and the texture bake run as with real weights. Not with ``device="meta"``.
    """
    from lift3d.stages.feedforward.triposr import TripoSR, TripoSRConfig, TripoSRNetwork
    from lift3d.stages.feedforward.triposr.model import TINY_DENSITY_SPREAD, _spread_density

    if not surface:
        network = build_module(lambda: TripoSRNetwork(TripoSRConfig.full()), device, dtype, seed=seed)
    else:
        network = build_module(lambda: TripoSRNetwork(TripoSRConfig.full()), "cpu", torch.float32, seed=seed)
        _spread_density(network, TINY_DENSITY_SPREAD)  # the tiny preset's rescaling, at full size
        network = network.to(device=device, dtype=dtype)
    return TripoSR(network, source=f"fullsize-random(seed={seed})", random_weights=True)
