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
import threading
import time
from typing import Any, Callable

from ray.serve.config import AutoscalingContext

from lift3d.service.config import QueueConfig

__all__ = ["DEFAULT_QUEUE_NAME", "JobQueueAutoscalingPolicy", "QueueLengthPoller", "RedisQueueLength",
           "desired_replicas"]

logger = logging.getLogger("ray.serve")

DEFAULT_QUEUE_NAME: str = QueueConfig.model_fields["queue_name"].default
# Kombu's Redis transport keeps one list per priority step: the queue's own name for priority 0, then
# "<queue>\x06\x16<step>" (kombu.transport.redis: PRIORITY_STEPS and Channel.sep).
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_KOMBU_PRIORITY_SEP = "\x06\x16"


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


class RedisQueueLength:
    """Blocking probe: how many messages wait in a Celery queue on a Redis broker (all priority lists).

    Messages a consumer has taken but not acknowledged are not counted: they sit in Kombu's ``unacked`` hash, and the
    job they carry is already a request to ``NerfTrainer`` (counted by Serve). A running job's message that Redis
    redelivers after its visibility timeout counts once more until a consumer takes and drops the duplicate.

    Args:
        broker_url: ``redis://[:password@]host:port/db``, the Celery broker URL.
        queue_name: the Celery queue (the Redis list's name).
        timeout_s: connect and read timeout of one probe.
    """

    def __init__(self, broker_url: str, queue_name: str = DEFAULT_QUEUE_NAME, timeout_s: float = 2.0) -> None:
        if not broker_url.startswith(("redis://", "rediss://")):
            raise ValueError(f"the job-queue policy reads Redis brokers only, got {broker_url!r}")
        self.broker_url = broker_url
        self.keys = [queue_name if step == 0 else f"{queue_name}{_KOMBU_PRIORITY_SEP}{step}"
                     for step in _KOMBU_PRIORITY_STEPS]
        self.timeout_s = timeout_s
        self._client = None

    def __call__(self) -> int:
        """The number of queued messages. Raises redis.RedisError when the broker cannot be reached."""
        if self._client is None:
            import redis  # only where the policy polls (the controller); celery[redis] installs it

            self._client = redis.Redis.from_url(self.broker_url, socket_timeout=self.timeout_s,
                                                socket_connect_timeout=self.timeout_s)
        pipeline = self._client.pipeline(transaction=False)
        for key in self.keys:
            pipeline.llen(key)
        return int(sum(pipeline.execute()))


class QueueLengthPoller:
    """Non-blocking view of a blocking probe: the latest length, refreshed in the background every ``interval_s``.

    The controller calls the policy on its event loop every control-loop tick; a probe there would stall every
    deployment's control loop while Redis is slow. Each refresh is one short-lived thread (at most one at a time),
    so nothing outlives the policy when Serve drops it on a redeploy. A failed probe keeps the last value and logs
    a warning.

    Args:
        probe: returns the current queue length; may block (up to its own timeout) and raise.
        interval_s: least seconds between two probes.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, probe: Callable[[], int], interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.probe = probe
        self.interval_s = interval_s
        self.clock = clock
        self.length = 0
        self.polled_at: float | None = None  # clock time of the last successful probe
        self._started_at: float | None = None
        self._thread: threading.Thread | None = None

    def __call__(self) -> int:
        """The latest known length; starts a refresh when the last one is ``interval_s`` old and none is running."""
        now = self.clock()
        idle = self._thread is None or not self._thread.is_alive()
        if idle and (self._started_at is None or now - self._started_at >= self.interval_s):
            self._started_at = now
            self._thread = threading.Thread(target=self._refresh, name="lift3d-queue-length", daemon=True)
            self._thread.start()
        return self.length

    def _refresh(self) -> None:
        try:
            self.length = int(self.probe())
            self.polled_at = self.clock()
        except Exception as error:  # noqa: BLE001 - keep the last value; the broker may come back
            logger.warning("job-queue autoscaling: could not read the queue length (%s); using %d",
                           error, self.length)


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
