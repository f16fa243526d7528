"""The tiny Stable Zero123: the real component classes from small configs, random weights (offline)."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from lift3d.stages.tiny import SD_SCHEDULE, tiny_vae
from lift3d.stages.zero123.camera import CLIPCameraProjection

__all__ = ["tiny_zero123_components"]


def tiny_zero123_components() -> dict[str, Any]:
    """Components for :class:`~lift3d.stages.zero123.model.Zero123` with tiny random weights (call inside
    :func:`~lift3d.stages.tiny.seeded`).

    UNet with 8 input channels (4 noisy + 4 conditioning latent), 4 outputs, (32, 64) channels, cross-attention
    width 32, head dim 8, 16² latents; the 2-block VAE (factor 2) so images are 32²; a CLIP vision tower with 32²
    input, patch 8, hidden and projection width 32; camera projection 36 → 32.
    """
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = tiny_vae()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
        )
    )
    projection = CLIPCameraProjection(embedding_dim=32, additional_embeddings=4)
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "clip_camera_projection": projection,
        "scheduler": scheduler,
    }
