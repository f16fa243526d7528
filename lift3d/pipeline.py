"""Image or prompt → novel views → NeRF with SDS → GLB, in one process.

``Lift3DPipeline.__call__`` runs the numbered steps of :mod:`lift3d.steps`; the Ray Serve graph runs the same
steps in separate deployments.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any, Protocol

import torch
import trimesh
from PIL import Image

from lift3d.artifacts import ArtifactWriter
from lift3d.errors import InvalidInputError
from lift3d.params import GenerationParams
from lift3d.presets import TINY, ModelPreset
from lift3d.stages.background import BackgroundRemover
from lift3d.stages.text_to_image import TextToImage
from lift3d.stages.zero123 import Zero123
from lift3d.steps import NovelView, PreparedInput, Zero123Guidance, generate_views, prepare_input, train_mesh
from nerf.sds_trainer import StepStats

logger = logging.getLogger(__name__)

__all__ = ["GenerationResult", "Lift3DPipeline", "ProgressReporter", "StageModels", "package_versions"]

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: the models are untrained; images and shapes are meaningless."
_VERSIONED_PACKAGES = ("lift3d", "torch", "diffusers", "transformers", "rembg", "onnxruntime", "trimesh", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape the output."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class ProgressReporter(Protocol):
    """Receives stage progress (the CLI draws rich progress bars; the service updates job status)."""

    def start(self, stage: str, total: int | None = None) -> None: ...

    def update(self, stage: str, completed: int, total: int, info: dict[str, float]) -> None: ...

    def finish(self, stage: str, seconds: float) -> None: ...


class _NoProgress:
    def start(self, stage: str, total: int | None = None) -> None:
        pass

    def update(self, stage: str, completed: int, total: int, info: dict[str, float]) -> None:
        pass

    def finish(self, stage: str, seconds: float) -> None:
        pass


class StageModels:
    """Loads each stage's model from a preset on first use and keeps it for this instance."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.preset = preset
        self.device = torch.device(device)
        self._loaded: dict[str, Any] = {}

    def _load(self, name: str, cls: Any, source: str) -> Any:
        if name not in self._loaded:
            if source == TINY:
                self._loaded[name] = cls.tiny(seed=0, device=self.device)
            else:
                self._loaded[name] = cls.from_pretrained(source, device=self.device)
        return self._loaded[name]

    def text_to_image(self) -> TextToImage:
        return self._load("text_to_image", TextToImage, self.preset.text_to_image)

    def background_remover(self) -> BackgroundRemover:
        if "background" not in self._loaded:
            source = self.preset.background
            self._loaded["background"] = (
                BackgroundRemover.tiny(seed=0) if source == TINY else BackgroundRemover.from_pretrained(source)
            )
        return self._loaded["background"]

    def zero123(self) -> Zero123:
        return self._load("zero123", Zero123, self.preset.zero123)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Source and ``random_weights`` of every stage loaded so far."""
        return {
            name: {"source": stage.source, "random_weights": bool(stage.random_weights)}
            for name, stage in self._loaded.items()
        }


@dataclass
class GenerationResult:
    """What one generation produced.

    Attributes:
        seed: the seed actually used.
        input_image: the preprocessed RGBA conditioning image (256², object centred).
        views: the Zero123 novel views.
        mesh: the extracted mesh in the z-up world frame, or None for views-only requests.
        metadata: the content of ``metadata.json``.
    """

    seed: int
    input_image: Image.Image
    views: list[NovelView]
    mesh: trimesh.Trimesh | None
    metadata: dict[str, Any] = field(default_factory=dict)


class Lift3DPipeline:
    """The whole generation in one process.

    Examples:
        >>> pipe = Lift3DPipeline(get_preset("tiny"))
        >>> result = pipe(GenerationParams(seed=0), image=Image.open("examples/dragon2_rgba.png"))
        >>> result.mesh.vertices.shape[1]
        3
    """

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.preset = preset
        self.device = torch.device(device)
        self.models = StageModels(preset, self.device)

    @staticmethod
    def check_inputs(params: GenerationParams, image: Image.Image | None) -> None:
        """Raises InvalidInputError unless exactly one of image and prompt is given."""
        if image is None and params.prompt is None:
            raise InvalidInputError("give either an image or a prompt")
        if image is not None and params.prompt is not None:
            raise InvalidInputError("give either an image or a prompt, not both")

    def __call__(
        self,
        params: GenerationParams,
        image: Image.Image | None = None,
        writer: ArtifactWriter | None = None,
        progress: ProgressReporter | None = None,
    ) -> GenerationResult:
        """Run the generation; artifacts go to ``writer`` as soon as each stage finishes."""
        progress = progress or _NoProgress()
        timings: dict[str, float] = {}

        def timed(stage: str, total: int | None = None):
            return _StageTimer(stage, total, progress, timings)

        # 1. Check inputs and fix the seed.
        self.check_inputs(params, image)
        params = params.with_seed()
        seed = int(params.seed)

        # 2. Text → image (SDXL), only for prompts.
        if image is None:
            with timed("text_to_image", params.num_inference_steps):
                image = self.models.text_to_image()(
                    params.prompt, params.negative_prompt, guidance_scale=params.guidance_scale,
                    num_inference_steps=params.num_inference_steps, seed=seed,
                )

        # 3. Background removal and recentring.
        with timed("background_removal"):
            prepared: PreparedInput = prepare_input(
                image, params.remove_background, self.models.background_remover, size=self.preset.input_size
            )
        if writer:
            writer.input_image(prepared.rgba)

        # 4. Novel views (Stable Zero123, DDIM).
        with timed("novel_views", params.num_views):
            zero123 = self.models.zero123()
            views = generate_views(
                zero123, prepared, params.view_azimuths(), num_inference_steps=params.num_multiview_steps,
                guidance_scale=params.multiview_guidance_scale, seed=seed,
            )
        if writer:
            writer.views([(v.filename, v.image) for v in views])

        # 5. NeRF optimisation with SDS, then marching cubes.
        mesh, history = None, []
        if params.return_3d:
            nerf = self.preset.nerf
            if params.num_3d_max_steps is not None:
                nerf = nerf.with_max_steps(params.num_3d_max_steps)
            with timed("sds_training", nerf.training.max_steps) as stage:
                guidance = Zero123Guidance(zero123, params.multiview_guidance_scale, seed=seed)
                mesh, history = train_mesh(
                    prepared, guidance, nerf, seed=seed, device=self.device, callback=stage.step_callback
                )
            # 6. Export.
            if writer:
                with timed("mesh_export"):
                    writer.model(mesh)

        metadata = self._metadata(params, prepared, views, mesh, history, timings)
        if writer:
            writer.metadata(metadata)
        return GenerationResult(seed=seed, input_image=prepared.rgba, views=views, mesh=mesh, metadata=metadata)

    def _metadata(self, params, prepared, views, mesh, history: list[StepStats], timings) -> dict[str, Any]:
        models = self.models.describe()
        random_weights = any(m["random_weights"] for m in models.values())
        if random_weights:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        return {
            "created_at": datetime.now(timezone.utc).isoformat(),
            "params": params.model_dump(),
            "seed": params.seed,
            "preset": self.preset.name,
            "models": models,
            "random_weights": random_weights,
            "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
            "background_removal": prepared.background_removal,
            "views": [
                {"file": f"views/{i:03d}_{v.filename}", "elevation_deg": v.elevation_deg, "azimuth_deg": v.azimuth_deg}
                for i, v in enumerate(views)
            ],
            "mesh": None if mesh is None else {
                "vertices": len(mesh.vertices),
                "faces": len(mesh.faces),
                "isosurface_threshold": mesh.metadata.get("isosurface_threshold"),
            },
            "training": None if not history else {
                "steps": len(history),
                "final_loss": history[-1].loss,
                "final_losses": history[-1].losses,
                "mean_step_seconds": sum(h.seconds for h in history) / len(history),
            },
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "device": str(self.device),
            "versions": package_versions(),
        }


class _StageTimer:
    """Context manager: reports start/finish of a stage and records its wall time."""

    def __init__(self, stage: str, total: int | None, progress: ProgressReporter, timings: dict[str, float]):
        self.stage, self.total, self.progress, self.timings = stage, total, progress, timings

    def __enter__(self) -> "_StageTimer":
        self.started = time.perf_counter()
        self.progress.start(self.stage, self.total)
        return self

    def step_callback(self, stats: StepStats) -> None:
        self.progress.update(self.stage, stats.step, stats.total, {"loss": stats.loss})

    def __exit__(self, exc_type, exc, tb) -> None:
        seconds = time.perf_counter() - self.started
        if exc_type is None:
            self.timings[self.stage] = seconds
            self.progress.finish(self.stage, seconds)
