"""Image or prompt → novel views → NeRF with SDS → GLB: :class:`Lift3DPipeline`.

``__call__`` runs numbered steps, each handing off to its :class:`~lift3d.pipeline.providers.StageProvider`
(models in this process, or Serve replicas) or to :mod:`lift3d.pipeline.steps`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import torch
import trimesh
from PIL import Image

from lift3d.io.artifacts import ArtifactWriter, package_versions
from lift3d.io.encoded import EncodedImage
from lift3d.io.mesh_assets import MeshExportOptions, write_mesh_assets
from lift3d.io.media_types import MP4
from lift3d.params import GenerationParams, check_one_input
from lift3d.pipeline.providers import InProcessStages, StageProvider, Timed
from lift3d.pipeline.steps import NovelView, PreparedInput, albedo_fn, train_mesh
from lift3d.pipeline.turntable import turntable_mp4, video_metadata
from lift3d.pipeline.fast import field_mesh as fast_field_mesh
from lift3d.presets import ModelPreset, NerfPreset
from lift3d.progress import NoProgress, ProgressReporter
from nerf.trainers.stats import StepStats

logger = logging.getLogger(__name__)

__all__ = ["Lift3DPipeline", "Lift3DPipelineOutput", "RANDOM_WEIGHTS_WARNING"]

RANDOM_WEIGHTS_WARNING = "RANDOM WEIGHTS: the models are untrained; images and shapes are meaningless."


@dataclass
class Lift3DPipelineOutput:
    """What one generation produced.

    Attributes:
        seed: the seed actually used.
        prepared: the preprocessed RGBA conditioning image (256², object centred) and how its mask was made.
        views: the Zero123 novel views.
        mesh: the exported mesh in the z-up world frame, or None for views-only requests.
        metadata: the content of ``metadata.json``.
        history: per-step SDS training stats (empty for views-only requests).
        timings_s: wall seconds per stage, as seen by the caller.
        busy_s: seconds each stage kept its worker busy (queueing excluded), for cost accounting.
        gpu_fractions: GPU fraction reported by the worker of a stage, where known.
        video: what ``turntable.mp4`` holds (frames, fps, size, camera path), or None when none was written.
    """

    seed: int
    prepared: PreparedInput
    views: list[NovelView]
    mesh: trimesh.Trimesh | None
    metadata: dict[str, Any] = field(default_factory=dict)
    history: list[StepStats] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    gpu_fractions: dict[str, float] = field(default_factory=dict)
    video: dict[str, Any] | None = None


class Lift3DPipeline:
    """The whole generation, with its model stages in this process or behind a :class:`StageProvider`.

    Examples:
        >>> pipe = Lift3DPipeline(get_preset("tiny"))
        >>> out = pipe(GenerationParams(seed=0), image=Image.open("examples/dragon2_rgba.png"))
        >>> out.mesh.vertices.shape[1]
        3
    """

    def __init__(
        self, preset: ModelPreset, device: torch.device | str = "cpu", stages: StageProvider | None = None
    ) -> None:
        self.preset = preset
        self.device = torch.device(device)
        self.stages = stages if stages is not None else InProcessStages(preset, self.device)

    def __call__(
        self,
        params: GenerationParams,
        image: Image.Image | EncodedImage | None = None,
        writer: ArtifactWriter | None = None,
        progress: ProgressReporter | None = None,
    ) -> Lift3DPipelineOutput:
        """Run the generation; artifacts, then ``metadata.json``, go to ``writer`` as each is ready."""
        output = self.run(params, image, writer, progress)
        if writer:
            writer.metadata(output.metadata)
        return output

    def run(
        self,
        params: GenerationParams,
        image: Image.Image | EncodedImage | None = None,
        writer: ArtifactWriter | None = None,
        progress: ProgressReporter | None = None,
    ) -> Lift3DPipelineOutput:
        """Like ``__call__`` but leaves ``metadata.json`` to the caller (the service adds job and cost fields).

        Raises:
            InvalidInputError: both or neither of image and prompt, or an unusable input (from the stages).
            nerf.mesh.EmptyIsosurfaceError: the optimisation produced no surface.
        """
        timing = _RunTimings(progress or NoProgress())

        # 1. Check inputs and fix the seed.
        check_one_input(image is not None, params.prompt is not None)
        params = params.with_seed()
        seed = params.seed
        source = EncodedImage.from_image(image) if isinstance(image, Image.Image) else image

        # 2. Text → image (SDXL), only for prompts.
        if source is None:
            with timing.timed("text_to_image", params.num_inference_steps):
                source = timing.measured("text_to_image", self.stages.text_to_image(params, seed))

        # 3. Background removal and recentring.
        with timing.timed("background_removal"):
            prepared: PreparedInput = timing.measured(
                "background_removal",
                self.stages.prepare_input(source, params.remove_background, self.preset.input_size),
            )
        if writer:
            writer.png("input.png", prepared.png)

        # 4. Novel views (Stable Zero123, DDIM), conditioned on the input encoded once for the whole job; the
        #    feed-forward method needs neither.
        views, condition = [], None
        if params.method != "fast" or not params.return_3d:
            with timing.timed("novel_views", params.num_views):
                condition = timing.measured("novel_views", self.stages.encode_condition(prepared))
                views = timing.measured("novel_views", self.stages.novel_views(condition, params, seed))
            if writer:
                writer.views([(v.filename, v.png) for v in views])

        mesh, history, video, guess = None, [], None, None
        if params.return_3d:
            # 5. The feed-forward model's field (fast, fast+sds): one forward pass.
            if params.method != "sds":
                with timing.timed("feedforward"):
                    guess = timing.measured("feedforward", self.stages.feedforward(
                        prepared, self.preset.fast.foreground_ratio))

            # 6. sds: a NeRF optimised with SDS guidance, then marching cubes; fast+sds: the same, started from
            #    the field (fitted to it) and with fewer steps; fast: nothing to train.
            nerf = self._nerf_for(params)
            if params.method == "fast":
                field_, albedo = None, guess.albedo
            else:
                guidance = self.stages.guidance(condition, params, seed, nerf.schedule_scale)
                with timing.timed("sds_training", nerf.training.max_steps) as timer:
                    mesh, history, field_ = train_mesh(prepared, guidance, nerf, seed=seed, device=self.device,
                                                       callback=timer.step, init=guess)
                albedo = albedo_fn(field_)
                timing.measured("sds_guidance", Timed(None, guidance.busy_s, guidance.gpu_fraction))
                timing.busy_s["sds_training"] = timing.wall_s["sds_training"]

            # 7. Export (fast: marching cubes first): model.glb (vertex colours) and, unless disabled,
            #    model_textured.glb; for fast, model.glb is the textured mesh.
            if writer or mesh is None:
                with timing.timed("mesh_export"):
                    if mesh is None:
                        mesh = fast_field_mesh(guess, self.preset.fast)
                    if writer:
                        mesh = write_mesh_assets(writer, mesh, albedo, MeshExportOptions.from_params(params),
                                                 recenter=True)
                timing.busy_s["mesh_export"] = timing.wall_s["mesh_export"]

            # 8. Turntable video along the camera path, from the exported mesh (or the NeRF), over white.
            if writer and params.video:
                video_params = params
                if field_ is None and params.video_source == "nerf":
                    logger.warning("method 'fast' trains no NeRF: the turntable video is rendered from the mesh")
                    video_params = params.model_copy(update={"video_source": "mesh"})
                with timing.timed("turntable", params.video_frames) as timer:
                    data = turntable_mp4(mesh, video_params, field=field_, renderer_config=nerf.renderer,
                                         progress=lambda done, total: timer.step(StepStats(done, total, math.nan)))
                    writer.put("turntable.mp4", data, MP4)
                timing.busy_s["turntable"], video = timing.wall_s["turntable"], video_metadata(video_params)

        output = Lift3DPipelineOutput(
            seed=seed, prepared=prepared, views=views, mesh=mesh, history=history, timings_s=timing.wall_s,
            busy_s=timing.busy_s, gpu_fractions=timing.gpu_fractions, video=video,
        )
        output.metadata = self._metadata(params, output)
        return output

    def _nerf_for(self, params: GenerationParams) -> NerfPreset:
        """The NeRF configuration of this run: the preset's, stretched to ``num_3d_max_steps`` or, for
        ``fast+sds`` without it, to the preset's ``fast.refine_steps``; ``fast+sds`` trains with the refinement
        recipe (:meth:`nerf.trainers.sds.SDSTrainingConfig.for_refinement`)."""
        steps = params.num_3d_max_steps
        if steps is None and params.method == "fast+sds":
            steps = self.preset.fast.refine_steps
        nerf = self.preset.nerf if steps is None else self.preset.nerf.with_max_steps(steps)
        if params.method == "fast+sds":
            nerf = replace(nerf, training=nerf.training.for_refinement())
        return nerf

    def _metadata(self, params: GenerationParams, output: Lift3DPipelineOutput) -> dict[str, Any]:
        models = self.stages.describe()
        random_weights = any(m.get("random_weights") for m in models.values())
        if random_weights:
            logger.warning(RANDOM_WEIGHTS_WARNING)
        mesh, history = output.mesh, output.history
        return {
            "created_at": datetime.now(timezone.utc).isoformat(),
            "params": params.model_dump(),
            "seed": output.seed,
            "preset": self.preset.name,
            "method": params.method,
            "feedforward_model": None if params.method == "sds" else self.preset.feedforward_model,
            "models": models,
            "random_weights": random_weights,
            "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
            "background_removal": output.prepared.background_removal,
            "views": [
                {"file": f"views/{i:03d}_{v.filename}", "elevation_deg": v.elevation_deg, "azimuth_deg": v.azimuth_deg}
                for i, v in enumerate(output.views)
            ],
            "video": output.video,
            "mesh": None if mesh is None else {
                "vertices": len(mesh.vertices),
                "faces": len(mesh.faces),
                "isosurface_threshold": mesh.metadata.get("isosurface_threshold"),
                "isosurface_threshold_source": mesh.metadata.get("isosurface_threshold_source"),
                "silhouette_iou": mesh.metadata.get("silhouette_iou"),
                "silhouette_fit": mesh.metadata.get("silhouette_fit"),
            },
            "training": None if not history else {
                "steps": len(history),
                "final_loss": history[-1].loss,
                "final_losses": history[-1].losses,
                "mean_step_seconds": sum(h.seconds for h in history) / len(history),
            },
            "timings_s": {k: round(v, 3) for k, v in output.timings_s.items()},
            "busy_s": {k: round(v, 3) for k, v in output.busy_s.items()},
            "device": str(self.device),
            "versions": package_versions(),
        }


class _RunTimings:
    """The timing of one run, per stage: wall seconds (``wall_s``, each stage reported to ``progress``), busy
    seconds (``busy_s``: what the stage's worker spent on it) and the GPU fraction of that worker."""

    def __init__(self, progress: ProgressReporter) -> None:
        self.progress = progress
        self.wall_s: dict[str, float] = {}
        self.busy_s: dict[str, float] = {}
        self.gpu_fractions: dict[str, float] = {}

    def timed(self, stage: str, total: int | None = None) -> _StageTimer:
        return _StageTimer(stage, total, self.progress, self.wall_s)

    def measured(self, stage: str, out: Timed) -> Any:
        """``out.value``; its busy seconds are added to ``stage``'s and its GPU fraction kept."""
        self.busy_s[stage] = self.busy_s.get(stage, 0.0) + out.busy_s
        if out.gpu_fraction is not None:
            self.gpu_fractions[stage] = out.gpu_fraction
        return out.value


class _StageTimer:
    """Context manager: reports start/finish of a stage and records its wall time."""

    def __init__(self, stage: str, total: int | None, progress: ProgressReporter, timings: dict[str, float]):
        self.stage, self.total, self.progress, self.timings = stage, total, progress, timings

    def __enter__(self) -> _StageTimer:
        self.started = time.perf_counter()
        self.progress.start(self.stage, self.total)
        return self

    def step(self, stats: StepStats) -> None:
        self.progress.step(self.stage, stats)

    def __exit__(self, exc_type, exc, tb) -> None:
        seconds = time.perf_counter() - self.started
        if exc_type is None:
            self.timings[self.stage] = seconds
            self.progress.finish(self.stage, seconds)
