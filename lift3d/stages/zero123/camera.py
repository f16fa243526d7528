"""Conditioning pieces of Stable Zero123: relative camera embedding, CLIP preprocessing, camera projection.

Examples:
    >>> camera_embedding([30.0], [0.0], 5.0, 0.0)   # 25° higher than the conditioning view, same azimuth
    tensor([[-0.4363,  0.0000,  1.0000,  1.4835]])
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor

__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIPCameraProjection", "camera_embedding", "clip_preprocess"]

# OpenAI CLIP image normalisation (github.com/openai/CLIP, clip/clip.py `_transform`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def camera_embedding(
    elevation_deg: Tensor | list[float],
    azimuth_deg: Tensor | list[float],
    cond_elevation_deg: float,
    cond_azimuth_deg: float,
) -> Tensor:
    """Stable Zero123's 4-d relative camera for target views seen from a conditioning view.

    ``[Δpolar (rad), sin Δazimuth, cos Δazimuth, polar of the conditioning view (rad)]`` with polar = 90° − elevation,
    Δpolar = polar(target) − polar(cond), Δazimuth = azimuth(target) − azimuth(cond). The camera distance is not
    part of Stable Zero123's embedding (original Zero123 used it as the 4th entry). Source: threestudio
    ``stable_zero123_guidance.py`` ``get_cond``.

    Args:
        elevation_deg: target elevations, shape (B,), degrees from the xy-plane (see ``nerf/cameras.py``).
        azimuth_deg: target azimuths, shape (B,), degrees.
        cond_elevation_deg, cond_azimuth_deg: the conditioning view, degrees.

    Returns:
        Tensor with shape (B, 4), float32.

    Examples:
        >>> camera_embedding([5.0, 30.0], [0.0, 0.0], cond_elevation_deg=5.0, cond_azimuth_deg=0.0)
        tensor([[ 0.0000,  0.0000,  1.0000,  1.4835],
                [-0.4363,  0.0000,  1.0000,  1.4835]])
    """
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1)
    azimuth = torch.as_tensor(azimuth_deg, dtype=torch.float32, device=elevation.device).reshape(-1)
    delta_polar = torch.deg2rad((90.0 - elevation) - (90.0 - cond_elevation_deg))
    delta_azimuth = torch.deg2rad(azimuth - cond_azimuth_deg)
    cond_polar = torch.full_like(elevation, math.radians(90.0 - cond_elevation_deg))
    return torch.stack([delta_polar, torch.sin(delta_azimuth), torch.cos(delta_azimuth), cond_polar], dim=-1)


def clip_preprocess(image: Tensor, size: int) -> Tensor:
    """Batched CLIP image preprocessing as Stable Zero123 was trained with: latent-diffusion's
    ``FrozenClipImageEmbedder.preprocess`` (``ldm/modules/encoders/modules.py``): bicubic resize to ``size``² with
    ``align_corners=True`` and no antialiasing (kornia), no clamping of the bicubic overshoot, then OpenAI CLIP's
    mean/std (``clip/clip.py``).

    Args:
        image: Tensor with shape (B, 3, H, W), RGB in [0, 1]; square images (else they are stretched).
        size: the encoder's ``image_size`` (224 for ViT-L/14).

    Returns:
        Tensor with shape (B, 3, size, size), on ``image``'s device and dtype.
    """
    resized = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=True, antialias=False)
    mean = torch.tensor(CLIP_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (resized - mean) / std


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """Linear map from [CLIP image embedding, 4-d camera] to the UNet's cross-attention width.

    Config names and the ``proj`` parameter follow ``ashawkey/stable-zero123-diffusers`` so its weights load as is.

    Args:
        embedding_dim: CLIP image-embedding width D (768 for ViT-L/14).
        additional_embeddings: camera entries appended, 4 (see :func:`camera_embedding`).
    """

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: Tensor) -> Tensor:
        """(..., D + 4) → (..., D)."""
        return self.proj(embedding)

    @classmethod
    def from_cc_projection(cls, folder: str | os.PathLike[str]) -> CLIPCameraProjection:
        """Load the community diffusers Zero1to3 ``cc_projection`` folder (``projection.weight``/``.bias``)."""
        folder = Path(folder)
        weights = folder / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            state = safetensors.torch.load_file(weights)
        else:
            state = torch.load(folder / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
        out_dim, in_dim = state["projection.weight"].shape
        module = cls(embedding_dim=out_dim, additional_embeddings=in_dim - out_dim)
        module.proj.load_state_dict({"weight": state["projection.weight"], "bias": state["projection.bias"]})
        return module
