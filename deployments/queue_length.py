"""The job queue's length on a Redis broker, read without blocking the Serve controller: a blocking probe
(:class:`RedisQueueLength`) and a background poller around it (:class:`QueueLengthPoller`). Used by
:class:`deployments.autoscaling.JobQueueAutoscalingPolicy`.

Examples:
    >>> poller = QueueLengthPoller(RedisQueueLength("redis://lift3d-redis:6379/0"), interval_s=10)
    >>> poller()        # the latest known length (0 until the first probe returns)
    0
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from lift3d.service.config import QueueConfig, redis_url_with_password

__all__ = ["DEFAULT_QUEUE_NAME", "QueueLengthPoller", "RedisQueueLength"]

logger = logging.getLogger("ray.serve")

DEFAULT_QUEUE_NAME: str = QueueConfig.model_fields["queue_name"].default
# Kombu's Redis transport keeps one list per priority step: the queue's own name for priority 0, then
# "<queue>\x06\x16<step>" (kombu.transport.redis: PRIORITY_STEPS and Channel.sep).
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
_KOMBU_PRIORITY_SEP = "\x06\x16"


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
        self.broker_url = redis_url_with_password(broker_url)  # LIFT3D_REDIS_PASSWORD (issue 23)
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
