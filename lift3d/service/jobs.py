"""Job records kept in the artifact store, so that any replica can answer for any job.

A record lives at ``generations/{id}/job.json``; a cancel request is a separate marker object
(``generations/{id}/cancel``) so that the worker's progress writes cannot erase it; jobs not yet finished are
listed under ``jobs/active/{id}`` for the stale-job sweep.

Status only moves forward: ``queued → running → succeeded | failed | canceled``; a terminal record is never
rewritten. ``attempts`` counts started attempts, bounded by ``max_attempts``.

Examples:
    >>> jobs = JobStore(LocalStore("/tmp/lift3d"))
    >>> record = jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=0), input_key="..."))
    >>> jobs.begin_attempt(record.id, worker="replica-1").status
    'running'
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any, Callable

from pydantic import BaseModel, Field

from lift3d.service.schemas import GenerationKind, JobStatus, Progress
from lift3d.service.uploads import ReconstructParams
from lift3d.errors import Lift3DError
from lift3d.params import GenerationParams
from lift3d.io.storage.base import ArtifactStore, StoredObjectNotFound

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVE_PREFIX",
    "InvalidTransition",
    "JobError",
    "JobNotFound",
    "JobOutcome",
    "JobRecord",
    "JobStore",
    "TERMINAL",
    "is_job_id",
    "new_job_id",
]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
_RANK = {"queued": 0, "running": 1, "succeeded": 2, "failed": 2, "canceled": 2}
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE_PREFIX = "jobs/active/"


class JobNotFound(Lift3DError, KeyError):
    """No job with this id."""

    name = "generation_not_found"


class InvalidTransition(Lift3DError):
    """A status change that would move a job backwards or rewrite a finished job."""


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
    """The state of one generation job."""

    id: str
    kind: GenerationKind
    status: JobStatus = "queued"
    stage: str | None = "queued"
    progress: Progress | None = None
    eta_s: float | None = None
    params: GenerationParams
    input_key: str | None = Field(None, description="Store key of the upload (image, or views ZIP), if any.")
    reconstruct: ReconstructParams | None = Field(None, description="Options of a views-to-3d job.")
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    attempts: int = 0
    max_attempts: int = 3
    worker: str | None = None
    error: JobError | None = None
    outcome: JobOutcome | None = None

    @classmethod
    def new(
        cls, kind: GenerationKind, params: GenerationParams, *, input_key: str | None = None,
        job_id: str | None = None, max_attempts: int = 3, now: float | None = None,
    ) -> "JobRecord":
        """A queued record; the seed is fixed now so that every attempt uses the same one."""
        now = time.time() if now is None else now
        return cls(id=job_id or new_job_id(), kind=kind, params=params.with_seed(), input_key=input_key,
                   created_at=now, updated_at=now, heartbeat_at=now, max_attempts=max_attempts)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def prefix(self) -> str:
        """Store prefix of the job's artifacts: ``generations/{id}/``."""
        return f"generations/{self.id}/"


def check_transition(old: JobStatus, new: JobStatus) -> None:
    """Raises InvalidTransition unless ``old → new`` moves forward (or stays, for a job not yet finished)."""
    if old in TERMINAL:
        raise InvalidTransition(f"job already {old}; cannot become {new}")
    if _RANK[new] < _RANK[old]:
        raise InvalidTransition(f"job status cannot go back from {old} to {new}")


