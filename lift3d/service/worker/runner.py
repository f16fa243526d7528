"""One 3D generation job, run from its record in the artifact store, with the model stages passed in.

The job runs :class:`~lift3d.pipeline.Lift3DPipeline` on a :class:`~lift3d.pipeline.providers.StageProvider`:
:class:`~lift3d.pipeline.providers.InProcessStages` loads the models in this process (tests, batch jobs); the Ray
Serve graph passes :class:`~lift3d.pipeline.remote.RemoteStages` (handles to other deployments). The NeRF itself
is trained here, in the caller's process.

Two layers, each usable alone (the queue side, :func:`lift3d.service.worker.consumer.consume_job`, needs no torch):

- :func:`run_job` — the pipeline plus the job's extras (views ZIP, cost); writes artifacts under ``generations/{id}/``; raises on failure.
  ``views-to-3d`` jobs go to :func:`run_views_job` (:func:`lift3d.reconstruct.reconstruct` on the uploaded views).
- :meth:`JobRunner.attempt` — one attempt of a running job: heartbeats, progress, cancellation, error triage;
  returns an :class:`~lift3d.service.worker.consumer.AttemptResult` and never raises for job errors.

Examples:
    >>> jobs = JobStore(Database("sqlite:////tmp/lift3d/lift3d.db"), LocalStore("/tmp/lift3d/store"))
    >>> stages = InProcessStages(get_preset("tiny"))  # lift3d.pipeline.providers
    >>> runner = JobRunner(jobs, stages, get_preset("tiny"), CostModel(1.0, {"sds_training": 1.0}))
    >>> consume_job(job_id, jobs, runner.attempt, worker="local")
    'succeeded'
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lift3d.costs import CostModel, bill
from lift3d.errors import InvalidInputError, Lift3DError, describe_error, find_cause
from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.encoded import EncodedImage
from lift3d.io.media_types import GLB, ZIP
from lift3d.io.mesh_assets import MeshExportOptions
from lift3d.logs import in_current_context, job_log_context, set_job_attempt
from lift3d.pipeline import Lift3DPipeline
from lift3d.pipeline.providers import StageProvider
from lift3d.pipeline.steps import NovelView
from lift3d.presets import ModelPreset
from lift3d.reconstruct import ReconstructOptions, reconstruct
from lift3d.service.jobs.store import InvalidTransition, JobOutcome, JobRecord, JobStore
from lift3d.service.jobs.uploads import ReconstructParams, extract_views_zip, fetch_upload
from lift3d.service.worker.consumer import AttemptResult
from nerf.mesh import EmptyIsosurfaceError
from nerf.trainers.photometric import ReconstructionConfig
from nerf.trainers.stats import StepStats

logger = logging.getLogger(__name__)

__all__ = ["JobCanceled", "JobRunner", "run_job", "run_views_job", "views_zip"]


class JobCanceled(Exception):
    """The job's cancellation was requested."""


