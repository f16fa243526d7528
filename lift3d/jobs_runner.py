"""One 3D generation job, run from its record in the artifact store, with the model stages passed in.

The stages are a :class:`JobStages` object: :class:`InProcessStages` loads the models in this process (tests, batch
jobs); the Ray Serve graph passes stages that call other deployments (``deployments/nerf_trainer.py``). The NeRF
itself is trained here, in the caller's process.

Two layers, each usable alone (the queue side, :func:`lift3d.api.jobs.consume_job`, needs no torch):

- :func:`run_job` — the generation's numbered steps; writes artifacts under ``generations/{id}/``; raises on failure.
- :meth:`JobRunner.attempt` — one attempt of a running job: heartbeats, progress, cancellation, error triage;
  returns an :class:`~lift3d.api.jobs.AttemptResult` and never raises for job errors.

Examples:
    >>> jobs = JobStore(LocalStore("/tmp/lift3d"))
    >>> stages = InProcessStages(get_preset("tiny"))
    >>> runner = JobRunner(jobs, stages, get_preset("tiny"), CostModel(1.0, {"sds_training": 1.0}))
    >>> consume_job(job_id, jobs, runner.attempt, worker="local")
    'succeeded'
"""

from __future__ import annotations

import io
import logging
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Generic, Protocol, TypeVar

import torch
from PIL import Image

from lift3d.api.costs import CostModel
from lift3d.api.jobs import AttemptResult, InvalidTransition, JobOutcome, JobRecord, JobStore, describe_error
from lift3d.artifacts import ArtifactWriter
from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.images import load_image
from lift3d.params import GenerationParams
from lift3d.pipeline import RANDOM_WEIGHTS_WARNING, StageModels, package_versions
from lift3d.presets import ModelPreset
from lift3d.steps import NovelView, PreparedInput, Zero123Guidance, generate_views, prepare_input, train_mesh
from nerf.mesh import EmptyIsosurfaceError
from nerf.sds_trainer import Guidance, GuidanceResult, StepStats

logger = logging.getLogger(__name__)

__all__ = [
    "InProcessStages",
    "JobCanceled",
    "JobRunner",
    "JobStages",
    "MeteredGuidance",
    "Timed",
    "run_job",
    "views_zip",
]

T = TypeVar("T")


@dataclass
class Timed(Generic[T]):
    """A stage's result, the seconds the stage was busy producing it (excluding queueing), and the GPU fraction
    of whatever ran it when known (it then replaces the cost model's fraction for that stage)."""

    value: T
    busy_s: float
    gpu_fraction: float | None = None


class MeteredGuidance(Guidance, Protocol):
    """A :class:`~nerf.sds_trainer.Guidance` that sums the busy seconds of its calls in ``busy_s``;
    ``gpu_fraction`` as in :class:`Timed`."""

    busy_s: float
    gpu_fraction: float | None


