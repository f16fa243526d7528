"""``JobConsumer`` deployment: the job queue's consumer (Ray Serve asynchronous inference, Celery adapter).

A replica receives job ids in its Celery worker threads, starts an attempt (:func:`lift3d.service.worker.consumer.consume_job`)
and runs it on ``NerfTrainer`` through a handle. Retryable failures go back to Celery (bounded by the job record's
``max_attempts``); every replica also sweeps for jobs whose worker vanished
(:func:`lift3d.service.worker.consumer.sweep_stale_jobs`), because the embedded broker loses a message whose consumer dies
mid-job (the job's lease runs out), and does the database's housekeeping (:func:`lift3d.service.housekeeping.housekeeping`: expired results,
idempotency records, due webhook deliveries).
"""

from __future__ import annotations

import logging
import threading
import uuid

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.task_consumer import task_consumer, task_handler

from deployments.metrics import RayMetrics
from deployments.queue import TASK_NAME, JobQueue, task_processor_config
from lift3d.logs import install_job_log_filter
from lift3d.service.config import ConsumerSettings, QueueConfig
from lift3d.service.housekeeping import housekeeping, webhook_dispatcher
from lift3d.service.state import open_state
from lift3d.service.worker.consumer import consume_job, sweep_stale_jobs

logger = logging.getLogger(__name__)

__all__ = ["JobConsumer", "make_job_consumer"]


class JobConsumer:
    """Receives job ids from the queue and runs each as attempts on ``NerfTrainer`` (see the module docstring).

    Celery runs :meth:`generate` in its worker threads (``max_ongoing_requests`` of them), so the blocking
    handle call below never runs on the replica's event loop.
    """

    def __init__(self, trainer: DeploymentHandle, settings: ConsumerSettings) -> None:
        install_job_log_filter()
        self.trainer = trainer
        self.settings = settings
        self.metrics = RayMetrics()
        self.state = open_state(settings, store_retry_s=settings.store_retry_s, metrics=self.metrics)
        self.jobs = self.state.jobs
        self.queue = JobQueue(settings.queue)
        self.worker = serve.get_replica_context().replica_id.unique_id
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="lift3d-sweeper", daemon=True)
        self._sweeper.start()
        self._dispatcher = webhook_dispatcher(self.state, settings)  # concurrent across keys (issue 23)
        self._webhooks = threading.Thread(target=self._deliver_forever, name="lift3d-webhooks", daemon=True)
        self._webhooks.start()

    @task_handler(name=TASK_NAME)
    def generate(self, job_id: str) -> str:
        """Handle one delivery of ``job_id``; raises :class:`~lift3d.service.worker.consumer.RetryJob` to have Celery retry.

        The delivery holds the job's lease (renewed while it waits for a trainer slot), under a holder name unique
        to this delivery, so a second delivery of the same job — even to this replica — is dropped as a duplicate.
        """
        holder = f"{self.worker}/{uuid.uuid4().hex[:8]}"
        return consume_job(job_id, self.jobs, self._attempt, holder, stale_after_s=self.settings.stale_after_s)

    def _attempt(self, job_id: str):
        return self.trainer.run.remote(job_id).result()

    def _sweep_forever(self) -> None:
        # The first sweep runs at once: after a restart, jobs of the previous replicas are requeued as soon as their
        # leases run out, not a whole interval later.
        while True:
            try:
                actions = sweep_stale_jobs(self.jobs, self.queue.enqueue, stale_after_s=self.settings.stale_after_s,
                                           queued_timeout_s=self.settings.queued_timeout_s)
                if actions:
                    logger.warning("stale-job sweep: %s", actions)
                housekeeping(self.state, self.settings)  # expiry, idempotency records, webhook deliveries
                self._report_depth()
            except Exception:  # noqa: BLE001 - keep sweeping; the store may come back
                logger.warning("stale-job sweep failed", exc_info=True)
            if self._stop.wait(self.settings.sweep_interval_s):
                return

    def _deliver_forever(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._dispatcher.dispatch()  # starts due attempts and returns; never waits on a receiver
            except Exception:  # noqa: BLE001 - keep delivering; the database or a receiver may come back
                logger.warning("webhook delivery round failed", exc_info=True)

    def _report_depth(self) -> None:
        queued = self.jobs.count_queued()
        self.metrics.set_queue_depth(queued, self.jobs.count_active() - queued)

    def check_health(self) -> None:
        """Unhealthy (Serve replaces the replica) when a background thread died — including the Celery worker,
        which stops for good on some broker connection losses (kombu 5.x: restoring the unacknowledged messages of
        running jobs on a closed Redis connection raises, and Celery calls that unrecoverable): a replica that
        consumes nothing must not look healthy."""
        if not self._sweeper.is_alive() or not self._webhooks.is_alive():
            raise RuntimeError("stale-job sweeper or webhook delivery thread died")
        # The adapter is set by Serve's @task_consumer wrapper; its worker thread is not public API, so a missing
        # attribute is not an error.
        worker = getattr(getattr(self, "_adapter", None), "_worker_thread", None)
        if worker is not None and not worker.is_alive():
            raise RuntimeError("the Celery worker thread stopped (broker connection lost); restarting the consumer")

    def __del__(self) -> None:
        self._stop.set()


def make_job_consumer(config: QueueConfig):
    """``JobConsumer`` as a Serve deployment consuming ``config``'s queue (the decorator needs the config)."""
    consumer = task_consumer(task_processor_config=task_processor_config(config))(JobConsumer)
    return serve.deployment(
        consumer,
        name="JobConsumer",
        ray_actor_options={"num_cpus": 0.25, "memory": 1024**3},
        max_ongoing_requests=8,  # = Celery worker threads = jobs in flight per consumer replica
        # Queue work is not a Serve request, so ongoing-request autoscaling does not apply here; with Redis,
        # deployments.autoscaling.JobQueueAutoscalingPolicy scales consumers on queue length (serve_config.yaml).
        num_replicas=1,
        graceful_shutdown_timeout_s=30,
        health_check_period_s=5,  # a consumer whose Celery worker stopped is replaced within seconds
    )
