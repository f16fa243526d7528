"""The pipeline's steps as plain functions and values, shared by every place the stages run (this process, a
Serve replica, a batch worker).

Each function takes the stage objects it needs explicitly and returns plain data; images travel as PNG bytes
(:class:`~lift3d.io.encoded.EncodedImage`), encoded once where they are made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import torch
import trimesh
from PIL import Image

from lift3d.io.images import has_meaningful_alpha
from lift3d.io.encoded import EncodedImage
from lift3d.io.preprocess import recenter_rgba, rgba_to_tensors
from lift3d.presets import NerfPreset
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.zero123 import ConditionEmbedding, SDSRequest, Zero123, step_seed
from nerf.cameras import CameraBatch
from nerf.field import ImplicitVolume
from nerf.mesh import EmptyIsosurfaceError, extract_mesh
from nerf.silhouette import SilhouetteFit, choose_threshold, ray_max_density, silhouette_threshold
from nerf.renderer import VolumeRenderer
from nerf.trainers.field_fit import TargetField, fit_field
from nerf.trainers.sds import Guidance, GuidanceResult, ReferenceView, SDSTrainer
from nerf.trainers.stats import StepStats

logger = logging.getLogger(__name__)

__all__ = [
    "NovelView",
    "PreparedInput",
    "REFERENCE_AZIMUTH_DEG",
    "REFERENCE_CAMERA_DISTANCE",
    "REFERENCE_ELEVATION_DEG",
    "REFERENCE_FOVY_DEG",
    "Zero123Guidance",
    "albedo_fn",
    "density_fn",
    "encode_condition",
    "extract_field_mesh",
    "generate_views",
    "prepare_input",
    "reference_silhouette_fit",
    "sds_request",
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
        png: square RGBA image (preset input size, 256² for Stable Zero123), object centred, as PNG.
        background_removal: how the mask was obtained: ``"rembg:<model>"``, ``"input_alpha"`` or ``"none"``.
    """

    png: EncodedImage
    background_removal: str

    @property
    def rgba(self) -> Image.Image:
        """The decoded RGBA image."""
        return self.png.image

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (3, H, W) float32 in [0, 1] composited on white, and mask (1, H, W) float32 in [0, 1], on the CPU."""
        return rgba_to_tensors(self.rgba)


@dataclass
class NovelView:
    """One generated view (PNG). Angles in degrees, relative to the world frame of the reference view."""

    elevation_deg: float
    azimuth_deg: float
    png: EncodedImage

    @property
    def image(self) -> Image.Image:
        """The decoded RGB image."""
        return self.png.image

    @property
    def filename(self) -> str:
        return f"az{self.azimuth_deg:03.0f}_el{self.elevation_deg:.0f}.png"


def prepare_input(
    image: Image.Image,
    remove_background: bool,
    remover_factory: Callable[[], BackgroundRemover],
    size: int = 256,
) -> PreparedInput:
    """Background removal and recentring (the object's longer side spans 80 % of a white ``size``² square).

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
    return PreparedInput(EncodedImage.from_image(recenter_rgba(rgba, size=size)), method)


def encode_condition(zero123: Zero123, rgb: torch.Tensor) -> ConditionEmbedding:
    """Zero123's condition for a prepared input's ``rgb`` (3, H, W) in [0, 1], seen from the reference camera."""
    return zero123.encode_condition(rgb[None], elevation_deg=REFERENCE_ELEVATION_DEG,
                                    azimuth_deg=REFERENCE_AZIMUTH_DEG, camera_distance=REFERENCE_CAMERA_DISTANCE)


def generate_views(
    zero123: Zero123,
    condition: ConditionEmbedding,
    azimuths_deg: list[float],
    *,
    elevation_deg: float = 0.0,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> list[NovelView]:
    """Novel views at ``elevation_deg`` and each azimuth (degrees), each encoded once as PNG."""
    images = zero123.novel_views(
        [elevation_deg] * len(azimuths_deg), list(azimuths_deg), num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, seed=seed, condition=condition.to(zero123.device),
    )
    return [NovelView(elevation_deg, az, EncodedImage.from_image(img)) for az, img in zip(azimuths_deg, images)]


class Zero123Guidance:
    """The ``nerf`` :class:`~nerf.trainers.sds.Guidance` callback on a Zero123 in this process.

    Each call is one :class:`~lift3d.stages.zero123.SDSRequest` (:func:`sds_request`) served by
    :meth:`Zero123.sds_batch`, exactly as a Zero123 replica serves it for a remote trainer.
    """

    def __init__(self, zero123: Zero123, condition: ConditionEmbedding, guidance_scale: float, seed: int,
                 schedule_scale: float = 1.0) -> None:
        self.zero123, self.condition = zero123, condition
        self.guidance_scale, self.seed, self.schedule_scale = guidance_scale, seed, schedule_scale

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        request = sds_request(rgb, elevation_deg, azimuth_deg, step, seed=self.seed, schedule_scale=self.schedule_scale,
                              guidance_scale=self.guidance_scale, condition=self.condition)
        (result,) = self.zero123.sds_batch([request])
        return GuidanceResult(loss=result.loss, grad_rgb=result.grad_rgb)


def sds_request(rgb: torch.Tensor, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, step: int, *, seed: int,
                schedule_scale: float, guidance_scale: float, condition: ConditionEmbedding) -> SDSRequest:
    """The SDS request of training ``step`` of a job: seeded by :func:`~lift3d.stages.zero123.step_seed` (the
    job seed and the raw step, so every step draws anew), annealed at recipe step ``round(step × schedule_scale)``
    (:attr:`lift3d.presets.NerfPreset.schedule_scale`). Tensors keep their device (remote callers move them to
    the CPU first)."""
    return SDSRequest(rgb, torch.as_tensor(elevation_deg).reshape(-1), torch.as_tensor(azimuth_deg).reshape(-1),
                      round(int(step) * schedule_scale), step_seed(seed, step), guidance_scale, condition)


def albedo_fn(field: ImplicitVolume) -> Callable[[torch.Tensor], torch.Tensor]:
    """World points (M, 3) on any device and dtype → the field's albedo (M, 3) in [0, 1], computed on the field's
    device in its dtype.

    Mesh extraction, decimation and texture baking build their points on the CPU in float32; the field may live on
    a GPU (and in another precision), so every query goes through this adapter or :func:`density_fn`.
    """
    parameter = next(field.parameters())

    def albedo(points: torch.Tensor) -> torch.Tensor:
        return field(points.to(parameter.device, parameter.dtype)).albedo

    return albedo


def density_fn(field: ImplicitVolume) -> Callable[[torch.Tensor], torch.Tensor]:
    """World points (M, 3) on any device and dtype → the field's density (M,), as :func:`albedo_fn` does it."""
    parameter = next(field.parameters())

    def density(points: torch.Tensor) -> torch.Tensor:
        return field.density(points.to(parameter.device, parameter.dtype))

    return density


def train_mesh(
    prepared: PreparedInput,
    guidance: Guidance | None,
    nerf: NerfPreset,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    callback: Callable[[StepStats], None] | None = None,
    init: TargetField | None = None,
) -> tuple[trimesh.Trimesh, list[StepStats], ImplicitVolume]:
    """Optimise a NeRF with the reference view + SDS guidance, then extract a coloured mesh (z-up world).

    With ``init`` (``method="fast+sds"``: the feed-forward model's field, in world coordinates), the NeRF is first
    fitted to its density and albedo (:func:`nerf.trainers.field_fit.fit_field`, ``nerf.fit``, so that the
    NeRF's isosurface threshold lands on the guess's surface) and SDS starts from there.

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
    if init is not None:
        fit_field(field.to(device), init, nerf.fit, threshold=float(nerf.isosurface.threshold), seed=seed,
                  device=device)
    renderer = VolumeRenderer(field, nerf.renderer)
    trainer = SDSTrainer(renderer, reference, guidance, nerf.training, seed=seed, device=device)
    history = trainer.train(callback=callback)
    return extract_field_mesh(field, nerf, device=device, reference=reference), history, field


def extract_field_mesh(field: ImplicitVolume, nerf: NerfPreset, device: torch.device | str = "cpu",
                       reference: ReferenceView | None = None) -> trimesh.Trimesh:
    """Marching cubes on the trained field, at the density whose silhouette matches the reference mask.

    With ``reference`` given and ``nerf.isosurface_from_reference`` set, the isovalue is the one whose silhouette
    seen from the reference camera best matches the reference mask (:mod:`nerf.silhouette`), when that fit is good
    enough (:func:`nerf.silhouette.choose_threshold`: IoU >= 0.8 and within a factor 4 of the preset's threshold);
    otherwise, or when the fit is impossible (empty mask or field), the preset's fixed threshold. If the field
    never reaches the threshold (a short or failed optimisation), it retries with the automatic threshold.
    ``mesh.metadata`` says which: ``isosurface_threshold`` (the one used, float or ``"auto"``),
    ``isosurface_threshold_source`` (``"reference silhouette"``, ``"preset"`` or ``"auto"``) and, whenever a fit
    was tried, ``silhouette_iou`` (the fit's IoU in [0, 1], None without a fit) and ``silhouette_fit``
    (:meth:`nerf.silhouette.ThresholdChoice.metadata`: fitted threshold, IoU, accepted, the threshold used, the
    reason, the floor and the band).

    Raises:
        nerf.mesh.EmptyIsosurfaceError: when even the automatic threshold finds no surface (a flat field).
    """
    def extract(config):
        return extract_mesh(density_fn(field), nerf.field.radius, config, color_fn=albedo_fn(field),
                            device=torch.device(device))

    config, source, metadata = nerf.isosurface, "preset", {}
    if reference is not None and nerf.isosurface_from_reference:
        try:
            fit, why = reference_silhouette_fit(field, nerf, reference, device), ""
        except ValueError as exc:
            fit, why = None, f"no silhouette fit ({exc})"
        choice = choose_threshold(fit, config.threshold, no_fit_reason=why)
        config, source = replace(config, threshold=choice.threshold), choice.source
        record = choice.metadata()
        metadata = {"silhouette_iou": record["iou"], "silhouette_fit": record}
        if choice.accepted:
            logger.info("Isosurface threshold %.4g from the reference silhouette: %s.", choice.threshold, choice.reason)
        else:
            logger.warning("Isosurface threshold not fitted to the reference silhouette: %s.", choice.reason)
    try:
        mesh = extract(config)
        mesh.metadata.update(isosurface_threshold=config.threshold, isosurface_threshold_source=source, **metadata)
    except EmptyIsosurfaceError as exc:
        logger.warning("%s Falling back to the automatic threshold (mean density).", exc)
        mesh = extract(replace(nerf.isosurface, threshold="auto"))
        mesh.metadata.update(isosurface_threshold="auto", isosurface_threshold_source="auto", **metadata)
    return mesh


def reference_silhouette_fit(field: ImplicitVolume, nerf: NerfPreset, reference: ReferenceView,
                             device: torch.device | str = "cpu") -> SilhouetteFit:
    """The density isovalue whose silhouette from the reference camera best matches ``reference.mask``, found
    on a ``nerf.silhouette_resolution``² render of per-ray maximum densities (:mod:`nerf.silhouette`).

    Raises:
        ValueError: the mask is empty or no ray meets a positive density.
    """
    size = nerf.silhouette_resolution
    camera = CameraBatch.from_spherical(reference.elevation_deg, reference.azimuth_deg, reference.camera_distance,
                                        reference.fovy_deg)
    rays_o, rays_d = (r.to(torch.device(device)) for r in camera.rays(size, size))
    maxima = ray_max_density(density_fn(field), rays_o[0], rays_d[0], nerf.field.radius,
                             n_samples=nerf.renderer.num_samples_per_ray)
    mask = torch.nn.functional.interpolate(reference.mask.float()[None], size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)[0, 0]
    return silhouette_threshold(maxima, mask.to(maxima.device))
