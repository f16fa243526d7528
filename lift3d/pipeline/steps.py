"""The pipeline's steps as plain functions, so the one-process pipeline and the Ray Serve graph share them.

Each function takes the stage objects it needs explicitly and returns plain data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import torch
import trimesh
from PIL import Image

from lift3d.io.images import has_meaningful_alpha
from lift3d.io.preprocess import recenter_rgba, rgba_to_tensors
from lift3d.presets import NerfPreset
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.zero123 import Zero123
from nerf.field import ImplicitVolume
from nerf.mesh import EmptyIsosurfaceError, extract_mesh
from nerf.renderer import VolumeRenderer
from nerf.trainers.sds import Guidance, GuidanceResult, ReferenceView, SDSTrainer, StepStats

logger = logging.getLogger(__name__)

__all__ = [
    "NovelView",
    "PreparedInput",
    "REFERENCE_ELEVATION_DEG",
    "Zero123Guidance",
    "condition_zero123",
    "generate_views",
    "prepare_input",
    "train_mesh",
]

# Stable Zero123 conditions on a view at elevation 5°, azimuth 0°, distance 3.8, fovy 20°
# (threestudio configs/stable-zero123.yaml: data.default_*).
REFERENCE_ELEVATION_DEG = 5.0
REFERENCE_AZIMUTH_DEG = 0.0
REFERENCE_CAMERA_DISTANCE = 3.8
REFERENCE_FOVY_DEG = 20.0


@dataclass
class PreparedInput:
    """The conditioning image.

    Attributes:
        rgba: square RGBA image (preset input size, 256² for Stable Zero123), object centred.
        background_removal: how the mask was obtained: ``"rembg:<model>"``, ``"input_alpha"`` or ``"none"``.
    """

    rgba: Image.Image
    background_removal: str

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (3, H, W) in [0, 1] composited on white, and mask (1, H, W) in [0, 1]."""
        return rgba_to_tensors(self.rgba)


@dataclass
class NovelView:
    """One generated view. Angles in degrees, relative to the world frame of the reference view."""

    elevation_deg: float
    azimuth_deg: float
    image: Image.Image

    @property
    def filename(self) -> str:
        return f"az{self.azimuth_deg:03.0f}_el{self.elevation_deg:.0f}.png"


def prepare_input(
    image: Image.Image,
    remove_background: bool,
    remover_factory: Callable[[], BackgroundRemover],
    size: int = 256,
) -> PreparedInput:
    """Background removal and recentring (object fills 1 − 2·0.2 of a white ``size``² square).

    An RGBA input whose alpha already separates the object keeps that alpha instead of running rembg on it.
    With ``remove_background`` false, RGBA alpha is the mask and an RGB input counts as all foreground.

    Raises:
        InvalidInputError: when the mask is empty.
    """
    if remove_background and has_meaningful_alpha(image):
        rgba, method = image.convert("RGBA"), "input_alpha"
        logger.info("input already has an alpha mask: using it instead of rembg")
    elif remove_background:
        remover = remover_factory()
        rgba, method = remover(image.convert("RGB")), f"rembg:{remover.model_name}"
    else:
        rgba, method = image.convert("RGBA"), "none"
    return PreparedInput(recenter_rgba(rgba, size=size), method)


def generate_views(
    zero123: Zero123,
    prepared: PreparedInput,
    azimuths_deg: list[float],
    *,
    elevation_deg: float = 0.0,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> list[NovelView]:
    """Novel views at ``elevation_deg`` and each azimuth, conditioned on the prepared image."""
    condition_zero123(zero123, prepared)
    images = zero123.novel_views(
        [elevation_deg] * len(azimuths_deg),
        list(azimuths_deg),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
    )
    return [NovelView(elevation_deg, az, img) for az, img in zip(azimuths_deg, images)]


class Zero123Guidance:
    """Adapts :meth:`Zero123.sds` to the ``nerf`` :class:`~nerf.trainers.sds.Guidance` callback."""

    def __init__(self, zero123: Zero123, guidance_scale: float, seed: int) -> None:
        self.zero123 = zero123
        self.guidance_scale = guidance_scale
        self.generator = torch.Generator(device=getattr(zero123, "device", "cpu")).manual_seed(seed)

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        out = self.zero123.sds(
            rgb, elevation_deg, azimuth_deg, camera_distance, step,
            guidance_scale=self.guidance_scale, generator=self.generator,
        )
        return GuidanceResult(loss=float(out.loss.detach()), grad_rgb=out.grad_rgb)


def condition_zero123(zero123: Zero123, prepared: PreparedInput) -> None:
    """Set the reference image and pose on ``zero123`` (needed before :meth:`Zero123.sds`)."""
    rgb, _ = prepared.tensors()
    zero123.set_condition(rgb[None], elevation_deg=REFERENCE_ELEVATION_DEG, azimuth_deg=REFERENCE_AZIMUTH_DEG,
                          camera_distance=REFERENCE_CAMERA_DISTANCE)


def train_mesh(
    prepared: PreparedInput,
    guidance: Guidance | None,
    nerf: NerfPreset,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    callback: Callable[[StepStats], None] | None = None,
) -> tuple[trimesh.Trimesh, list[StepStats], ImplicitVolume]:
    """Optimise a NeRF with the reference view + SDS guidance, then extract a coloured mesh (z-up world).

    Returns:
        The mesh, the per-step stats, and the trained field (its albedo feeds texture baking).

    Raises:
        nerf.mesh.EmptyIsosurfaceError: when no surface reaches the isosurface threshold.
    """
    rgb, mask = prepared.tensors()
    reference = ReferenceView(
        rgb=rgb, mask=mask, elevation_deg=REFERENCE_ELEVATION_DEG, azimuth_deg=REFERENCE_AZIMUTH_DEG,
        camera_distance=REFERENCE_CAMERA_DISTANCE, fovy_deg=REFERENCE_FOVY_DEG,
    )
    field = ImplicitVolume(nerf.field, seed=seed)
    renderer = VolumeRenderer(field, nerf.renderer)
    trainer = SDSTrainer(renderer, reference, guidance, nerf.training, seed=seed, device=device)
    history = trainer.train(callback=callback)
    return extract_field_mesh(field, nerf, device=device), history, field


def extract_field_mesh(field: ImplicitVolume, nerf: NerfPreset, device: torch.device | str = "cpu") -> trimesh.Trimesh:
    """Marching cubes at the preset's density threshold; if the field never reaches it (a short or failed
    optimisation), retry with the automatic threshold and say so in the log and in ``mesh.metadata``.

    Raises:
        nerf.mesh.EmptyIsosurfaceError: when even the automatic threshold finds no surface (a flat field).
    """
    def extract(config):
        return extract_mesh(
            field.density, nerf.field.radius, config,
            color_fn=lambda points: field(points).albedo, device=torch.device(device),
        )

    try:
        mesh = extract(nerf.isosurface)
        mesh.metadata["isosurface_threshold"] = nerf.isosurface.threshold
    except EmptyIsosurfaceError as exc:
        logger.warning("%s Falling back to the automatic threshold (mean density).", exc)
        mesh = extract(replace(nerf.isosurface, threshold="auto"))
        mesh.metadata["isosurface_threshold"] = "auto"
    return mesh
