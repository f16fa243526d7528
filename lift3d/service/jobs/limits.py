"""Job limits that hold under concurrent submits: a key's queued + running jobs (``max_concurrent_jobs``) and the
queued jobs of everybody (``max_queue_depth``), checked in the transaction that inserts the job.

A count and an insert in separate transactions let N simultaneous submits all see ``limit - 1`` and all pass
(found by attack: 8 concurrent submits on a ``--max-concurrent 1`` key gave 8 × 202). :func:`admit` therefore runs
inside the job store's insert transaction (:meth:`lift3d.service.jobs.store.JobStore.create`) after taking the
admission lock (:func:`lock_admission`), so the submits of all replicas are admitted one at a time:

- SQLite: the store's write transactions start with ``BEGIN IMMEDIATE`` (the database's one write lock), so the
  count and the insert already run alone;
- PostgreSQL: ``pg_advisory_xact_lock`` on one key for all submits, released at commit or rollback. Under READ
  COMMITTED (PostgreSQL's default, which the service uses) each statement after the lock sees every job committed
  before it, so the count is exact. Only submits wait on it (a few milliseconds each); reads and job updates do
  not.

The API's middleware (:class:`lift3d.service.api.admission.JobAdmissionMiddleware`) runs the same check earlier,
without the lock, to refuse a flood before its body is read; this one is the exact guard.

Examples:
    >>> limits = JobLimits(default_max_concurrent_jobs=4, max_queue_depth=100)
    >>> with database.transaction() as session:
    ...     admit(session, "key-1", limits, own_limit=1)   # raises RateLimitedError at its limit
    ...     session.add(Job(...))
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from lift3d.errors import Lift3DError
from lift3d.service.db.models import Job

__all__ = ["ADMISSION_LOCK", "BUSY_RETRY_AFTER_S", "JobLimits", "OverloadedError", "RateLimitedError",
           "RefusedError", "admit", "check_job_admission", "count_active_jobs", "count_queued_jobs",
           "lock_admission"]

BUSY_RETRY_AFTER_S = 10
"""``Retry-After`` (seconds) of the concurrency and queue-depth refusals: a job slot frees when a job ends."""
ADMISSION_LOCK = 0x6C336A61  # "l3ja": the PostgreSQL advisory lock held while a job is admitted and inserted

_ACTIVE = ("queued", "running")


class RefusedError(Lift3DError):
    """A request refused for now; the answer says when to retry (``retry_after_s`` ≥ 1, ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple:  # picklable despite the two arguments
        return type(self), (str(self), self.retry_after_s)


class RateLimitedError(RefusedError):
    """The key is over its request rate or its concurrent-jobs limit (429)."""

    name = "rate_limited"
    status_code = 429


class OverloadedError(RefusedError):
    """The queue is full (503)."""

    name = "overloaded"
    status_code = 503


class JobLimits(NamedTuple):
    """The service's job limits (each ≥ 0; 0: no limit).

    Attributes:
        default_max_concurrent_jobs: queued + running jobs of a key without its own limit.
        max_queue_depth: queued jobs of all keys.
        retry_after_s: ``Retry-After`` of a refusal.
    """

    default_max_concurrent_jobs: int = 0
    max_queue_depth: int = 0
    retry_after_s: int = BUSY_RETRY_AFTER_S

    @property
    def unlimited(self) -> bool:
        return self.default_max_concurrent_jobs <= 0 and self.max_queue_depth <= 0


def count_active_jobs(session: Session, owner_id: str | None) -> int:
    """Jobs of ``owner_id`` (None: jobs without owner) that are ``queued`` or ``running``."""
    owner = Job.owner_id.is_(None) if owner_id is None else Job.owner_id == owner_id
    return session.execute(select(func.count()).select_from(Job)
                           .where(owner, Job.status.in_(_ACTIVE))).scalar_one()


def count_queued_jobs(session: Session) -> int:
    """Jobs of every owner that are ``queued``."""
    return session.execute(select(func.count()).select_from(Job).where(Job.status == "queued")).scalar_one()


def check_job_admission(session: Session, owner_id: str | None, *, max_concurrent_jobs: int, max_queue_depth: int,
                        retry_after_s: int = BUSY_RETRY_AFTER_S) -> None:
    """Refuse a new job of ``owner_id`` when it has ``max_concurrent_jobs`` queued + running jobs, or when
    ``max_queue_depth`` jobs are queued in all (each limit ≥ 0; 0: no limit). Exact only under
    :func:`lock_admission` in the inserting transaction (:func:`admit`).

    Raises:
        RateLimitedError: the key's concurrency limit (429).
        OverloadedError: the queue-depth limit (503).
    """
    if max_concurrent_jobs > 0:
        active = count_active_jobs(session, owner_id)
        if active >= max_concurrent_jobs:
            raise RateLimitedError(f"this API key has {active} queued or running jobs (limit {max_concurrent_jobs}); "
                                   "retry when one has finished", retry_after_s)
    if max_queue_depth > 0 and count_queued_jobs(session) >= max_queue_depth:
        raise OverloadedError(f"the queue is full ({max_queue_depth} jobs waiting); retry later", retry_after_s)


def lock_admission(session: Session) -> None:
    """Serialise admissions until ``session``'s transaction ends: ``pg_advisory_xact_lock`` on PostgreSQL; nothing
    on SQLite, whose write transactions (``BEGIN IMMEDIATE``) already hold the database's write lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})


def admit(session: Session, owner_id: str | None, limits: JobLimits, own_limit: int | None = None) -> None:
    """In the transaction that will insert a job of ``owner_id``: take the admission lock and check the limits
    (``own_limit``: the key's own ``max_concurrent_jobs``; None: the default).

    Raises:
        RateLimitedError, OverloadedError: as :func:`check_job_admission`.
    """
    max_concurrent = limits.default_max_concurrent_jobs if own_limit is None else own_limit
    if max_concurrent <= 0 and limits.max_queue_depth <= 0:
        return
    lock_admission(session)
    check_job_admission(session, owner_id, max_concurrent_jobs=max_concurrent, max_queue_depth=limits.max_queue_depth,
                        retry_after_s=limits.retry_after_s)
