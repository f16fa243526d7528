"""Model presets: which weights each stage loads and how large the NeRF optimisation is.

- ``default``: SDXL base 1.0, rembg ``u2net``, a diffusers-format Stable Zero123 and threestudio's
  stable-zero123 NeRF/SDS configuration (600 steps, renders up to 512², hash grid up to 4096³).
- ``tiny``: the same classes built from small configs with **random weights** (offline, deterministic), and a
  NeRF small enough for 2 CPU cores. The shapes it produces are meaningless; it exists for tests, demos and
  timing the plumbing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from dataclasses import field as default

from lift3d.errors import InvalidInputError, ModelNotFoundError
from lift3d.stages.loading import TINY, locate_pretrained
from nerf.encoding import HashGridConfig
from nerf.field import FieldConfig
from nerf.mesh import IsosurfaceConfig
from nerf.occupancy_grid import OccupancyGridConfig
from nerf.random_cameras import RandomCameraConfig, ResolutionSchedule
from nerf.renderer import RendererConfig
from nerf.schedules import stretch
from nerf.trainers.field_fit import FieldFitConfig
from nerf.trainers.photometric import ReconstructionConfig
from nerf.trainers.sds import SDSTrainingConfig

TRIPOSR_FILES = ("config.yaml", "model.ckpt")
"""The files of a TripoSR model directory (the layout of ``stabilityai/TripoSR`` on the Hugging Face Hub)."""

__all__ = ["TRIPOSR_FILES", "FastPreset", "ModelPreset", "NerfPreset", "PRESETS", "TINY", "get_preset", "resolve_preset"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NerfPreset:
    """Everything the 3D stage needs besides the guidance.

    Attributes:
        field: the implicit volume (hash grid + MLP heads).
        renderer: ray marching and compositing; samples below alpha 0.01 are pruned, as threestudio's
            ``nerf-volume-renderer`` does by default (``prune_alpha_threshold``).
        training: the SDS loop; its ``max_steps`` is the default of ``num_3d_max_steps``.
        isosurface: mesh extraction (threestudio uses density 25 for this volume, coarse to fine). Its
            ``threshold`` is used as written only when ``isosurface_from_reference`` is off or the fit fails.
        isosurface_from_reference: pick the isosurface threshold whose silhouette seen from the reference camera
            best matches the input mask (:mod:`nerf.silhouette`; lift3d's rule, not threestudio's — the SDS oracle
            benchmark found fixed thresholds off by 1–2 % of the object, in different directions per field).
        silhouette_resolution: side in pixels of the reference render used for that fit, >= 16.
        fit: how ``fast+sds`` fits this NeRF to the feed-forward field before SDS (:mod:`nerf.trainers.field_fit`).
        schedule_scale: recipe steps per training step. The SDS timestep annealing lives in the guidance, which
            reads ``step × schedule_scale`` (see :meth:`with_max_steps`); 1 for a preset as written.
    """

    field: FieldConfig = default(default_factory=FieldConfig)
    renderer: RendererConfig = default(default_factory=lambda: RendererConfig(alpha_thre=0.01))
    training: SDSTrainingConfig = default(default_factory=SDSTrainingConfig)
    isosurface: IsosurfaceConfig = default(default_factory=IsosurfaceConfig)
    isosurface_from_reference: bool = True
    silhouette_resolution: int = 128
    schedule_scale: float = 1.0
    fit: FieldFitConfig = default(default_factory=FieldFitConfig)

    def __post_init__(self) -> None:
        if self.silhouette_resolution < 16:
            raise ValueError(f"NerfPreset.silhouette_resolution must be >= 16, got {self.silhouette_resolution}")

    def with_max_steps(self, max_steps: int) -> "NerfPreset":
        """A copy training for ``max_steps``, with one rule for every step-indexed schedule: each is stretched by
        ``max_steps / training.max_steps`` (resolution milestones, every ``lambda_*`` ramp, and — through
        :attr:`schedule_scale` — the SDS timestep annealing), so a shorter or longer run keeps the recipe's shape.

        Raises:
            ValueError: ``max_steps`` < 1.
        """
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        base = self.training
        factor = max_steps / base.max_steps
        schedule = base.random_cameras.schedule
        milestones = tuple(max(1, round(m * factor)) for m in schedule.milestones)
        cameras = replace(base.random_cameras, schedule=replace(schedule, milestones=milestones))
        weights = {f.name: stretch(getattr(base, f.name), factor) for f in fields(base) if f.name.startswith("lambda_")}
        training = replace(base, max_steps=max_steps, random_cameras=cameras, **weights)
        return replace(self, training=training, schedule_scale=self.schedule_scale / factor)


@dataclass(frozen=True)
class FastPreset:
    """The feed-forward methods (``method`` ``fast`` and ``fast+sds``).

    Attributes:
        isosurface_resolution: marching-cubes grid points per axis on the feed-forward field, >= 8 (TripoSR's
            ``run.py`` extracts at 256; lift3d's extraction is coarse to fine, :mod:`nerf.mesh`).
        isosurface_threshold: density of the surface; None takes the model's recommended value
            (``TriplaneField.isosurface_threshold``; TripoSR: 25, ``run.py`` of VAST-AI-Research/TripoSR).
        refine_steps: SDS steps of ``fast+sds`` when ``num_3d_max_steps`` is omitted (the preset's SDS schedules
            stretched to it, :meth:`NerfPreset.with_max_steps`): a third of the cold start's, the count at which the
            SDS oracle benchmark reaches its target from a guess (``benchmarks/sds_oracle.py --init-mesh``).
        foreground_ratio: share of the model's input square the object's longer side fills (TripoSR's default
            0.85, ``run.py``).
    """

    isosurface_resolution: int = 256
    isosurface_threshold: float | None = None
    refine_steps: int = 200
    foreground_ratio: float = 0.85

    def __post_init__(self) -> None:
        if self.isosurface_resolution < 8:
            raise ValueError(f"FastPreset.isosurface_resolution must be >= 8, got {self.isosurface_resolution}")
        if self.refine_steps < 1:
            raise ValueError(f"FastPreset.refine_steps must be >= 1, got {self.refine_steps}")
        if not 0.1 <= self.foreground_ratio <= 1.0:
            raise ValueError(f"FastPreset.foreground_ratio must be in [0.1, 1], got {self.foreground_ratio}")


@dataclass(frozen=True)
class ModelPreset:
    """Model sources for each stage and the NeRF size.

    Attributes:
        name: preset name.
        text_to_image: SDXL hub id or local diffusers directory, or ``"tiny"``.
        background: rembg model name (u2net, isnet-general-use, birefnet-general, …), or ``"tiny"``.
        zero123: diffusers-format Stable Zero123 hub id or local directory, or ``"tiny"``.
        nerf: NeRF/SDS/mesh configuration.
        input_size: side of the square conditioning image in pixels (Stable Zero123: 256).
        reconstruction: trainer configuration of ``views-to-3d`` jobs (seed and mesh resolution come from the job;
            its ``max_steps`` is the default of the job's ``steps``).
        pose_controlnet: SDXL OpenPose ControlNet (diffusers layout) hub id or local directory, or ``"tiny"``;
            loaded on the first pose request (:class:`lift3d.stages.sdxl.pose_to_image.PoseToImage`).
        pose_detector: directory of the pose detector's ONNX files (None: ``$LIFT3D_POSE_HOME``, default
            ``~/.cache/lift3d/pose``), or ``"tiny"`` (:class:`lift3d.stages.sdxl.pose.PoseDetector`).
        feedforward: the feed-forward reconstruction model's hub id or local directory (TripoSR's layout:
            ``config.yaml`` + ``model.ckpt``), or ``"tiny"``.
        feedforward_model: which architecture reads it, a key of
            :data:`lift3d.stages.feedforward.FEEDFORWARD_MODELS` (``"triposr"``).
        fast: marching cubes and refine steps of the feed-forward methods.
    """

    name: str
    text_to_image: str
    background: str
    zero123: str
    nerf: NerfPreset
    input_size: int = 256
    reconstruction: ReconstructionConfig = default(default_factory=ReconstructionConfig)
    pose_controlnet: str = "thibaud/controlnet-openpose-sdxl-1.0"
    pose_detector: str | None = None
    feedforward: str = "stabilityai/TripoSR"
    feedforward_model: str = "triposr"
    fast: FastPreset = default(default_factory=FastPreset)

    def with_models(self, **sources: str | None) -> "ModelPreset":
        """Override model sources (keys: text_to_image, background, zero123, feedforward); None keeps the
        preset's."""
        return replace(self, **{k: v for k, v in sources.items() if v is not None})


