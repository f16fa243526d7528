"""Stable Zero123 weights on disk: the diffusers layout, which Hub repos have it, and how to convert the official
checkpoint.

Layout read by :func:`load_components` (:meth:`Zero123.from_pretrained`): ``model_index.json`` plus sub-folders
``unet`` (UNet2DConditionModel), ``vae`` (AutoencoderKL), ``image_encoder`` (transformers
CLIPVisionModelWithProjection), ``clip_camera_projection`` (:class:`CLIPCameraProjection`, ``proj`` Linear
772 → 768) and ``scheduler`` (DDIMScheduler). Public code (DreamGaussian ``guidance/zero123_utils.py``,
stable-dreamfusion) loads ``ashawkey/stable-zero123-diffusers`` with this layout. The community diffusers
Zero1to3 layout, with ``cc_projection`` (a ``projection`` Linear) instead of ``clip_camera_projection``, is
accepted too; public code loads ``kxic/stable-zero123`` that way. Both ids are unverified here (no Hub access).

Converting the official ``stabilityai/stable-zero123`` ``stable_zero123.ckpt`` (latent-diffusion checkpoint, config
``sd-objaverse-finetune-c_concat-256.yaml``), key prefixes of its ``state_dict``:

1. ``model.diffusion_model.*`` → ``unet`` with diffusers' ``convert_ldm_unet_checkpoint`` (``in_channels=8``,
   ``cross_attention_dim=768``, ``sample_size=32``);
2. ``first_stage_model.*`` → ``vae`` with ``convert_ldm_vae_checkpoint`` (the SD 1.x VAE);
3. ``cc_projection.weight`` / ``.bias`` → ``clip_camera_projection`` ``proj.weight`` / ``proj.bias``;
4. ``cond_stage_model.*`` is the frozen OpenAI CLIP ViT-L/14: take any diffusers-format copy of its vision tower
   with projection (e.g. ``image_encoder`` of ``lambdalabs/sd-image-variations-diffusers``);
5. scheduler: DDIM, 1000 steps, scaled-linear betas 0.00085–0.012, ``clip_sample=False``,
   ``set_alpha_to_one=False``, ``steps_offset=1``.

``lift3d convert-zero123 CKPT OUT`` (:mod:`lift3d.stages.zero123.convert`) does these steps, with the EMA UNet
weights by default, and writes the layout above.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPVisionModelWithProjection

from lift3d.stages.loading import (
    diffusers_dtype,
    loading_errors,
    model_not_found,
    resolve_pretrained,
    transformers_dtype,
)
from lift3d.stages.zero123.camera import CLIPCameraProjection

__all__ = ["LAYOUT_HINT", "load_components", "save_components"]

LAYOUT_HINT = ("Zero123 needs a diffusers-layout directory with model_index.json, unet/, vae/, image_encoder/, "
               "scheduler/ and clip_camera_projection/ (or cc_projection/), e.g. ashawkey/stable-zero123-diffusers.")


def load_components(name_or_path: str | os.PathLike[str], dtype: torch.dtype, vae_dtype: torch.dtype | None = None,
                    ) -> dict[str, Any]:
    """Resolve ``name_or_path`` (local directory or Hub id) and load the five components, weights in ``dtype``
    (the VAE in ``vae_dtype``, default ``dtype``).

    Returns:
        Keyword arguments for :class:`Zero123` (``unet``, ``vae``, ``image_encoder``, ``clip_camera_projection``,
        ``scheduler``), on the CPU.

    Raises:
        ModelNotFoundError: within seconds when the model, a sub-folder or a weight file is missing.
    """
    required = ("model_index.json", "unet", "vae", "image_encoder", "scheduler")
    path = resolve_pretrained(name_or_path, required=required, hint=LAYOUT_HINT)
    name = os.fspath(name_or_path)
    with loading_errors(name, path, LAYOUT_HINT):
        return {
            "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", **diffusers_dtype(dtype)),
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", **diffusers_dtype(vae_dtype or dtype)),
            "image_encoder": CLIPVisionModelWithProjection.from_pretrained(path / "image_encoder",
                                                                           **transformers_dtype(dtype)),
            "clip_camera_projection": _load_projection(name, path, dtype),
            "scheduler": DDIMScheduler.from_pretrained(path, subfolder="scheduler"),
        }


def _load_projection(name: str, path: Path, dtype: torch.dtype) -> CLIPCameraProjection:
    if (path / "clip_camera_projection").is_dir():
        return CLIPCameraProjection.from_pretrained(path, subfolder="clip_camera_projection", **diffusers_dtype(dtype))
    if (path / "cc_projection").is_dir():
        return CLIPCameraProjection.from_cc_projection(path / "cc_projection").to(dtype=dtype)
    raise model_not_found(name, "neither clip_camera_projection/ nor cc_projection/ found", str(path), LAYOUT_HINT)


def save_components(
    directory: str | os.PathLike[str], *, unet: UNet2DConditionModel, vae: AutoencoderKL,
    image_encoder: CLIPVisionModelWithProjection, clip_camera_projection: CLIPCameraProjection,
    scheduler: DDIMScheduler,
) -> None:
    """Write the components (safetensors) and ``model_index.json`` into ``directory`` (the layout that
    :func:`load_components` reads)."""
    directory = Path(directory)
    for name, module in (("unet", unet), ("vae", vae), ("clip_camera_projection", clip_camera_projection)):
        module.save_pretrained(directory / name, safe_serialization=True)
    image_encoder.save_pretrained(directory / "image_encoder")
    scheduler.save_pretrained(directory / "scheduler")
    index = {
        "_class_name": "Zero123",
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "clip_camera_projection": ["lift3d.stages.zero123", "CLIPCameraProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
