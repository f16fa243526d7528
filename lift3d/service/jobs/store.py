"""Job records in the service database, so that any replica can answer for any job and no update is lost.

One row per job (:class:`lift3d.service.db.models.Job`): the whole :class:`JobRecord` as JSON plus the columns that
queries and guards need. Every write is a compare-and-swap on the row's ``version`` (``UPDATE … WHERE id = :id AND
version = :read``), so of two replicas racing to advance a job exactly one wins and the other re-reads; nothing a
writer did not mean to change is overwritten. Writes from a worker name their attempt (``attempt=``): a write from an
attempt that is no longer the job's current one is refused (:class:`StaleAttempt`), so a worker presumed dead cannot
finish a job a second time after it was requeued.

Status only moves forward — ``queued → running → succeeded | failed | canceled → expired`` — except that an attempt
which ended in a retryable failure, or whose worker vanished, puts its job back to ``queued`` (:meth:`JobStore.requeue`).
A finished record is never rewritten except to expire it. ``attempts`` counts dispatched attempts, bounded by
``max_attempts``.

Leases: whoever holds an attempt holds the job's lease (``lease_expires_at``) and renews it every few seconds. A
consumer that has taken a job from the queue *dispatches* it (:meth:`JobStore.dispatch`): the job stays ``queued``
(stage ``waiting_for_worker``) while it waits for a free trainer slot, and the consumer renews the lease. The
trainer makes it ``running`` when it really starts (:meth:`JobStore.start_attempt`) and its heartbeats renew the
lease from then on. A lease that runs out means its holder is gone (a killed replica, a restarted service): the
sweep requeues the job within seconds (:func:`lift3d.service.worker.consumer.sweep_stale_jobs`), where a heartbeat age
alone could not tell a dead worker from a job waiting its turn.

Credits and webhooks change in the same transaction as the job: :meth:`JobStore.create` reserves the estimate
(:func:`lift3d.service.accounts.credits.reserve`), a terminal transition settles to the measured cost or refunds it, and every
transition a webhook subscriber cares about writes an outbox row (:func:`lift3d.service.webhooks.events.enqueue_event`).

Examples:
    >>> jobs = JobStore(Database("sqlite:////tmp/lift3d/lift3d.db"), LocalStore("/tmp/lift3d/store"))
    >>> record = jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=0), input_key="..."))
    >>> jobs.begin_attempt(record.id, worker="replica-1").status
    'running'
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from pydantic import BaseModel
from sqlalchemy import bindparam, func, select, update

from lift3d.io.storage.base import ArtifactStore
from lift3d.service.accounts import credits
from lift3d.service.db import Database
from lift3d.service.db.models import Job
from lift3d.service.jobs.artifacts import job_prefix
from lift3d.service.jobs.limits import JobLimits, admit
from lift3d.service.jobs.messages import redact_paths
from lift3d.service.jobs.records import (ACTIVE, ANY_OWNER, TERMINAL, InvalidTransition, JobError, JobNotFound,
                                        JobOutcome, JobRecord, StaleAttempt, check_current_attempt, check_transition,
                                        is_job_id, new_job_id)

logger = logging.getLogger(__name__)

__all__ = [
    "ANY_OWNER",
    "InvalidTransition",
    "JobError",
    "JobNotFound",
    "JobOutcome",
    "JobRecord",
    "JobStore",
    "StaleAttempt",
    "TERMINAL",
    "is_job_id",
    "new_job_id",
]

_CAS_RETRIES = 50
_RECORD_BY_ID = select(Job.record, Job.owner_id).where(Job.id == bindparam("job_id"))  # built once: the poll's read


Hook = Callable[[Any, JobRecord, JobRecord], None]
"""Called inside the transaction of a successful write: ``(session, before, after)``."""


class JobStore:
    """Reads and writes :class:`JobRecord` rows; artifacts and uploads stay in ``store``.

    Args:
        database: the service database (migrated).
        store: the artifact store (uploads, results).
        clock: seconds since the epoch (injectable for tests).
        usd_per_credit: converts a job's measured ``cost_usd`` into credits when it settles (> 0).
        result_ttl_s: a finished job's results expire this long after it ends (``expires_at``), > 0.
        on_write: called inside the transaction of every successful write (webhook outbox, metrics).
        lease_s: seconds an attempt's lease lasts after each renewal (dispatch, start, heartbeat), > 0. Holders
            renew it every ``lease_s / 3`` seconds or more often, so two missed renewals still keep it.
    """

    def __init__(self, database: Database, store: ArtifactStore, clock: Callable[[], float] = time.time, *,
                 usd_per_credit: float = 0.01, result_ttl_s: float = 24 * 3600.0,
                 on_write: Hook | None = None, lease_s: float = 30.0) -> None:
        if not usd_per_credit > 0 or not result_ttl_s > 0 or not lease_s > 0:
            raise ValueError("usd_per_credit, result_ttl_s and lease_s must be > 0")
        self.database, self.store, self.clock = database, store, clock
        self.usd_per_credit, self.result_ttl_s, self.on_write = usd_per_credit, result_ttl_s, on_write
        self.lease_s = lease_s

    # ------------------------------------------------------------------------------------------ read / create
    def create(self, record: JobRecord, *, reserve_mc: int = 0, limits: JobLimits | None = None,
               max_concurrent_jobs: int | None = None) -> JobRecord:
        """Insert a queued job; with an owner and ``reserve_mc`` > 0 (milli-credits), reserve that much of the
        owner's balance in the same transaction. With ``limits``, the job is first admitted in that transaction,
        under the admission lock (:func:`lift3d.service.jobs.limits.admit`; ``max_concurrent_jobs``: the owner's
        own limit, None: the default), so concurrent submits cannot overshoot a limit.

        Raises:
            lift3d.service.accounts.credits.InsufficientCredits: the balance is short (nothing is written).
            RateLimitedError, OverloadedError: the owner's concurrency or the queue-depth limit (nothing is written).
        """
        with self.database.transaction() as session:
            if limits is not None:
                admit(session, record.owner_id, limits, max_concurrent_jobs)
            if record.owner_id is not None and reserve_mc > 0:
                credits.reserve(session, record.owner_id, record.id, reserve_mc, self.clock())
            session.add(Job(id=record.id, owner_id=record.owner_id, kind=record.kind, status=record.status,
                            attempts=record.attempts, version=0, cancel_requested=False, created_at=record.created_at,
                            updated_at=record.updated_at, heartbeat_at=record.heartbeat_at, expires_at=None,
                            reserved_mc=reserve_mc if record.owner_id is not None else 0, charged_mc=None,
                            webhook_url=record.webhook_url, record=record.model_dump(mode="json")))
        return record

    def get(self, job_id: str, owner_id: str | None = ANY_OWNER) -> JobRecord:
        """The job's record.

        Args:
            owner_id: the caller's key id; a job of another key is reported as missing (its existence is not
                revealed). ``ANY_OWNER`` for internal callers.

        Raises:
            JobNotFound: unknown or malformed id, or another key's job.
        """
        return JobRecord.model_validate(self.get_data(job_id, owner_id))

    def get_data(self, job_id: str, owner_id: str | None = ANY_OWNER, nowait: bool = False) -> dict:
        """The job's record as stored (a JSON dict, not validated): for hot paths that read a few fields of an
        active job (status polls), where validating the whole :class:`JobRecord` would cost more than the read.
        ``nowait``: read with :meth:`Database.read_first_nowait <lift3d.service.db.Database.read_first_nowait>`
        (a caller on an event loop).

        Raises:
            JobNotFound: as :meth:`get`.
            lift3d.service.db.ReadWouldWait: with ``nowait``, the database could not answer at once.
        """
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        read = self.database.read_first_nowait if nowait else self.database.read_first
        row = read(_RECORD_BY_ID, {"job_id": job_id})
        if row is None or (owner_id is not ANY_OWNER and row.owner_id != owner_id):
            raise JobNotFound(job_id)
        return row.record

    def recent(self, owner_id: str | None = ANY_OWNER, limit: int = 20) -> list[JobRecord]:
        """The newest ``limit`` jobs (of one key, or of everybody with ``ANY_OWNER``), newest first."""
        query = select(Job.record).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if owner_id is not ANY_OWNER:
            query = query.where(Job.owner_id == owner_id)
        with self.database.read() as session:
            return [JobRecord.model_validate(row) for row in session.execute(query).scalars()]

    def active_ids(self) -> list[str]:
        """Ids of jobs queued or running, oldest first."""
        with self.database.read() as session:
            return list(session.execute(select(Job.id).where(Job.status.in_(ACTIVE)).order_by(Job.created_at))
                        .scalars())

    def count_active(self, owner_id: str | None = ANY_OWNER) -> int:
        """Jobs queued or running, of one key (``owner_id``) or of everybody (``ANY_OWNER``)."""
        query = select(func.count()).select_from(Job).where(Job.status.in_(ACTIVE))
        if owner_id is not ANY_OWNER:
            query = query.where(Job.owner_id == owner_id)
        with self.database.read() as session:
            return int(session.execute(query).scalar_one())

    def charged_credits(self, job_id: str) -> float | None:
        """Credits a finished job was charged (after refunds); None when it has no owner or is not settled."""
        with self.database.read() as session:
            charged = session.execute(select(Job.charged_mc).where(Job.id == job_id)).scalar()
        return None if charged is None else credits.to_credits(charged)

    def count_queued(self) -> int:
        """Jobs waiting for a worker (the queue depth)."""
        with self.database.read() as session:
            return int(session.execute(select(func.count()).select_from(Job).where(Job.status == "queued"))
                       .scalar_one())

    # ------------------------------------------------------------------------------------------ guarded writes
    def update(self, job_id: str, *, attempt: int | None = None, **changes: Any) -> JobRecord:
        """Apply ``changes`` to the record with a compare-and-swap; returns the stored record.

        Args:
            attempt: the writer's attempt number; the write is refused unless it is still the job's current one.

        Raises:
            JobNotFound, InvalidTransition (backward or after the end), StaleAttempt.
        """
        def apply(current: JobRecord) -> JobRecord:
            if attempt is not None:
                check_current_attempt(current, attempt)
            check_transition(current.status, changes.get("status", current.status))
            data = current.model_dump()
            data.update({k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in changes.items()})
            data["updated_at"] = self.clock()
            if data["cancel_requested"] and data["status"] in ACTIVE:  # progress must not hide a pending cancel
                data["stage"] = "canceling"
            return JobRecord.model_validate(data)

        return self._swap(job_id, apply)

    def _swap(self, job_id: str, apply: Callable[[JobRecord], JobRecord]) -> JobRecord:
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        for _ in range(_CAS_RETRIES):
            with self.database.transaction() as session:
                row = session.execute(select(Job.version, Job.record).where(Job.id == job_id)).first()
                if row is None:
                    raise JobNotFound(job_id)
                before = JobRecord.model_validate(row.record)
                after = apply(before)
                done = session.execute(
                    update(Job).where(Job.id == job_id, Job.version == row.version).values(
                        version=row.version + 1, status=after.status, attempts=after.attempts,
                        cancel_requested=after.cancel_requested, updated_at=after.updated_at,
                        heartbeat_at=after.heartbeat_at, expires_at=after.expires_at,
                        record=after.model_dump(mode="json"))
                ).rowcount
                if done == 1:
                    self._settle_credits(session, before, after)
                    if self.on_write is not None:
                        self.on_write(session, before, after)
                    return after
            logger.debug("job %s: lost a write race; re-reading", job_id)
        raise RuntimeError(f"job {job_id}: could not write after {_CAS_RETRIES} conflicting attempts")

    def _settle_credits(self, session: Any, before: JobRecord, after: JobRecord) -> None:
        """On the first terminal transition: charge the measured cost (succeeded) or refund (failed, canceled)."""
        if after.owner_id is None or before.terminal or after.status not in ("succeeded", "failed", "canceled"):
            return
        now = self.clock()
        if after.status == "succeeded" and after.outcome is not None:
            actual_mc = credits.to_mc(after.outcome.cost_usd / self.usd_per_credit)
            credits.settle(session, after.id, actual_mc, now)
        else:
            credits.refund(session, after.id, now)

    # ------------------------------------------------------------------------------------------ transitions
    def begin_attempt(self, job_id: str, worker: str) -> JobRecord:
        """queued/running → running at once, one more attempt (the returned record's ``attempts`` is its number);
        for in-process callers that run the job themselves. The queue side uses :meth:`dispatch`."""
        def apply(current: JobRecord) -> JobRecord:
            check_transition(current.status, "running")
            now = self.clock()
            return current.model_copy(update=dict(
                status="running", stage="starting", progress=None, attempts=current.attempts + 1, worker=worker,
                started_at=current.started_at or now, heartbeat_at=now, lease_expires_at=now + self.lease_s,
                updated_at=now))

        return self._swap(job_id, apply)

    def dispatch(self, job_id: str, worker: str) -> JobRecord:
        """A consumer takes a queued job: one more attempt, held by ``worker`` under a fresh lease; the job stays
        ``queued`` (stage ``waiting_for_worker``) until the trainer starts it (:meth:`start_attempt`).

        Raises:
            InvalidTransition: the job is not queued (running elsewhere, or finished), or another holder's lease on
            it is live.
        """
        def apply(current: JobRecord) -> JobRecord:
            if current.status != "queued":
                raise InvalidTransition(f"job is {current.status}; only a queued job can be dispatched")
            now = self.clock()
            if current.worker is not None and not self.lease_expired(current, now):
                raise InvalidTransition(f"job is held by {current.worker} until {current.lease_expires_at}")
            return current.model_copy(update=dict(
                stage="waiting_for_worker", progress=None, attempts=current.attempts + 1, worker=worker,
                heartbeat_at=now, lease_expires_at=now + self.lease_s, updated_at=now))

        return self._swap(job_id, apply)

    def start_attempt(self, job_id: str, attempt: int, worker: str) -> JobRecord:
        """The trainer starts dispatched attempt ``attempt``: queued → running, the lease now renewed by its
        heartbeats. Starting an attempt that is already running is a no-op (the same attempt redelivered).

        Raises:
            StaleAttempt: the job was requeued since (or finished: InvalidTransition).
        """
        def apply(current: JobRecord) -> JobRecord:
            check_current_attempt(current, attempt)
            check_transition(current.status, "running")
            now = self.clock()
            return current.model_copy(update=dict(
                status="running", stage="starting", progress=None, worker=worker,
                started_at=current.started_at or now, heartbeat_at=now, lease_expires_at=now + self.lease_s,
                updated_at=now))

        return self._swap(job_id, apply)

    def requeue(self, job_id: str, *, attempt: int | None = None, stage: str = "requeued",
                error: JobError | None = None, only_if_lease_expired: bool = False) -> JobRecord:
        """Put a job whose attempt ended without finishing it back to ``queued``: nobody holds it, no lease.

        Args:
            attempt: the attempt being given up; refused if the job has moved on to another.
            stage: ``retrying`` (the attempt failed in a retryable way) or ``requeued`` (its holder vanished).
            error: the failure, kept on the record for the final message.
            only_if_lease_expired: refuse unless the lease ran out (the sweep: a renewal that raced it wins).

        Raises:
            StaleAttempt: another attempt is current, or the lease was renewed meanwhile. InvalidTransition: the job
            finished.
        """
        def apply(current: JobRecord) -> JobRecord:
            if attempt is not None:
                check_current_attempt(current, attempt)
            if current.terminal:
                raise InvalidTransition(f"job already {current.status}")
            now = self.clock()
            if only_if_lease_expired and not self.lease_expired(current, now):
                raise StaleAttempt(f"job {job_id}: the lease was renewed")
            return current.model_copy(update=dict(
                status="queued", stage=stage, progress=None, eta_s=None, worker=None, lease_expires_at=None,
                heartbeat_at=now, updated_at=now, error=error if error is not None else current.error))

        return self._swap(job_id, apply)

    def renew_lease(self, job_id: str, attempt: int) -> JobRecord:
        """Extend the lease of attempt ``attempt`` by :attr:`lease_s` from now (a consumer waiting for a trainer
        slot). Raises StaleAttempt / InvalidTransition when the attempt is no longer the job's current one."""
        return self.update(job_id, attempt=attempt, heartbeat_at=self.clock(),
                           lease_expires_at=self.clock() + self.lease_s)

    def lease_expired(self, record: JobRecord, now: float | None = None) -> bool:
        """Whether ``record``'s attempt lost its holder: dispatched or running, and the lease ran out."""
        if record.terminal or record.worker is None or record.lease_expires_at is None:
            return False
        return (self.clock() if now is None else now) > record.lease_expires_at

    def heartbeat(self, job_id: str, attempt: int | None = None, **changes: Any) -> JobRecord:
        """Refresh ``heartbeat_at`` and the lease (and e.g. stage, progress, eta_s) of a job not yet finished."""
        now = self.clock()
        return self.update(job_id, attempt=attempt, heartbeat_at=now, lease_expires_at=now + self.lease_s,
                           **changes)

    def succeed(self, job_id: str, outcome: JobOutcome, attempt: int | None = None) -> JobRecord:
        now = self.clock()
        return self.update(job_id, attempt=attempt, status="succeeded", stage=None, progress=None, eta_s=0.0,
                           outcome=outcome, finished_at=now, expires_at=now + self.result_ttl_s, error=None,
                           lease_expires_at=None)

    def fail(self, job_id: str, name: str, message: str, attempt: int | None = None) -> JobRecord:
        """Record a final failure: ``name`` (an API error name) and ``message``, server paths cut
        (:func:`~lift3d.service.jobs.messages.redact_paths`: callers, webhooks and event streams read it)."""
        now = self.clock()
        error = JobError(name=name, message=redact_paths(message)[:500])
        return self.update(job_id, attempt=attempt, status="failed", eta_s=None, finished_at=now,
                           expires_at=now + self.result_ttl_s, error=error, lease_expires_at=None)

    def cancel(self, job_id: str, attempt: int | None = None) -> JobRecord:
        now = self.clock()
        return self.update(job_id, attempt=attempt, status="canceled", eta_s=None, finished_at=now,
                           expires_at=now + self.result_ttl_s, lease_expires_at=None)

    # ------------------------------------------------------------------------------------------ cancellation
    def request_cancel(self, job_id: str, owner_id: str | None = ANY_OWNER) -> JobRecord:
        """Ask for cancellation: a queued job is canceled at once, a running one by its worker (which polls
        :meth:`cancel_requested`); until then its stage reads ``canceling`` (heartbeats do not change it).

        Raises:
            JobNotFound (also for another key's job), InvalidTransition (the job already finished).
        """
        record = self.get(job_id, owner_id)
        if record.terminal:
            raise InvalidTransition(f"job already {record.status}")

        def apply(current: JobRecord) -> JobRecord:
            check_transition(current.status, current.status)
            now = self.clock()
            if current.status == "queued":
                return current.model_copy(update=dict(cancel_requested=True, status="canceled", eta_s=None,
                                                      finished_at=now, expires_at=now + self.result_ttl_s,
                                                      updated_at=now))
            return current.model_copy(update=dict(cancel_requested=True, stage="canceling", updated_at=now))

        return self._swap(job_id, apply)

    def cancel_requested(self, job_id: str) -> bool:
        with self.database.read() as session:
            return bool(session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar())

    # ------------------------------------------------------------------------------------------ expiry
    def expire_due(self, delete_prefix: Callable[[str], int] | None = None, limit: int = 100) -> list[str]:
        """Finished jobs past ``expires_at``: delete their artifacts and upload (``delete_prefix(prefix)``, default
        the store's ``delete_prefix``) and mark them ``expired``. Returns the ids expired."""
        now = self.clock()
        delete_prefix = delete_prefix or self.store.delete_prefix
        with self.database.read() as session:
            due = list(session.execute(
                select(Job.id).where(Job.status.in_(("succeeded", "failed", "canceled")), Job.expires_at <= now)
                .order_by(Job.expires_at).limit(limit)).scalars())
        expired = []
        for job_id in due:
            try:
                delete_prefix(job_prefix(job_id))
                self.update(job_id, status="expired", outcome=None)
                expired.append(job_id)
            except InvalidTransition:
                continue
            except Exception:  # noqa: BLE001 - one bad job must not stop the sweep; it is retried next time
                logger.warning("could not expire job %s", job_id, exc_info=True)
        return expired
