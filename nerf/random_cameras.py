"""Random training cameras and the resolution/batch schedule of threestudio's image-to-3D recipe.

Source of the defaults: threestudio ``configs/stable-zero123.yaml`` (``data.random_camera``) and the sampling
rules of ``threestudio/data/uncond.py`` (half of the batches draw elevation uniformly in degrees, half uniformly
on the sphere, so high elevations are not over-represented).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from nerf.cameras import CameraBatch

__all__ = ["RandomCameraConfig", "RandomCameraSampler", "ResolutionSchedule"]


@dataclass
class ResolutionSchedule:
    """Piecewise-constant image size and batch size over training steps.

    Attributes:
        sizes: square image side in pixels for each phase, e.g. (64, 128, 256).
        batch_sizes: cameras per step for each phase, same length as ``sizes``.
        milestones: steps at which the next phase starts; ``len(sizes) - 1`` increasing entries.
    """

    sizes: tuple[int, ...] = (64, 128, 256)
    batch_sizes: tuple[int, ...] = (12, 8, 4)
    milestones: tuple[int, ...] = (200, 300)

    def __post_init__(self) -> None:
        if not (len(self.sizes) == len(self.batch_sizes) == len(self.milestones) + 1):
            raise ValueError("ResolutionSchedule: sizes and batch_sizes need len(milestones) + 1 entries")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError("ResolutionSchedule: milestones must increase")

    def phase(self, step: int) -> int:
        """Index of the phase active at ``step`` (0-based)."""
        return sum(step >= m for m in self.milestones)

    def size(self, step: int) -> int:
        """Image side in pixels at ``step``."""
        return self.sizes[self.phase(step)]

    def batch_size(self, step: int) -> int:
        """Number of cameras at ``step``."""
        return self.batch_sizes[self.phase(step)]


@dataclass
class RandomCameraConfig:
    """Where random training cameras are drawn (threestudio ``configs/stable-zero123.yaml``).

    Attributes:
        elevation_range: (min, max) elevation in degrees, inside (−90, 90).
        azimuth_range: (min, max) azimuth in degrees.
        camera_distance_range: (min, max) distance to the origin in scene units.
        fovy_range: (min, max) vertical field of view in degrees (Zero123 is trained with a fixed 20°).
        schedule: resolution and batch size over steps.
    """

    elevation_range: tuple[float, float] = (-10.0, 80.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    camera_distance_range: tuple[float, float] = (3.8, 3.8)
    fovy_range: tuple[float, float] = (20.0, 20.0)
    schedule: ResolutionSchedule = field(default_factory=ResolutionSchedule)


class RandomCameraSampler:
    """Draws batches of cameras from a :class:`RandomCameraConfig` with an explicit generator.

    Examples:
        >>> sampler = RandomCameraSampler(RandomCameraConfig(), torch.Generator().manual_seed(0))
        >>> cams, size = sampler.sample(step=0)
        >>> len(cams), size
        (12, 64)
    """

    def __init__(self, config: RandomCameraConfig, generator: torch.Generator) -> None:
        self.config = config
        self.generator = generator

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def sample(self, step: int) -> tuple[CameraBatch, int]:
        """Cameras for ``step``.

        Returns:
            cameras: a :class:`CameraBatch` of ``schedule.batch_size(step)`` cameras looking at the origin.
            size: the square image side in pixels for this step.
        """
        cfg = self.config
        n = cfg.schedule.batch_size(step)
        lo, hi = cfg.elevation_range
        if torch.rand(1, generator=self.generator).item() < 0.5:
            elevation = self._uniform(n, lo, hi)
        else:  # uniform on the sphere between the two elevations
            s = self._uniform(n, math.sin(math.radians(lo)), math.sin(math.radians(hi)))
            elevation = torch.rad2deg(torch.asin(s))
        azimuth = self._uniform(n, *cfg.azimuth_range)
        distance = self._uniform(n, *cfg.camera_distance_range)
        fovy = self._uniform(n, *cfg.fovy_range)
        return CameraBatch.from_spherical(elevation, azimuth, distance, fovy), cfg.schedule.size(step)
