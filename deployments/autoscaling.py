"""Autoscaling on queued work: replicas follow the job queue, not only the requests Serve has seen.

A submitted job waits in the Celery queue on Redis (the list named :attr:`QueueConfig.queue_name
<lift3d.service.config.QueueConfig.queue_name>`) until a ``JobConsumer`` takes it and calls ``NerfTrainer``.
Serve's default policy counts only the requests a deployment has received, so a backlog of fifty jobs looks like
no load at all to ``NerfTrainer`` and ``MultiView``. :class:`JobQueueAutoscalingPolicy` adds the backlog::

    desired = ceil((ongoing requests + queued jobs) / jobs_per_replica), clamped to [min_replicas, max_replicas]

``jobs_per_replica`` is how many jobs one replica serves at a time: a ``NerfTrainer`` replica runs
``max_ongoing_requests`` jobs; a ``MultiView`` replica serves the SDS steps of ``sds_max_batch_size`` trainer jobs in
one batched forward; a ``JobConsumer`` replica has ``max_ongoing_requests`` Celery threads. Every job in the queue
becomes exactly one request to each of these deployments, so requests and jobs are the same unit.

Serve wraps every custom policy (``ray.serve.autoscaling_policy._apply_autoscaling_config``): the
``upscale_delay_s`` / ``downscale_delay_s`` and the scaling factors of the deployment's ``autoscaling_config`` still
apply to the number returned here, and scaling up from zero replicas skips the delay.

Configured in ``serve_config.yaml`` (``policy_kwargs`` are this class's constructor arguments)::

    autoscaling_config:
      min_replicas: 1
      max_replicas: 8
      policy:
        policy_function: deployments.autoscaling:JobQueueAutoscalingPolicy
        policy_kwargs: {jobs_per_replica: 2, broker_url: "redis://lift3d-redis:6379/0"}

The policy runs in the Serve controller. Serve pickles this module by value, so it keeps no module-level state and
imports ``redis`` only when it polls.

Examples:
    >>> desired_replicas(ongoing_requests=1, queued_jobs=5, jobs_per_replica=2, min_replicas=1, max_replicas=8)
    3
    >>> policy = JobQueueAutoscalingPolicy(jobs_per_replica=2, queue_length=lambda: 5)  # a fixed queue (tests)
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from ray.serve.config import AutoscalingContext

from deployments.queue_length import DEFAULT_QUEUE_NAME, QueueLengthPoller, RedisQueueLength

__all__ = ["DEFAULT_QUEUE_NAME", "JobQueueAutoscalingPolicy", "QueueLengthPoller", "RedisQueueLength",
           "desired_replicas"]

logger = logging.getLogger("ray.serve")

def desired_replicas(ongoing_requests: float, queued_jobs: int, jobs_per_replica: float, min_replicas: int,
                     max_replicas: int) -> int:
    """Replicas for ``ongoing_requests`` in flight plus ``queued_jobs`` waiting, ``jobs_per_replica`` per replica.

    Args:
        ongoing_requests: requests running on or queued for the deployment's replicas (Serve's look-back average).
        queued_jobs: jobs waiting in the broker's queue (no replica has them yet).
        jobs_per_replica: jobs (= requests) one replica serves at a time; > 0.
        min_replicas, max_replicas: the bounds (capacity-adjusted by Serve).

    Returns:
        ``ceil((ongoing_requests + queued_jobs) / jobs_per_replica)`` clamped to ``[min_replicas, max_replicas]``.

    Examples:
        >>> desired_replicas(0, 0, 2, 1, 8), desired_replicas(3, 0, 2, 1, 8), desired_replicas(4, 40, 2, 1, 8)
        (1, 2, 8)
    """
    if jobs_per_replica <= 0:
        raise ValueError(f"jobs_per_replica must be > 0, got {jobs_per_replica}")
    work = max(0.0, float(ongoing_requests)) + max(0, int(queued_jobs))
    return max(min_replicas, min(max_replicas, math.ceil(work / jobs_per_replica)))


class JobQueueAutoscalingPolicy:
    """Serve autoscaling policy (class-based): ongoing requests plus the job queue's length, per replica.

    Args:
        jobs_per_replica: jobs one replica serves at a time (see the module docstring); > 0.
        broker_url: the Celery broker on Redis (the same URL as ``args.queue.broker_url``).
        queue_name: the Celery queue; default :data:`DEFAULT_QUEUE_NAME` (``QueueConfig.queue_name``'s default).
        poll_interval_s: least seconds between two reads of the queue length.
        queue_length: instead of the broker, a non-blocking callable returning the queue length (tests).

    Raises:
        ValueError: ``jobs_per_replica`` not > 0, or neither ``broker_url`` nor ``queue_length`` given.
    """

    def __init__(self, jobs_per_replica: float, broker_url: str | None = None,
                 queue_name: str = DEFAULT_QUEUE_NAME, poll_interval_s: float = 10.0,
                 queue_length: Callable[[], int] | None = None) -> None:
        if jobs_per_replica <= 0:
            raise ValueError(f"jobs_per_replica must be > 0, got {jobs_per_replica}")
        if queue_length is None:
            if broker_url is None:
                raise ValueError("JobQueueAutoscalingPolicy needs broker_url (policy_kwargs)")
            queue_length = QueueLengthPoller(RedisQueueLength(broker_url, queue_name), poll_interval_s)
        self.jobs_per_replica = jobs_per_replica
        self.queue_length = queue_length

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        """(replicas wanted, policy state) for one control-loop tick of one deployment."""
        queued = self.queue_length()
        replicas = desired_replicas(ctx.total_num_requests, queued, self.jobs_per_replica,
                                    ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas)
        return replicas, {"queued_jobs": queued}  # Serve merges in its own delay bookkeeping
