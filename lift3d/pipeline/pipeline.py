"""Image or prompt → novel views → NeRF with SDS → GLB, in one process.

``Lift3DPipeline.__call__`` runs the numbered steps of :mod:`lift3d.pipeline.steps`; the Ray Serve graph runs the same
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

from lift3d.io.artifacts import ArtifactWriter
from lift3d.errors import InvalidInputError
from lift3d.io.mesh_assets import MeshExportOptions, write_mesh_assets
from lift3d.params import GenerationParams
from lift3d.presets import ModelPreset
from lift3d.pipeline.providers import InProcessStages, StageProvider, Timed
from lift3d.pipeline.steps import NovelView, PreparedInput, train_mesh
from nerf.trainers.sds import StepStats

logger = logging.getLogger(__name__)

__all__ = ["GenerationResult", "Lift3DPipeline", "ProgressReporter", "package_versions"]

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


@dataclass
class GenerationResult:
    """What one generation produced.

    Attributes:
        seed: the seed actually used.
        input_image: the preprocessed RGBA conditioning image (256², object centred).
        views: the Zero123 novel views.
        mesh: the extracted mesh in the z-up world frame, or None for views-only requests.
        metadata: the content of ``metadata.json``.
        history: per-step SDS training stats (empty for views-only requests).
        timings_s: wall seconds per stage, as seen by the caller.
        busy_s: seconds each stage kept its worker busy (queueing excluded), for cost accounting.
        gpu_fractions: GPU fraction reported by the worker of a stage, where known.
    """

    seed: int
    input_image: Image.Image
    views: list[NovelView]
    mesh: trimesh.Trimesh | None
    metadata: dict[str, Any] = field(default_factory=dict)
    history: list[StepStats] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    gpu_fractions: dict[str, float] = field(default_factory=dict)


class Lift3DPipeline:
    """The whole generation, with its model stages in this process or behind a :class:`StageProvider`.

    Examples:
        >>> pipe = Lift3DPipeline(get_preset("tiny"))
        >>> result = pipe(GenerationParams(seed=0), image=Image.open("examples/dragon2_rgba.png"))
        >>> result.mesh.vertices.shape[1]
        3
    """

    def __init__(
        self, preset: ModelPreset, device: torch.device | str = "cpu", stages: StageProvider | None = None
    ) -> None:
        self.preset = preset
        self.device = torch.device(device)
        self.stages = stages if stages is not None else InProcessStages(preset, self.device)

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
        """Run the generation; artifacts, then ``metadata.json``, go to ``writer`` as each is ready."""
        result = self.run(params, image, writer, progress)
        if writer:
            writer.metadata(result.metadata)
        return result

    def run(
        self,
        params: GenerationParams,
        image: Image.Image | None = None,
        writer: ArtifactWriter | None = None,
        progress: ProgressReporter | None = None,
    ) -> GenerationResult:
        """Like ``__call__`` but leaves ``metadata.json`` to the caller (the service adds job and cost fields)."""
        progress = progress or _NoProgress()
        timings: dict[str, float] = {}
        busy: dict[str, float] = {}
        fractions: dict[str, float] = {}

        def timed(stage: str, total: int | None = None) -> _StageTimer:
            return _StageTimer(stage, total, progress, timings)

        def measured(stage: str, out: Timed) -> Any:
            busy[stage] = out.busy_s
            if out.gpu_fraction is not None:
                fractions[stage] = out.gpu_fraction
            return out.value

        # 1. Check inputs and fix the seed.
        self.check_inputs(params, image)
        params = params.with_seed()
        seed = int(params.seed)

        # 2. Text → image (SDXL), only for prompts.
        if image is None:
            with timed("text_to_image", params.num_inference_steps):
                image = measured("text_to_image", self.stages.text_to_image(params, seed))

        # 3. Background removal and recentring.
        with timed("background_removal"):
            prepared: PreparedInput = measured(
                "background_removal",
                self.stages.prepare_input(image, params.remove_background, self.preset.input_size),
            )
        if writer:
            writer.input_image(prepared.rgba)

        # 4. Novel views (Stable Zero123, DDIM).
        with timed("novel_views", params.num_views):
            views = measured("novel_views", self.stages.novel_views(prepared, params, seed))
        if writer:
            writer.views([(v.filename, v.image) for v in views])

        # 5. NeRF optimisation with SDS guidance, then marching cubes.
        mesh, history = None, []
        if params.return_3d:
            nerf = self.preset.nerf
            if params.num_3d_max_steps is not None:
                nerf = nerf.with_max_steps(params.num_3d_max_steps)
            guidance = self.stages.guidance(prepared, params, seed)
            with timed("sds_training", nerf.training.max_steps) as stage:
                mesh, history, field = train_mesh(
                    prepared, guidance, nerf, seed=seed, device=self.device, callback=stage.step_callback
                )
            measured("sds_guidance", Timed(None, guidance.busy_s, guidance.gpu_fraction))
            busy["sds_training"] = timings["sds_training"]
            # 6. Export: model.glb (vertex colours) and, unless disabled, model_textured.glb.
            if writer:
                options = MeshExportOptions(
                    texture=params.texture, texture_size=params.texture_size, target_faces=params.target_faces
                )
                with timed("mesh_export"):
                    mesh = write_mesh_assets(writer, mesh, lambda p: field(p).albedo, options, recenter=True)
                busy["mesh_export"] = timings["mesh_export"]

        result = GenerationResult(
            seed=seed, input_image=prepared.rgba, views=views, mesh=mesh, history=history,
            timings_s=timings, busy_s=busy, gpu_fractions=fractions,
        )
        result.metadata = self._metadata(params, prepared, result)
        return result

    def _metadata(self, params: GenerationParams, prepared: PreparedInput, result: GenerationResult) -> dict[str, Any]:
        models = self.stages.describe()
        random_weights = any(m.get("random_weights") for m in models.values())
        if random_weights:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        mesh, history = result.mesh, result.history
        return {
            "created_at": datetime.now(timezone.utc).isoformat(),
            "params": params.model_dump(),
            "seed": result.seed,
            "preset": self.preset.name,
            "models": models,
            "random_weights": random_weights,
            "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
            "background_removal": prepared.background_removal,
            "views": [
                {"file": f"views/{i:03d}_{v.filename}", "elevation_deg": v.elevation_deg, "azimuth_deg": v.azimuth_deg}
                for i, v in enumerate(result.views)
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
            "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
            "busy_s": {k: round(v, 3) for k, v in result.busy_s.items()},
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