class JobStore:
    """Reads and writes :class:`JobRecord` objects in an artifact store.

    Writes read the stored record first and refuse backward transitions, so a slow writer cannot undo a
    finished job. (Two writers racing within one read-modify-write can still lose a non-status field update;
    status itself is protected by the order rules and by the separate cancel marker.)

    Args:
        store: the artifact store.
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(self, store: ArtifactStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @staticmethod
    def key(job_id: str) -> str:
        return f"generations/{job_id}/job.json"

    # ------------------------------------------------------------------------------------------ read / write
    def create(self, record: JobRecord) -> JobRecord:
        self._put(record)
        self.store.put(f"{ACTIVE_PREFIX}{record.id}", b"active", "text/plain")
        return record

    def get(self, job_id: str) -> JobRecord:
        """Raises JobNotFound for unknown or malformed ids."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        try:
            return JobRecord.model_validate_json(self.store.get(self.key(job_id)))
        except StoredObjectNotFound:
            raise JobNotFound(job_id) from None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Apply ``changes`` to the stored record (read, check the transition, write) and return it."""
        current = self.get(job_id)
        new_status = changes.get("status", current.status)
        check_transition(current.status, new_status)
        data = current.model_dump()
        data.update({k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in changes.items()})
        data["updated_at"] = self.clock()
        record = JobRecord.model_validate(data)
        self._put(record)
        if record.terminal:
            self._deactivate(job_id)
        return record

    def _put(self, record: JobRecord) -> None:
        self.store.put(self.key(record.id), record.model_dump_json(indent=2).encode(), "application/json")

    def _deactivate(self, job_id: str) -> None:
        # ArtifactStore has no delete: the marker is overwritten with "done" and skipped by active_ids().
        delete = getattr(self.store, "delete", None)
        if callable(delete):
            delete(f"{ACTIVE_PREFIX}{job_id}")
        else:
            self.store.put(f"{ACTIVE_PREFIX}{job_id}", b"done", "text/plain")

    def active_ids(self) -> list[str]:
        """Ids of jobs created and not yet finished (as far as the markers know)."""
        ids = []
        for key in self.store.list(ACTIVE_PREFIX):
            job_id = key[len(ACTIVE_PREFIX):]
            if is_job_id(job_id) and self._is_active_marker(key):
                ids.append(job_id)
        return ids

    def _is_active_marker(self, key: str) -> bool:
        try:
            return self.store.get(key) == b"active"
        except StoredObjectNotFound:
            return False

    # ------------------------------------------------------------------------------------------ transitions
    def begin_attempt(self, job_id: str, worker: str) -> JobRecord:
        """queued/running → running, one more attempt."""
        current = self.get(job_id)
        now = self.clock()
        return self.update(job_id, status="running", stage="starting", progress=None, attempts=current.attempts + 1,
                           worker=worker, started_at=current.started_at or now, heartbeat_at=now)

    def heartbeat(self, job_id: str, **changes: Any) -> JobRecord:
        """Refresh ``heartbeat_at`` (and e.g. stage, progress, eta_s) of a job not yet finished."""
        return self.update(job_id, heartbeat_at=self.clock(), **changes)

    def succeed(self, job_id: str, outcome: JobOutcome) -> JobRecord:
        return self.update(job_id, status="succeeded", stage=None, progress=None, eta_s=0.0, outcome=outcome,
                           finished_at=self.clock(), error=None)

    def fail(self, job_id: str, name: str, message: str) -> JobRecord:
        return self.update(job_id, status="failed", eta_s=None, finished_at=self.clock(),
                           error=JobError(name=name, message=message[:500]))

    def cancel(self, job_id: str) -> JobRecord:
        return self.update(job_id, status="canceled", eta_s=None, finished_at=self.clock())

    # ------------------------------------------------------------------------------------------ cancellation
    def request_cancel(self, job_id: str) -> JobRecord:
        """Ask for cancellation: marks the job; a queued job is canceled at once, a running one by its worker.

        Raises:
            JobNotFound, InvalidTransition (the job already finished).
        """
        record = self.get(job_id)
        if record.terminal:
            raise InvalidTransition(f"job already {record.status}")
        self.store.put(f"generations/{job_id}/cancel", json.dumps({"at": self.clock()}).encode(), "application/json")
        if record.status == "queued":
            try:
                return self.cancel(job_id)
            except InvalidTransition:  # a worker finished it in between
                return self.get(job_id)
        return record

    def cancel_requested(self, job_id: str) -> bool:
        return self.store.exists(f"generations/{job_id}/cancel")