def _tiny_nerf() -> NerfPreset:
    levels, base, finest = 8, 16, 256
    grid = HashGridConfig(
        n_levels=levels,
        n_features_per_level=2,
        log2_hashmap_size=15,
        base_resolution=base,
        per_level_scale=math.exp(math.log(finest / base) / (levels - 1)),
    )
    schedule = ResolutionSchedule(sizes=(32, 32, 48), batch_sizes=(2, 2, 1), milestones=(100, 150))
    training = SDSTrainingConfig(
        max_steps=200,
        reference_sizes=(48, 48, 64),
        random_cameras=RandomCameraConfig(schedule=schedule),
        lambda_rgb=(30, 500.0, 1000.0, 130),
    )
    return NerfPreset(
        field=FieldConfig(hash_grid=grid, n_neurons=32, n_hidden_layers=1, normal_type="analytic"),
        renderer=RendererConfig(num_samples_per_ray=96, grid=OccupancyGridConfig(warmup_steps=32), alpha_thre=0.01),
        training=training,
        # The fallback threshold (the reference silhouette sets it normally): the same per-sample opacity at the
        # surface as threestudio's density 25 with 512 samples per ray: 25 * (2 * 1.732 * 2 / 512) /
        # (2 * 1.732 * 2 / 96) ≈ 4.7.
        isosurface=IsosurfaceConfig(resolution=96, threshold=5.0),
        silhouette_resolution=96,
        # fast+sds on 2 CPU cores: a third of the fit's default steps and half its points (~5 s instead of ~60 s)
        fit=FieldFitConfig(steps=100, batch_points=4096),
    )


