"""Job records: what one generation job is (:class:`JobRecord`), how it may change (:func:`check_transition`), and
the errors of the job store. The store itself, on the service database, is :mod:`lift3d.service.jobs.store`, which
re-exports every name here.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from lift3d.errors import Lift3DError
from lift3d.params import GenerationParams, SeededParams
from lift3d.service.jobs.artifacts import job_prefix
from lift3d.service.schemas import GenerationKind, JobStatus, Progress
from lift3d.service.jobs.uploads import ReconstructParams

__all__ = [
    "ACTIVE",
    "ANY_OWNER",
    "InvalidTransition",
    "JobError",
    "JobNotFound",
    "JobOutcome",
    "JobRecord",
    "StaleAttempt",
    "TERMINAL",
    "check_current_attempt",
    "check_transition",
    "is_job_id",
    "new_job_id",
]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled", "expired"})
ACTIVE: tuple[str, ...] = ("queued", "running")
_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "canceled": 2, "expired": 3}
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class _AnyOwner:
    def __repr__(self) -> str:
        return "ANY_OWNER"


ANY_OWNER: Any = _AnyOwner()
"""``owner_id`` for internal callers (workers, sweeps) that may see every job."""


class JobNotFound(Lift3DError, KeyError):
    """No job with this id (or none that the caller's key may see)."""

    name = "generation_not_found"
    status_code = 404


class InvalidTransition(Lift3DError):
    """A status change that would move a job backwards or rewrite a finished job."""


class StaleAttempt(InvalidTransition):
    """A write from an attempt that is no longer the job's current one (the job was requeued or finished)."""


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the form of a job id (also keeps user input out of store keys)."""
    return bool(_JOB_ID.match(value))


class JobError(BaseModel):
    """Why a job failed: ``name`` is an API error name (``invalid_parameters``, ``internal_error``, …)."""

    name: str
    message: str


class JobOutcome(BaseModel):
    """What a succeeded job produced.

    Attributes:
        main_key: the artifact returned by default (``model.glb`` or ``views.zip``), relative to the job prefix.
        content_type: its media type.
        artifacts: every artifact, relative to the job prefix.
    """

    main_key: str
    content_type: str
    artifacts: list[str]
    timings_s: dict[str, float] = Field(default_factory=dict)
    busy_s: dict[str, float] = Field(default_factory=dict)
    gpu_seconds: dict[str, float] = Field(default_factory=dict)
    cost_usd: float = 0.0
    random_weights: bool = False


class JobRecord(BaseModel):
    """The state of one generation job. Times are seconds since the epoch."""

    id: str
    kind: GenerationKind
    status: JobStatus = "queued"
    stage: str | None = "queued"
    progress: Progress | None = None
    eta_s: float | None = None
    params: SeededParams = Field(description="The job's parameters, seed fixed at submit (every attempt uses it).")
    input_key: str | None = Field(None, description="Store key of the upload (image, or views ZIP), if any.")
    reconstruct: ReconstructParams | None = Field(None, description="Options of a views-to-3d job.")
    owner_id: str | None = Field(None, description="Id of the API key that submitted it; None when auth is off.")
    webhook_url: str | None = Field(None, description="Where webhook events about this job are sent.")
    webhook_events: list[str] | None = Field(None, description="The webhook event types sent (None: all); set by "
                                             "the Replicate-compatible API's webhook_events_filter (issue 24).")
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    expires_at: float | None = Field(None, description="When results and upload are deleted (set when it ends).")
    attempts: int = 0
    max_attempts: int = 3
    worker: str | None = Field(None, description="Who holds the current attempt (a consumer while it waits for a "
                               "trainer slot, then the trainer).")
    lease_expires_at: float | None = Field(None, description="The current attempt's holder must renew its lease "
                                           "before this time (seconds since the epoch); None: nobody holds the job.")
    cancel_requested: bool = False
    error: JobError | None = None
    outcome: JobOutcome | None = None

    @classmethod
    def new(
        cls, kind: GenerationKind, params: GenerationParams, *, input_key: str | None = None,
        job_id: str | None = None, max_attempts: int = 3, now: float | None = None, owner_id: str | None = None,
        webhook_url: str | None = None,
    ) -> "JobRecord":
        """A queued record; the seed is fixed now so that every attempt uses the same one."""
        now = time.time() if now is None else now
        return cls(id=job_id or new_job_id(), kind=kind, params=params.with_seed(), input_key=input_key,
                   created_at=now, updated_at=now, heartbeat_at=now, max_attempts=max_attempts, owner_id=owner_id,
                   webhook_url=webhook_url)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def prefix(self) -> str:
        """Store prefix of the job's artifacts: ``generations/{id}/``."""
        return job_prefix(self.id)


def check_transition(old: JobStatus, new: JobStatus) -> None:
    """Raises InvalidTransition unless ``old → new`` moves forward (or stays, for a job not yet finished); a finished
    job may only become ``expired``."""
    if old in TERMINAL and not (new == "expired" and old != "expired"):
        raise InvalidTransition(f"job already {old}; cannot become {new}")
    if _RANK[new] < _RANK[old]:
        raise InvalidTransition(f"job status cannot go back from {old} to {new}")


def check_current_attempt(record: JobRecord, attempt: int) -> None:
    """Raises StaleAttempt unless attempt ``attempt`` is the job's current one and still held (a requeued job is
    held by nobody until its next attempt is dispatched, so the requeued attempt's late writes are refused)."""
    if record.attempts != attempt or record.worker is None:
        raise StaleAttempt(f"attempt {attempt} of job {record.id} is stale (current: {record.attempts}, "
                           f"status {record.status}, held by {record.worker})")
