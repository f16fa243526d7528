"""Delivery and retry policy of jobs on the queue side: one delivery of a job id (:func:`consume_job`), how an
attempt ended (:class:`AttemptResult`), and the sweep that requeues jobs whose worker vanished
(:func:`sweep_stale_jobs`). Torch-free and Ray-free: the Serve consumer (``deployments/consumer.py``) and the tests
call the same functions.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from lift3d.errors import describe_error
from lift3d.logs import in_current_context, job_log_context, set_job_attempt
from lift3d.service.jobs.store import InvalidTransition, JobError, JobNotFound, JobOutcome, JobRecord, JobStore

logger = logging.getLogger(__name__)

__all__ = ["AttemptResult", "LeaseRenewal", "RetryJob", "consume_job", "sweep_stale_jobs"]


class RetryJob(Exception):
    """An attempt failed in a way worth retrying; the task queue should deliver the job again."""


@dataclass
class AttemptResult:
    """How one attempt ended. ``status == "retry"``: failed in a way worth another attempt."""

    status: Literal["succeeded", "failed", "canceled", "retry"]
    error_name: str | None = None
    message: str | None = None
    outcome: JobOutcome | None = None
    busy_s: dict[str, float] = field(default_factory=dict)



def consume_job(
    job_id: str, jobs: JobStore, attempt: Callable[[str], AttemptResult], worker: str,
    *, stale_after_s: float = 300.0, renew_every_s: float | None = None,
) -> str:
    """Handle one delivery of ``job_id`` from the task queue: dispatch an attempt unless that would be a duplicate
    or one too many, hold its lease while ``attempt`` runs, and record final failures.

    ``attempt(job_id)`` runs the dispatched attempt (the trainer starts it: :meth:`JobStore.start_attempt`). While
    it waits for a trainer slot and while it runs, this delivery renews the attempt's lease every
    ``renew_every_s`` seconds (default ``jobs.lease_s / 3``), so a job waiting its turn is never taken for lost.

    Args:
        worker: who takes the job; make it unique per delivery (two deliveries on one replica are two holders).
        stale_after_s: records written before leases existed (``lease_expires_at`` unset): a running job with a
            heartbeat younger than this is held.

    Returns:
        The job's status after this delivery (``"duplicate"`` when another holder's lease is live).

    Raises:
        RetryJob: the attempt failed in a retryable way and attempts remain (the job is back to ``queued``, stage
            ``retrying``; the queue should deliver it again).
    """
    with job_log_context(job_id):
        return _consume_job(job_id, jobs, attempt, worker, stale_after_s, renew_every_s)


def _consume_job(job_id: str, jobs: JobStore, attempt: Callable[[str], AttemptResult], worker: str,
                 stale_after_s: float, renew_every_s: float | None) -> str:
    try:
        record = jobs.get(job_id)
    except JobNotFound:
        logger.warning("task for unknown job %s dropped", job_id)
        return "unknown"
    if record.terminal:
        return record.status
    if jobs.cancel_requested(job_id):
        return _finish_quietly(jobs.cancel, job_id)
    if _held_by_another(jobs, record, worker, stale_after_s):
        logger.info("job %s is held by %s; duplicate delivery dropped", job_id, record.worker)
        return "duplicate"
    if record.attempts >= record.max_attempts:
        message = (record.error.message if record.error else "worker lost") + f" (after {record.attempts} attempts)"
        return _finish_quietly(jobs.fail, job_id, "internal_error", message)
    if record.status == "running":  # a pre-lease record whose worker went quiet: give its attempt up first
        jobs.requeue(job_id, attempt=record.attempts)
    try:
        number = jobs.dispatch(job_id, worker).attempts
    except InvalidTransition:
        return "duplicate"  # another delivery dispatched it between our read and write
    set_job_attempt(number)
    with LeaseRenewal(jobs, job_id, number, renew_every_s or jobs.lease_s / 3):
        try:
            result = attempt(job_id)
        except Exception as exc:  # noqa: BLE001 - the trainer replica died or raised outside the job logic
            logger.warning("job %s: attempt raised %r", job_id, exc, exc_info=True)
            result = AttemptResult("retry", "internal_error", describe_error(exc))
    if result.status != "retry":
        return jobs.get(job_id).status
    record = jobs.get(job_id)
    if record.terminal:
        return record.status
    if record.attempts >= record.max_attempts:
        message = f"{result.message} (after {record.attempts} attempts)"
        return _finish_quietly(jobs.fail, job_id, result.error_name or "internal_error", message)
    error = JobError(name=result.error_name or "internal_error", message=result.message or "")
    try:
        jobs.requeue(job_id, attempt=number, stage="retrying", error=error)
    except InvalidTransition:  # finished or taken over meanwhile: nothing left for this delivery to do
        return jobs.get(job_id).status
    raise RetryJob(f"job {job_id}: {result.message}")


def _held_by_another(jobs: JobStore, record: JobRecord, worker: str, stale_after_s: float) -> bool:
    if record.worker in (None, worker):
        return False
    if record.lease_expires_at is not None:
        return not jobs.lease_expired(record)
    fresh = record.heartbeat_at is not None and jobs.clock() - record.heartbeat_at < stale_after_s
    return record.status == "running" and fresh


class LeaseRenewal:
    """Renews attempt ``attempt``'s lease every ``every_s`` seconds in a daemon thread while the ``with`` block runs;
    stops on its own once the attempt is no longer current (finished, canceled, requeued)."""

    def __init__(self, jobs: JobStore, job_id: str, attempt: int, every_s: float) -> None:
        self.jobs, self.job_id, self.attempt, self.every_s = jobs, job_id, attempt, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=in_current_context(self._run), daemon=True,
                                        name=f"lease-{job_id[:8]}")

    def __enter__(self) -> "LeaseRenewal":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.jobs.renew_lease(self.job_id, self.attempt)
            except InvalidTransition:  # finished or requeued: the lease is not ours to keep
                return
            except Exception:  # noqa: BLE001 - a database hiccup: the next renewal retries, the lease has slack
                logger.warning("lease renewal of job %s failed", self.job_id, exc_info=True)


def _finish_quietly(finish: Callable[..., JobRecord], job_id: str, *args: Any) -> str:
    try:
        return finish(job_id, *args).status
    except InvalidTransition:
        return "already finished"


def sweep_stale_jobs(
    jobs: JobStore, enqueue: Callable[[str], None], *, stale_after_s: float = 300.0,
    queued_timeout_s: float = 24 * 3600.0,
) -> dict[str, str]:
    """Find active jobs nobody works on and act, so that no accepted job is silently lost.

    - dispatched or running, and the lease ran out (:meth:`JobStore.lease_expired`; records without a lease: no
      heartbeat for ``stale_after_s``): the holder died, and the broker may never redeliver (the embedded one
      cannot): requeue and enqueue it again, or fail it when its attempts are used up;
    - queued (never dispatched) for longer than ``queued_timeout_s`` since submission: fail it ("not started in
      time").

    Concurrent sweeps are safe: the requeue is a compare-and-swap that also re-checks the lease.

    Returns:
        ``{job_id: action}`` for the jobs acted on (``requeued`` or ``failed``).
    """
    actions: dict[str, str] = {}
    now = jobs.clock()
    for job_id in jobs.active_ids():
        with job_log_context(job_id):
            _sweep_one(jobs, job_id, enqueue, now, stale_after_s, queued_timeout_s, actions)
    return actions


def _sweep_one(jobs: JobStore, job_id: str, enqueue: Callable[[str], None], now: float, stale_after_s: float,
               queued_timeout_s: float, actions: dict[str, str]) -> None:
    """Sweep one job (see :func:`sweep_stale_jobs`); its errors are logged, and the sweep goes on."""
    try:
        record = jobs.get(job_id)
        if record.terminal:
            return
        if _holder_lost(jobs, record, now, stale_after_s):
            jobs.requeue(job_id, attempt=record.attempts, only_if_lease_expired=record.lease_expires_at is not None)
            if record.attempts >= record.max_attempts:
                jobs.fail(job_id, "internal_error", f"worker lost (after {record.attempts} attempts)")
                actions[job_id] = "failed"
            else:
                enqueue(job_id)
                actions[job_id] = "requeued"
        elif record.status == "queued" and record.worker is None and now - record.created_at > queued_timeout_s:
            jobs.fail(job_id, "internal_error", f"not started within {queued_timeout_s:.0f} s of submission")
            actions[job_id] = "failed"
    except (JobNotFound, InvalidTransition):
        return
    except Exception:  # noqa: BLE001 - one bad record must not stop the sweep
        logger.warning("sweep of job %s failed", job_id, exc_info=True)


def _holder_lost(jobs: JobStore, record: JobRecord, now: float, stale_after_s: float) -> bool:
    if record.lease_expires_at is not None:
        return jobs.lease_expired(record, now)
    return record.status == "running" and now - (record.heartbeat_at or record.updated_at) > stale_after_s
