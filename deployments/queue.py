"""The job queue: Ray Serve asynchronous inference (``@task_consumer`` + ``@task_handler``, Celery adapter).

This module is the broker configuration and the producer side: the ingress and the stale-job sweep enqueue job
ids (:class:`JobQueue`); ``JobConsumer`` replicas (``deployments/consumer.py``) receive them.

Brokers:

- embedded (default, no external service): Kombu's ``filesystem://`` transport and Celery's ``file://`` result
  backend in ``queue_dir`` — for ``serve run`` on one machine. It deletes a message when a worker takes it, so a
  consumer that dies mid-job loses the message; the job record's lease sweep requeues the job.
- clusters: ``redis://host:6379/0`` (``broker_url``; the result backend defaults to the same URL).

Delivery on Redis (``tests/test_redis_broker.py`` runs it against a real redis-server, consumers in processes of
their own):

- Ray's adapter (``ray.serve.task_processor.CeleryTaskProcessorAdapter``) itself sets ``task_acks_late=True``,
  ``task_reject_on_worker_lost=True``, ``worker_pool="threads"`` and ``worker_concurrency`` (the deployment's
  ``max_ongoing_requests``), and refuses those keys in ``app_custom_config``. Late acks: a job's message is
  acknowledged when the handler returns, not when a worker takes it. ``task_reject_on_worker_lost`` does nothing
  with the thread pool (it acts on prefork's ``WorkerLostError``): the worker dies only with its replica process.
- Kombu's Redis transport keeps each delivered, unacknowledged message in the ``unacked`` hash (key: its delivery
  tag; the delivery time in the ``unacked_index`` sorted set). Every live consumer calls ``restore_visible`` when it
  connects and then every ``unacked_restore_interval`` seconds: messages delivered more than ``visibility_timeout``
  seconds ago go back on the queue (same delivery tag, marked redelivered). A replica that dies mid-job — or is
  stopped and then killed by Serve while a job runs — leaves its message there: any live consumer receives it again
  ``visibility_timeout`` plus at most one restore interval after its delivery. Delivery is at least once: an ack
  lost with a Redis crash also leaves the message to be delivered again.
- The visibility timeout is not a time limit: a job that runs longer is delivered again, to any consumer, the one
  running it included. ``consume_job`` drops that copy while the job's lease is live, so a short timeout is safe;
  the copy's ack clears the message's only entry (one tag), so from then on the lease sweep, not Redis, recovers
  the job if its replica dies. The timeout must exceed the adapter's longest retry countdown
  (``retry_backoff_max``, 60 s): a retry waits out its countdown as an unacknowledged message.
- The value for :attr:`QueueConfig.visibility_timeout_s`: 120 s (restore scans then run every 10 s). A job lost
  with its replica is back within ~130 s of its delivery even where the lease sweep cannot help (a message taken
  by a replica that died before dispatching the job, which the sweep leaves ``queued``); the price is one dropped
  copy of each job that runs over 120 s. A timeout above the longest job (hours) avoids the copies but leaves such
  a job waiting that long.
- ``socket_connect_timeout`` / ``socket_timeout`` bound the wait on an unreachable Redis (the ingress answers 503
  instead of hanging); ``broker_connection_max_retries=None``: a consumer reconnects for as long as Redis is down
  (Celery's default gives up after 100 tries, leaving a replica that looks healthy and consumes nothing). Run
  Redis with ``appendonly yes``: queued messages then survive a restart or crash of Redis.

Examples:
    >>> queue = JobQueue(QueueConfig(queue_dir="/tmp/lift3d/queue"))
    >>> queue.enqueue("0123456789abcdef0123456789abcdef")
    >>> task_processor_config(QueueConfig(broker_url="redis://redis:6379/0", visibility_timeout_s=120)
    ...                       ).adapter_config.broker_transport_options["unacked_restore_interval"]
    10
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config

from lift3d.service.config import QueueConfig

__all__ = ["JobQueue", "TASK_NAME", "redis_transport_options", "task_processor_config"]

TASK_NAME = "lift3d.generate"


def task_processor_config(config: QueueConfig) -> TaskProcessorConfig:
    """Ray Serve's task processor config for the Celery adapter of ``config``'s queue."""
    if config.embedded:
        folders = {name: os.path.join(config.queue_dir, name) for name in ("messages", "control", "results")}
        for folder in folders.values():
            os.makedirs(folder, exist_ok=True)
        broker, backend = "filesystem://", config.backend_url or f"file://{folders['results']}"
        transport: dict[str, Any] = {"data_folder_in": folders["messages"], "data_folder_out": folders["messages"],
                                     "control_folder": folders["control"],
                                     "polling_interval": config.polling_interval_s}
    else:
        broker, backend = config.broker_url, config.backend_url or config.broker_url
        transport = redis_transport_options(config.visibility_timeout_s)
    return TaskProcessorConfig(
        queue_name=config.queue_name,
        adapter_config=CeleryAdapterConfig(
            broker_url=broker, backend_url=backend, broker_transport_options=transport,
            app_custom_config={
                "worker_prefetch_multiplier": 1,  # a replica holds only the jobs it runs
                "broker_connection_retry_on_startup": True,
                "broker_connection_max_retries": None,  # reconnect for as long as the broker is down
                "result_expires": 24 * 3600,
                "worker_hijack_root_logger": False,
            },
        ),
        # Celery's own bound, a backstop: consume_job stops at the record's max_attempts first.
        max_retries=config.max_attempts,
    )


def redis_transport_options(visibility_timeout_s: int) -> dict[str, Any]:
    """Kombu Redis transport options: redeliver a message unacknowledged for ``visibility_timeout_s`` seconds.

    Each consumer scans the ``unacked`` set every tenth of the timeout (1 to 10 s) on every restore call
    (``unacked_restore_throttle=1``; Kombu's default 10 × 10 s would add up to 100 s), so a dead consumer's job is
    back on the queue at most ``visibility_timeout_s`` + that interval after it was delivered.
    """
    return {
        "visibility_timeout": visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,  # an unreachable Redis fails a publish in seconds, not minutes
        "socket_timeout": 10,  # a Redis gone without closing the TCP connection too (> the 1 s BRPOP wait)
    }


class JobQueue:
    """The producer side (ingress, sweeper): puts job ids on the queue. Blocking; call from a worker thread.

    Jobs are sent with ``ignore_result``: their outcome lives in the job record, so Celery stores no result and the
    producer does not subscribe to one. (Subscribing is what made an enqueue on an unreachable Redis take ~19 s —
    the result backend's reconnect retries — before failing; now the publish fails in under a second.)
    """

    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._adapter = None
        self._lock = threading.Lock()

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            if self._adapter is None:
                self._adapter = instantiate_adapter_from_config(task_processor_config(self.config))
        self._adapter.enqueue_task_sync(TASK_NAME, args=[job_id], ignore_result=True)