def views_zip(views: list[NovelView]) -> bytes:
    """A ZIP of the views as ``views/NNN_az…_el….png`` (the same names as in the store)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, view in enumerate(views):
            archive.writestr(f"views/{index:03d}_{view.filename}", view.png.data)
    return buffer.getvalue()


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
    stages: StageProvider,
    preset: ModelPreset,
    cost_model: CostModel,
    *,
    device: torch.device | str = "cpu",
    on_stage: Callable[[str, int], None] = lambda stage, total: None,
    on_step: Callable[[StepStats], None] = lambda stats: None,
) -> JobOutcome:
    """Run the generation of ``record`` (the one-process pipeline on ``stages``) and write its artifacts under
    ``record.prefix``, plus ``views.zip`` for views-only jobs and the job's cost in ``metadata.json``.

    ``on_stage(stage, total)`` is called when a stage starts and ``on_step`` after each SDS step; both may raise
    (e.g. :class:`JobCanceled`) to stop the job.

    Raises:
        InvalidInputError: unusable input (also from the stages). EmptyIsosurfaceError: no surface found.
        JobCanceled: from the callbacks. Any other exception from the stages or the store.
    """
    if record.kind == "views-to-3d":
        return run_views_job(record, jobs, cost_model, config=preset.reconstruction, device=device,
                             on_stage=on_stage, on_step=on_step)
    params = record.params
    writer = ArtifactWriter(jobs.store, record.prefix)
    image = EncodedImage(jobs.store.get(record.input_key)) if record.input_key is not None else None
    pipeline = Lift3DPipeline(preset, device=device, stages=stages)
    output = pipeline.run(params, image, writer, progress=_CallbackProgress(on_stage, on_step))

    busy = dict(output.busy_s)
    if params.return_3d:
        main_key, content_type = "model.glb", GLB
    else:
        started = time.perf_counter()
        writer.put("views.zip", views_zip(output.views), ZIP)
        busy["views_zip"] = time.perf_counter() - started
        main_key, content_type = "views.zip", ZIP

    cost = bill(cost_model, busy, output.gpu_fractions)
    metadata = {
        **output.metadata,
        "id": record.id,
        "kind": record.kind,
        "busy_s": {k: round(v, 3) for k, v in busy.items()},
        "cost": cost.metadata(),
        "attempt": record.attempts,
    }
    writer.metadata(metadata)
    return JobOutcome(main_key=main_key, content_type=content_type, artifacts=writer.names,
                      timings_s=metadata["timings_s"], busy_s=busy, gpu_seconds=cost.gpu_seconds,
                      cost_usd=cost.cost_usd, random_weights=bool(metadata["random_weights"]))


def run_views_job(
    record: JobRecord,
    jobs: JobStore,
    cost_model: CostModel,
    *,
    config: ReconstructionConfig | None = None,
    device: torch.device | str = "cpu",
    on_stage: Callable[[str, int], None] = lambda stage, total: None,
    on_step: Callable[[StepStats], None] = lambda stats: None,
) -> JobOutcome:
    """Run a ``views-to-3d`` job: unpack its views ZIP to a temporary folder and
    :func:`~lift3d.reconstruct.reconstruct` it straight into the store under ``record.prefix`` (main artifact
    ``model.glb``). ``config``: the trainer configuration (the preset's; steps, seed and mesh resolution come from
    the job).

    Raises:
        InvalidInputError: a bad ZIP, ``transforms.json`` or image (the job fails with the message).
        JobCanceled: from the callbacks. Any other exception from training or the store.
    """
    # 1. unpack the upload (the views loader reads files)
    if record.input_key is None:
        raise InvalidInputError("views-to-3d job without an upload")
    options = record.reconstruct or ReconstructParams()
    writer = ArtifactWriter(jobs.store, record.prefix)
    with tempfile.TemporaryDirectory(prefix=f"lift3d-{record.id[:8]}-") as tmp:
        on_stage("load_views", 0)
        with open(Path(tmp) / "upload.zip", "w+b") as upload:  # on disk, never whole in memory (issue 23)
            fetch_upload(jobs.store, record.input_key, upload)
            views_dir = extract_views_zip(upload, Path(tmp) / "views")
        # 2. fit and export into the store; metadata names the upload, not the temporary folder
        result = reconstruct(views_dir, writer, ReconstructOptions(
            steps=options.steps, seed=record.params.seed, mesh_resolution=options.mesh_resolution,
            export=MeshExportOptions.from_params(options), device=str(device)),
            config=config, progress=_CallbackProgress(on_stage, on_step), source="upload.zip", write_metadata=False)
    # 3. cost, then metadata.json
    busy = dict(result.metadata.get("timings_s", {}))
    # the NeRF trains on this replica's GPU share, the one its SDS training is priced at
    cost = bill(cost_model, busy, {"nerf_training": cost_model.gpu_fractions.get("sds_training", 0.0)})
    metadata = {**result.metadata, "id": record.id, "kind": record.kind, "attempt": record.attempts,
                "cost": cost.metadata()}
    writer.metadata(metadata)
    return JobOutcome(main_key="model.glb", content_type=GLB, artifacts=writer.names,
                      timings_s=busy, busy_s=busy, gpu_seconds=cost.gpu_seconds, cost_usd=cost.cost_usd)


class _CallbackProgress:
    """A :class:`~lift3d.progress.ProgressReporter` calling the job runner's ``on_stage`` / ``on_step`` callbacks."""

    def __init__(self, on_stage: Callable[[str, int], None], on_step: Callable[[StepStats], None]) -> None:
        self.on_stage, self.on_step = on_stage, on_step

    def start(self, stage: str, total: int | None = None) -> None:
        self.on_stage(stage, total or 0)

    def step(self, stage: str, stats: StepStats) -> None:
        self.on_step(stats)

    def finish(self, stage: str, seconds: float) -> None:
        pass


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
        heartbeat_s: seconds between job-record writes while running; each renews the attempt's lease, so keep it
            well under the job store's ``lease_s`` (a third or less).
        on_finish: called with the finished record (metrics).
        worker: this runner's name in job records (e.g. the replica id).
    """

    def __init__(self, jobs: JobStore, stages: StageProvider, preset: ModelPreset, cost_model: CostModel, *,
                 device: torch.device | str = "cpu", heartbeat_s: float = 2.0,
                 on_finish: Callable[[JobRecord], None] = lambda record: None, worker: str = "local") -> None:
        self.jobs, self.stages, self.preset, self.cost_model = jobs, stages, preset, cost_model
        self.device, self.heartbeat_s, self.on_finish, self.worker = device, heartbeat_s, on_finish, worker

    def attempt(self, job_id: str) -> AttemptResult:
        """Run the job's current attempt once — dispatched (``queued``, the queue's consumer holds it: it starts
        running here) or already ``running`` — and record success, final failure or cancellation.

        Failures worth a retry are not recorded: the result says ``retry`` and the caller decides. An attempt that
        is no longer current when it would start (canceled while it waited: ``canceled``; requeued: ``retry``) does
        not run. Every log line of the attempt carries the job id (:func:`lift3d.logs.job_log_context`).
        """
        with job_log_context(job_id):
            return self._attempt(job_id)

    def _attempt(self, job_id: str) -> AttemptResult:
        record = self.jobs.get(job_id)
        if record.terminal:  # canceled while it waited for this trainer, or finished by an earlier delivery
            return AttemptResult(record.status if record.status in ("succeeded", "failed", "canceled") else "failed")
        if record.status == "queued":
            try:
                record = self.jobs.start_attempt(job_id, record.attempts, self.worker)
            except InvalidTransition:
                current = self.jobs.get(job_id)
                return AttemptResult("canceled" if current.status == "canceled" else "retry",
                                     message=f"attempt {record.attempts} no longer current ({current.status})")
        progress = _Progress()
        stop = threading.Event()
        canceled = threading.Event()
        number = record.attempts  # fences every write below: a requeued job's new attempt makes this one stale
        set_job_attempt(number)
        beat = threading.Thread(target=in_current_context(self._heartbeat), args=(job_id, number, progress, stop, canceled), daemon=True,
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
            return self._finish(job_id, number, AttemptResult("canceled"), stop, beat)
        except Exception as exc:  # noqa: BLE001 - triaged below; users see describe_error's line, the log the rest
            # Errors of remote stages arrive wrapped (Ray's RayTaskError): triage and describe by the root cause.
            cause = find_cause(exc, _NOT_RETRIED)
            if cause is not None:
                name = cause.name if isinstance(cause, Lift3DError) else "internal_error"
                logger.info("job %s failed: %r", job_id, exc)
                message = describe_error(cause, _NOT_RETRIED)
                return self._finish(job_id, number, AttemptResult("failed", name, message), stop, beat)
            logger.exception("job %s attempt %d failed", job_id, record.attempts)
            stop.set()
            beat.join()
            return AttemptResult("retry", "internal_error", describe_error(exc))
        logger.info("job %s succeeded in %.1f s", job_id, time.perf_counter() - started)
        return self._finish(job_id, number, AttemptResult("succeeded", outcome=outcome), stop, beat)

    def _finish(self, job_id: str, attempt: int, result: AttemptResult, stop: threading.Event,
                beat: threading.Thread) -> AttemptResult:
        stop.set()
        beat.join()
        try:
            if result.status == "succeeded":
                record = self.jobs.succeed(job_id, result.outcome, attempt=attempt)
            elif result.status == "canceled":
                record = self.jobs.cancel(job_id, attempt=attempt)
            else:
                record = self.jobs.fail(job_id, result.error_name or "internal_error", result.message or "failed",
                                        attempt=attempt)
        except InvalidTransition:  # finished elsewhere, or requeued (StaleAttempt): keep what is stored
            return result
        self.on_finish(record)
        return result

    def _heartbeat(self, job_id: str, attempt: int, progress: _Progress, stop: threading.Event,
                   canceled: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                if self.jobs.cancel_requested(job_id):
                    canceled.set()
                changes = {}
                if progress.changed:
                    progress.changed = False
                    changes = {"stage": progress.stage, "eta_s": progress.eta_s,
                               "progress": {"step": progress.step, "total": progress.total}}
                self.jobs.heartbeat(job_id, attempt=attempt, **changes)
            except InvalidTransition:
                return
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the job; the next beat retries
                logger.warning("heartbeat of job %s failed", job_id, exc_info=True)
