"""The job queue: Ray Serve asynchronous inference (``@task_consumer`` + ``@task_handler``, Celery adapter).

The ingress enqueues a job id (:class:`JobQueue`); a ``JobConsumer`` replica receives it in one of its Celery
worker threads, starts an attempt (:func:`lift3d.service.jobs.consume_job`) and calls ``NerfTrainer.run`` through
a DeploymentHandle. Retryable failures go back to Celery (bounded by the job record's ``max_attempts``); every
consumer replica also sweeps for jobs whose worker vanished (:func:`lift3d.service.jobs.sweep_stale_jobs`), because
the embedded broker loses a message whose consumer dies mid-job.

Brokers:

- embedded (default, no external service): Kombu's ``filesystem://`` transport and Celery's ``file://`` result
  backend in ``queue_dir`` — for ``serve run`` on one machine;
- clusters: ``redis://host:6379/0`` (``broker_url``; the result backend defaults to the same URL).

Examples:
    >>> queue = JobQueue(QueueConfig(queue_dir="/tmp/lift3d/queue"))
    >>> queue.enqueue("0123456789abcdef0123456789abcdef")
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config, task_consumer, task_handler

from deployments.metrics import RayMetrics
from lift3d.service.jobs import JobNotFound, JobStore, consume_job, sweep_stale_jobs
from lift3d.io.storage import make_store

logger = logging.getLogger(__name__)

__all__ = ["JobConsumer", "JobQueue", "QueueConfig", "TASK_NAME", "make_job_consumer"]

TASK_NAME = "lift3d.generate"


class QueueConfig(BaseModel):
    """Where jobs are queued and how they are retried."""

    broker_url: str | None = Field(None, description="Celery broker, e.g. redis://redis:6379/0; None: the "
                                   "embedded filesystem broker in queue_dir.")
    backend_url: str | None = Field(None, description="Celery result backend; default: broker_url for Redis, "
                                    "file://{queue_dir}/results for the embedded broker.")
    queue_dir: str = Field("/tmp/lift3d/queue", description="Embedded broker's folder (one machine only).")
    queue_name: str = Field("lift3d-generations", description="Queue (and Celery app) name.")
    polling_interval_s: float = Field(0.25, description="Embedded broker: seconds between folder polls.")
    visibility_timeout_s: int = Field(4 * 3600, description="Redis: seconds before an unacknowledged job is "
                                      "delivered again (duplicates are dropped by the job record's heartbeat).")
    max_attempts: int = Field(3, ge=1, description="Attempts per job, retries included.")

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    def task_processor_config(self) -> TaskProcessorConfig:
        """Ray Serve's task processor config for the Celery adapter."""
        if self.embedded:
            folders = {name: os.path.join(self.queue_dir, name) for name in ("messages", "control", "results")}
            for folder in folders.values():
                os.makedirs(folder, exist_ok=True)
            broker, backend = "filesystem://", self.backend_url or f"file://{folders['results']}"
            transport: dict[str, Any] = {"data_folder_in": folders["messages"], "data_folder_out": folders["messages"],
                                         "control_folder": folders["control"],
                                         "polling_interval": self.polling_interval_s}
        else:
            broker, backend = self.broker_url, self.backend_url or self.broker_url
            transport = {"visibility_timeout": self.visibility_timeout_s}
        return TaskProcessorConfig(
            queue_name=self.queue_name,
            adapter_config=CeleryAdapterConfig(
                broker_url=broker, backend_url=backend, broker_transport_options=transport,
                app_custom_config={
                    "worker_prefetch_multiplier": 1,  # a replica holds only the jobs it runs
                    "broker_connection_retry_on_startup": True,
                    "result_expires": 24 * 3600,
                    "worker_hijack_root_logger": False,
                },
            ),
            # Celery's own bound, a backstop: consume_job stops at the record's max_attempts first.
            max_retries=self.max_attempts,
        )


class JobQueue:
    """The producer side (ingress, sweeper): puts job ids on the queue. Blocking; call from a worker thread."""

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._adapter = None
        self._lock = threading.Lock()

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            if self._adapter is None:
                self._adapter = instantiate_adapter_from_config(self.config.task_processor_config())
        self._adapter.enqueue_task_sync(TASK_NAME, args=[job_id])


class ConsumerSettings(BaseModel):
    """What a consumer replica needs besides the trainer handle."""

    store_url: str
    queue: QueueConfig
    stale_after_s: float = Field(300.0, description="A running job without heartbeat for this long is requeued.")
    queued_timeout_s: float = Field(24 * 3600.0, description="A job queued this long without starting fails.")
    sweep_interval_s: float = Field(30.0, description="Seconds between sweeps for stale jobs.")


class JobConsumer:
    """Receives job ids from the queue and runs each as attempts on ``NerfTrainer`` (see the module docstring).

    Celery runs :meth:`generate` in its worker threads (``max_ongoing_requests`` of them), so the blocking
    handle call below never runs on the replica's event loop.
    """

    def __init__(self, trainer: DeploymentHandle, settings: ConsumerSettings) -> None:
        self.trainer = trainer
        self.settings = settings
        self.jobs = JobStore(make_store(settings.store_url))
        self.queue = JobQueue(settings.queue)
        self.metrics = RayMetrics()
        self.worker = serve.get_replica_context().replica_id.unique_id
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="lift3d-sweeper", daemon=True)
        self._sweeper.start()

    @task_handler(name=TASK_NAME)
    def generate(self, job_id: str) -> str:
        """Handle one delivery of ``job_id``; raises :class:`~lift3d.service.jobs.RetryJob` to have Celery retry."""
        return consume_job(job_id, self.jobs, self._attempt, self.worker, stale_after_s=self.settings.stale_after_s)

    def _attempt(self, job_id: str):
        return self.trainer.run.remote(job_id).result()

    def _sweep_forever(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            try:
                actions = sweep_stale_jobs(self.jobs, self.queue.enqueue, stale_after_s=self.settings.stale_after_s,
                                           queued_timeout_s=self.settings.queued_timeout_s)
                if actions:
                    logger.warning("stale-job sweep: %s", actions)
                self._report_depth()
            except Exception:  # noqa: BLE001 - keep sweeping; the store may come back
                logger.warning("stale-job sweep failed", exc_info=True)

    def _report_depth(self) -> None:
        counts = {"queued": 0, "running": 0}
        for job_id in self.jobs.active_ids():
            try:
                status = self.jobs.get(job_id).status
            except JobNotFound:
                continue
            if status in counts:
                counts[status] += 1
        self.metrics.set_queue_depth(counts["queued"], counts["running"])

    def check_health(self) -> None:
        if not self._sweeper.is_alive():
            raise RuntimeError("stale-job sweeper thread died")

    def __del__(self) -> None:
        self._stop.set()


def make_job_consumer(config: QueueConfig):
    """``JobConsumer`` as a Serve deployment consuming ``config``'s queue (the decorator needs the config)."""
    consumer = task_consumer(task_processor_config=config.task_processor_config())(JobConsumer)
    return serve.deployment(
        consumer,
        name="JobConsumer",
        ray_actor_options={"num_cpus": 0.25, "memory": 1024**3},
        max_ongoing_requests=8,  # = Celery worker threads = jobs in flight per consumer replica
        # Queue work is not a Serve request, so ongoing-request autoscaling does not apply here; with Redis,
        # ray.serve.async_inference_autoscaling_policy can scale consumers on queue length (serve_config.yaml).
        num_replicas=1,
        graceful_shutdown_timeout_s=30,
    )
