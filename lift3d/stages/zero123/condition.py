"""What Stable Zero123 keeps of the conditioning image, as a value that can travel between processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ConditionEmbedding"]


@dataclass
class ConditionEmbedding:
    """The encoded conditioning view of one job.

    Attributes:
        image_embeds: Tensor with shape (1, 1, D), CLIP image embedding (D = 768 for the real model).
        latents: Tensor with shape (1, 4, h, w), the VAE posterior *mode*, NOT multiplied by ``scaling_factor``
            (threestudio ``get_img_embeds`` and Zero-1-to-3 both feed the unscaled mode as c_concat).
            A leading dimension of B instead of 1 (one condition per item, e.g. batched across jobs) is accepted by
            :meth:`Zero123.sds_latent_grad`; the pose fields are then shared.
        elevation_deg, azimuth_deg: the conditioning camera, degrees.
        camera_distance: scene units; kept for reference, unused by Stable Zero123.

    Examples:
        >>> condition = model.encode_condition(torch.ones(1, 3, 32, 32))
        >>> condition.cpu().image_embeds.device
        device(type='cpu')
    """

    image_embeds: Tensor
    latents: Tensor
    elevation_deg: float
    azimuth_deg: float
    camera_distance: float

    @property
    def pose(self) -> tuple[float, float]:
        """``(elevation_deg, azimuth_deg)`` of the conditioning camera."""
        return self.elevation_deg, self.azimuth_deg

    def to(self, device: torch.device | str) -> ConditionEmbedding:
        """A copy with both tensors on ``device`` (dtype kept)."""
        return ConditionEmbedding(self.image_embeds.to(device), self.latents.to(device), self.elevation_deg,
                                  self.azimuth_deg, self.camera_distance)

    def cpu(self) -> ConditionEmbedding:
        """A copy on the CPU: what a model deployment returns, so that no CUDA tensor is pickled."""
        return self.to("cpu")

    @staticmethod
    def stack(conditions: list[ConditionEmbedding], sizes: list[int]) -> ConditionEmbedding:
        """One condition per item: ``conditions[i]`` repeated ``sizes[i]`` times along the batch dimension.

        All conditions must share one pose (the first one's is kept); tensors go to the first one's device.

        Raises:
            ValueError: empty input, mismatched lengths or different poses.
        """
        if not conditions or len(conditions) != len(sizes):
            raise ValueError(f"stack needs one size per condition, got {len(conditions)} and {len(sizes)}")
        if any(c.pose != conditions[0].pose for c in conditions):
            raise ValueError("stack: conditions with different reference poses cannot share one batch")
        device = conditions[0].latents.device
        return ConditionEmbedding(
            torch.cat([c.image_embeds.to(device).expand(n, -1, -1) for c, n in zip(conditions, sizes)]),
            torch.cat([c.latents.to(device).expand(n, -1, -1, -1) for c, n in zip(conditions, sizes)]),
            conditions[0].elevation_deg, conditions[0].azimuth_deg, conditions[0].camera_distance,
        )
