"""The job queue: Ray Serve asynchronous inference (``@task_consumer`` + ``@task_handler``, Celery adapter).

This module is the broker configuration and the producer side: the ingress and the stale-job sweep enqueue job
ids (:class:`JobQueue`); ``JobConsumer`` replicas (``deployments/consumer.py``) receive them.

Brokers:

- embedded (default, no external service): Kombu's ``filesystem://`` transport and Celery's ``file://`` result
  backend in ``queue_dir`` — for ``serve run`` on one machine;
- clusters: ``redis://host:6379/0`` (``broker_url``; the result backend defaults to the same URL).

Examples:
    >>> queue = JobQueue(QueueConfig(queue_dir="/tmp/lift3d/queue"))
    >>> queue.enqueue("0123456789abcdef0123456789abcdef")
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config

from lift3d.service.config import QueueConfig

__all__ = ["JobQueue", "TASK_NAME", "task_processor_config"]

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
        transport = {"visibility_timeout": config.visibility_timeout_s}
    return TaskProcessorConfig(
        queue_name=config.queue_name,
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
        max_retries=config.max_attempts,
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
                self._adapter = instantiate_adapter_from_config(task_processor_config(self.config))
        self._adapter.enqueue_task_sync(TASK_NAME, args=[job_id])
