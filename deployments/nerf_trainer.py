"""``NerfTrainer`` deployment: runs attempts of 3D jobs. The pipeline runs here on
:class:`~lift3d.pipeline.remote.RemoteStages` (``TextToImage``, ``BackgroundRemoval``, ``MultiView`` and, for the
fast methods, ``FeedForward`` through handles), trains the NeRF on this replica's GPU (or fits it to the
feed-forward field), exports the mesh and writes every artifact
(:class:`lift3d.service.worker.runner.JobRunner` does the work).

Examples:
    >>> result = trainer_handle.run.remote(job_id).result()      # from the job queue's consumer
    >>> result.status
    'succeeded'
"""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.metrics import RayMetrics
from deployments.replica import assigned_gpu_fraction, replica_device
from lift3d.costs import CostModel
from lift3d.devices import release_free_memory
from lift3d.logs import install_job_log_filter
from lift3d.pipeline.remote import RemoteStages
from lift3d.presets import get_preset
from lift3d.service.config import TrainerSettings
from lift3d.service.jobs.store import JobRecord
from lift3d.service.state import open_state
from lift3d.service.worker.consumer import AttemptResult
from lift3d.service.worker.runner import JobRunner

__all__ = ["NerfTrainerDeployment"]


@serve.deployment(
    name="NerfTrainer",
    ray_actor_options={"num_gpus": 0.5, "num_cpus": 3, "memory": 8 * 1024**3},
    max_ongoing_requests=2,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 1,
                        "upscale_delay_s": 10, "downscale_delay_s": 600},
    graceful_shutdown_timeout_s=600,
)
class NerfTrainerDeployment:
    """Runs attempts of 3D jobs from their records in the service database."""

    def __init__(self, text_to_image: DeploymentHandle, background: DeploymentHandle, multiview: DeploymentHandle,
                 settings: TrainerSettings, feedforward: DeploymentHandle | None = None) -> None:
        install_job_log_filter()
        self.metrics = RayMetrics()
        fraction = assigned_gpu_fraction()
        cost_model = CostModel.for_gpu(settings.gpu_type, {"sds_training": fraction, "mesh_export": fraction,
                                                              "turntable": fraction},
                                       settings.price_per_gpu_hour)
        self.jobs = open_state(settings, store_retry_s=settings.store_retry_s, metrics=self.metrics).jobs
        self.runner = JobRunner(
            self.jobs, RemoteStages(text_to_image, background, multiview, feedforward),
            get_preset(settings.preset), cost_model, device=replica_device(settings.device, settings.torch_threads),
            heartbeat_s=settings.heartbeat_s, on_finish=self._observe,
            worker=serve.get_replica_context().replica_id.unique_id,
        )

    async def run(self, job_id: str) -> AttemptResult:
        """One attempt of the dispatched job ``job_id``; see :meth:`JobRunner.attempt`."""
        return await asyncio.to_thread(self._attempt, job_id)

    def _attempt(self, job_id: str) -> AttemptResult:
        try:
            return self.runner.attempt(job_id)
        finally:
            # glibc keeps what a job freed resident in its arenas: RSS rose to ~1.1-1.5 GB over tens of tiny jobs
            # with ~0.2 GB in use; trimming after each job keeps it flat at ~550 MB (benchmarks/README.md).
            release_free_memory()

    def _observe(self, record: JobRecord) -> None:
        seconds = (record.finished_at or record.updated_at) - record.created_at
        outcome = record.outcome
        self.metrics.observe_job(record.kind, record.status, seconds, outcome.busy_s if outcome else {},
                                 outcome.gpu_seconds if outcome else {}, outcome.cost_usd if outcome else None)
        charged = self.jobs.charged_credits(record.id) if record.owner_id is not None else None
        if charged is not None:
            self.metrics.count_credits(record.owner_id, charged)