class JobStages(Protocol):
    """The model stages a job calls."""

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[Image.Image]: ...

    def prepare_input(self, image: Image.Image, remove_background: bool, size: int) -> Timed[PreparedInput]: ...

    def novel_views(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> Timed[list[NovelView]]: ...

    def guidance(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> MeteredGuidance: ...

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{stage: {"source": ..., "random_weights": ...}}`` of the models used so far."""
        ...


class JobCanceled(Exception):
    """The job's cancellation was requested."""


def views_zip(views: list[NovelView]) -> bytes:
    """A ZIP of the views as ``views/NNN_az…_el….png`` (the same names as in the store)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, view in enumerate(views):
            png = io.BytesIO()
            view.image.save(png, format="PNG")
            archive.writestr(f"views/{index:03d}_{view.filename}", png.getvalue())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ in process
class _TimedGuidance:
    def __init__(self, guidance: Guidance) -> None:
        self.inner, self.busy_s, self.gpu_fraction = guidance, 0.0, None

    def __call__(self, rgb, elevation_deg, azimuth_deg, camera_distance, step) -> GuidanceResult:
        start = time.perf_counter()
        try:
            return self.inner(rgb, elevation_deg, azimuth_deg, camera_distance, step)
        finally:
            self.busy_s += time.perf_counter() - start


class InProcessStages:
    """Every stage on models loaded in this process (one :class:`~lift3d.pipeline.StageModels`)."""

    def __init__(self, preset: ModelPreset, device: torch.device | str = "cpu") -> None:
        self.models = StageModels(preset, device)

    def text_to_image(self, params: GenerationParams, seed: int) -> Timed[Image.Image]:
        start = time.perf_counter()
        image = self.models.text_to_image()(
            params.prompt, params.negative_prompt, guidance_scale=params.guidance_scale,
            num_inference_steps=params.num_inference_steps, seed=seed,
        )
        return Timed(image, time.perf_counter() - start)

    def prepare_input(self, image: Image.Image, remove_background: bool, size: int) -> Timed[PreparedInput]:
        start = time.perf_counter()
        prepared = prepare_input(image, remove_background, self.models.background_remover, size=size)
        return Timed(prepared, time.perf_counter() - start)

    def novel_views(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> Timed[list[NovelView]]:
        start = time.perf_counter()
        views = generate_views(self.models.zero123(), prepared, params.view_azimuths(),
                               num_inference_steps=params.num_multiview_steps,
                               guidance_scale=params.multiview_guidance_scale, seed=seed)
        return Timed(views, time.perf_counter() - start)

    def guidance(self, prepared: PreparedInput, params: GenerationParams, seed: int) -> MeteredGuidance:
        from lift3d.steps import condition_zero123

        zero123 = self.models.zero123()
        condition_zero123(zero123, prepared)
        return _TimedGuidance(Zero123Guidance(zero123, params.multiview_guidance_scale, seed=seed))

    def describe(self) -> dict[str, dict[str, Any]]:
        return self.models.describe()


# ------------------------------------------------------------------------------------------------ the steps
@dataclass
class _Progress:
    """What the worker tells the job record; written by the heartbeat thread."""

    stage: str = "starting"
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    changed: bool = True


def run_job(
    record: JobRecord,
    jobs: JobStore,
    stages: JobStages,
    preset: ModelPreset,
    cost_model: CostModel,
    *,
    device: torch.device | str = "cpu",
    on_stage: Callable[[str, int], None] = lambda stage, total: None,
    on_step: Callable[[StepStats], None] = lambda stats: None,
) -> JobOutcome:
    """Run the generation of ``record`` and write its artifacts under ``record.prefix``.

    ``on_stage(stage, total)`` is called when a stage starts and ``on_step`` after each SDS step; both may raise
    (e.g. :class:`JobCanceled`) to stop the job.

    Raises:
        InvalidInputError: unusable input (also from the stages). EmptyIsosurfaceError: no surface found.
        JobCanceled: from the callbacks. Any other exception from the stages or the store.
    """
    params, seed = record.params, int(record.params.seed)
    writer = ArtifactWriter(jobs.store, record.prefix)
    timings: dict[str, float] = {}
    busy: dict[str, float] = {}
    fractions = dict(cost_model.gpu_fractions)

    def measured(name: str, out: Timed) -> Any:
        busy[name] = out.busy_s
        if out.gpu_fraction is not None:
            fractions[name] = out.gpu_fraction
        return out.value

    def stage(name: str, total: int = 0) -> _StageClock:
        on_stage(name, total)
        return _StageClock(name, timings)

    # 1. Input image: the upload, or SDXL for prompts.
    if record.input_key is not None:
        image = load_image(jobs.store.get(record.input_key))
    else:
        with stage("text_to_image", params.num_inference_steps):
            image = measured("text_to_image", stages.text_to_image(params, seed))

    # 2. Background removal and recentring.
    with stage("background_removal"):
        prepared = measured("background_removal", stages.prepare_input(image, params.remove_background,
                                                                       preset.input_size))
    writer.input_image(prepared.rgba)

    # 3. Novel views.
    with stage("novel_views", params.num_views):
        views = measured("novel_views", stages.novel_views(prepared, params, seed))
    writer.views([(v.filename, v.image) for v in views])

    # 4. NeRF with SDS guidance, then marching cubes and export.
    mesh, history = None, []
    if params.return_3d:
        nerf = preset.nerf if params.num_3d_max_steps is None else preset.nerf.with_max_steps(params.num_3d_max_steps)
        guidance = stages.guidance(prepared, params, seed)
        with stage("sds_training", nerf.training.max_steps):
            mesh, history = train_mesh(prepared, guidance, nerf, seed=seed, device=device, callback=on_step)
        measured("sds_guidance", Timed(None, guidance.busy_s, guidance.gpu_fraction))
        busy["sds_training"] = timings["sds_training"]
        with stage("mesh_export"):
            writer.model(mesh)
        busy["mesh_export"] = timings["mesh_export"]
        main_key, content_type = "model.glb", "model/gltf-binary"
    else:
        with stage("views_zip"):
            writer.put("views.zip", views_zip(views), "application/zip")
        main_key, content_type = "views.zip", "application/zip"

    # 5. Costs and metadata.
    cost_model = replace(cost_model, gpu_fractions=fractions)
    gpu_seconds = cost_model.gpu_seconds(busy)
    cost = cost_model.cost_usd(busy)
    models = stages.describe()
    random_weights = any(m.get("random_weights") for m in models.values())
    metadata = {
        "id": record.id,
        "kind": record.kind,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "params": params.model_dump(),
        "seed": seed,
        "preset": preset.name,
        "models": models,
        "random_weights": random_weights,
        "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
        "background_removal": prepared.background_removal,
        "views": [{"file": f"views/{i:03d}_{v.filename}", "elevation_deg": v.elevation_deg,
                   "azimuth_deg": v.azimuth_deg} for i, v in enumerate(views)],
        "mesh": None if mesh is None else {"vertices": len(mesh.vertices), "faces": len(mesh.faces)},
        "training": None if not history else {
            "steps": len(history), "final_loss": history[-1].loss, "final_losses": history[-1].losses,
            "mean_step_seconds": sum(h.seconds for h in history) / len(history),
        },
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "busy_s": {k: round(v, 3) for k, v in busy.items()},
        "cost": {"usd": cost, "gpu_seconds": gpu_seconds, **cost_model.describe()},
        "attempt": record.attempts,
        "device": str(device),
        "versions": package_versions(),
    }
    writer.metadata(metadata)
    names = [key[len(record.prefix):] for key in writer.keys]
    return JobOutcome(main_key=main_key, content_type=content_type, artifacts=names,
                      timings_s=metadata["timings_s"], busy_s=busy, gpu_seconds=gpu_seconds, cost_usd=cost,
                      random_weights=random_weights)


class _StageClock:
    def __init__(self, name: str, timings: dict[str, float]) -> None:
        self.name, self.timings = name, timings

    def __enter__(self) -> "_StageClock":
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.timings[self.name] = time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------------ one attempt
_NOT_RETRIED = (InvalidInputError, EmptyIsosurfaceError, Lift3DError)
"""Deterministic failures: the same seed and input would fail the same way again."""


class JobRunner:
    """Runs attempts of jobs on given stages: heartbeats, progress, cancellation and error triage.

    Args:
        jobs: the job store.
        stages: the model stages.
        preset: model preset (NeRF size, input size).
        cost_model: prices stage busy time.
        device: where the NeRF trains.
        heartbeat_s: seconds between job-record writes while running.
        on_finish: called with the finished record (metrics).
    """

    def __init__(self, jobs: JobStore, stages: JobStages, preset: ModelPreset, cost_model: CostModel, *,
                 device: torch.device | str = "cpu", heartbeat_s: float = 2.0,
                 on_finish: Callable[[JobRecord], None] = lambda record: None) -> None:
        self.jobs, self.stages, self.preset, self.cost_model = jobs, stages, preset, cost_model
        self.device, self.heartbeat_s, self.on_finish = device, heartbeat_s, on_finish

    def attempt(self, job_id: str) -> AttemptResult:
        """Run the job (already ``running``) once; record success, final failure or cancellation.

        Failures worth a retry are not recorded: the result says ``retry`` and the caller decides.
        """
        record = self.jobs.get(job_id)
        progress = _Progress()
        stop = threading.Event()
        canceled = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, progress, stop, canceled), daemon=True,
                                name=f"heartbeat-{job_id[:8]}")
        beat.start()
        started = time.perf_counter()
        stage_started = [started]

        def on_stage(stage: str, total: int) -> None:
            if canceled.is_set() or self.jobs.cancel_requested(job_id):
                raise JobCanceled(job_id)
            stage_started[0] = time.perf_counter()
            progress.stage, progress.step, progress.total, progress.eta_s = stage, 0, total, None
            progress.changed = True

        def on_step(stats: StepStats) -> None:
            if canceled.is_set():
                raise JobCanceled(job_id)
            elapsed = time.perf_counter() - stage_started[0]
            progress.step, progress.total = stats.step, stats.total
            progress.eta_s = round(elapsed / stats.step * (stats.total - stats.step), 1)
            progress.changed = True

        try:
            outcome = run_job(record, self.jobs, self.stages, self.preset, self.cost_model, device=self.device,
                              on_stage=on_stage, on_step=on_step)
        except JobCanceled:
            return self._finish(job_id, AttemptResult("canceled"), stop, beat)
        except _NOT_RETRIED as exc:
            name = exc.name if isinstance(exc, Lift3DError) else "internal_error"
            logger.info("job %s failed: %s", job_id, exc)
            return self._finish(job_id, AttemptResult("failed", name, describe_error(exc)), stop, beat)
        except Exception as exc:  # noqa: BLE001 - any other failure is retried a bounded number of times
            logger.exception("job %s attempt %d failed", job_id, record.attempts)
            stop.set()
            beat.join()
            return AttemptResult("retry", "internal_error", f"{type(exc).__name__}: {describe_error(exc)}")
        logger.info("job %s succeeded in %.1f s", job_id, time.perf_counter() - started)
        return self._finish(job_id, AttemptResult("succeeded", outcome=outcome), stop, beat)

    def _finish(self, job_id: str, result: AttemptResult, stop: threading.Event,
                beat: threading.Thread) -> AttemptResult:
        stop.set()
        beat.join()
        try:
            if result.status == "succeeded":
                record = self.jobs.succeed(job_id, result.outcome)
            elif result.status == "canceled":
                record = self.jobs.cancel(job_id)
            else:
                record = self.jobs.fail(job_id, result.error_name or "internal_error", result.message or "failed")
        except InvalidTransition:  # finished elsewhere (e.g. a duplicate delivery); keep what is stored
            return result
        self.on_finish(record)
        return result

    def _heartbeat(self, job_id: str, progress: _Progress, stop: threading.Event, canceled: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                if self.jobs.cancel_requested(job_id):
                    canceled.set()
                changes = {}
                if progress.changed:
                    progress.changed = False
                    changes = {"stage": progress.stage, "eta_s": progress.eta_s,
                               "progress": {"step": progress.step, "total": progress.total}}
                self.jobs.heartbeat(job_id, **changes)
            except InvalidTransition:
                return
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the job; the next beat retries
                logger.warning("heartbeat of job %s failed", job_id, exc_info=True)