PRESETS: dict[str, ModelPreset] = {
    "default": ModelPreset(
        name="default",
        text_to_image="stabilityai/stable-diffusion-xl-base-1.0",
        background="u2net",
        zero123="ashawkey/stable-zero123-diffusers",
        nerf=NerfPreset(),
    ),
    TINY: ModelPreset(name=TINY, text_to_image=TINY, background=TINY, zero123=TINY, nerf=_tiny_nerf(),
                      pose_controlnet=TINY, pose_detector=TINY, feedforward=TINY,
                      # a third of the tiny SDS run's 200 steps, as the default preset's 200 of 600
                      fast=FastPreset(isosurface_resolution=64, refine_steps=70),
                      # half the default's steps (the tiny preset's reconstruction time before issue 22's change)
                      reconstruction=ReconstructionConfig(max_steps=400)),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``.

    Raises:
        InvalidInputError: for an unknown name; the message lists the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def resolve_preset(
    name: str,
    *,
    text_to_image: str | None = None,
    zero123: str | None = None,
    background: str | None = None,
    feedforward: str | None = None,
    needs_text_to_image: bool = False,
    needs_zero123: bool = True,
    needs_feedforward: bool = False,
) -> ModelPreset:
    """The preset to run, with per-stage overrides applied.

    ``auto`` picks ``default`` when the weights it needs (Stable Zero123 unless ``method="fast"``, TripoSR for the
    feed-forward methods, and SDXL for prompts) are found locally (a directory, or the Hugging Face cache), else ``tiny`` with a loud warning.

    Raises:
        InvalidInputError: unknown preset name.
    """
    sources = dict(text_to_image=text_to_image, zero123=zero123, background=background, feedforward=feedforward)
    if name != "auto":
        return get_preset(name).with_models(**sources)
    preset = get_preset("default").with_models(**sources)
    diffusers = ("model_index.json",)
    needed = ([(preset.zero123, diffusers)] if needs_zero123 else [])
    needed += [(preset.text_to_image, diffusers)] if needs_text_to_image else []
    needed += [(preset.feedforward, TRIPOSR_FILES)] if needs_feedforward else []
    try:
        for source, required in needed:
            locate_pretrained(source, required=required)
    except ModelNotFoundError as exc:
        logger.warning(
            "no model weights found (%s). Falling back to the TINY preset with RANDOM WEIGHTS: the output "
            "shows the pipeline working, its shape means nothing. Pass --preset default to fail instead.", exc,
        )
        return get_preset("tiny")
    return preset
