"""Webhook events of a job, written to the outbox table (``webhook_deliveries``) inside the job store's transactions.

:class:`WebhookEvents` is the job store's ``on_write`` hook: per transition of a job with a ``webhook_url`` it
inserts one row with :func:`enqueue_event` — ``generation.started``, ``generation.progress`` (throttled by
:func:`enqueue_progress_event`), ``generation.completed``. The row's id (``msg_…``) is the ``webhook-id`` header of
every attempt, so receivers can drop duplicates; :mod:`lift3d.service.webhooks.sender` sends the rows.

Examples:
    >>> with database.transaction() as session:
    ...     enqueue_event(session, job_id=job.id, owner_id=key.id, url=job.webhook_url,
    ...                   event_type="generation.started", data={"id": job.id}, now=time.time())
    'msg_…'
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from sqlalchemy import select

from lift3d.service.db.models import Job, WebhookDelivery
from lift3d.service.jobs.artifacts import ArtifactUrls

__all__ = [
    "COMPLETED", "PROGRESS", "STARTED", "WebhookEvents", "completed_data", "enqueue_event", "enqueue_progress_event",
    "event_payload", "progress_data", "started_data",
]

STARTED, PROGRESS, COMPLETED = "generation.started", "generation.progress", "generation.completed"
_FINISHED = ("succeeded", "failed", "canceled")


class _Record(Protocol):
    """What the payload builders read from a :class:`~lift3d.service.jobs.store.JobRecord`."""

    id: str
    kind: str
    status: str
    stage: str | None
    progress: Any
    eta_s: float | None
    attempts: int
    owner_id: str | None
    webhook_url: str | None
    updated_at: float
    error: Any
    outcome: Any


def started_data(record: _Record) -> dict:
    """``generation.started`` data: id, kind, status, attempt."""
    return {"id": record.id, "kind": record.kind, "status": record.status, "attempt": record.attempts}


def progress_data(record: _Record) -> dict:
    """``generation.progress`` data: id, status, stage, progress ``{step, total}`` (or null), eta_s (seconds)."""
    progress = record.progress
    return {"id": record.id, "status": record.status, "stage": record.stage,
            "progress": None if progress is None else {"step": progress.step, "total": progress.total},
            "eta_s": record.eta_s}


def completed_data(record: _Record, *, charged_mc: int | None = None, usd_per_credit: float = 0.01,
                   artifact_url: Callable[[str, str], str] = ArtifactUrls()) -> dict:
    """``generation.completed`` data: id, kind, status (succeeded, failed, canceled), cost, artifacts, error.

    ``cost`` is what the caller was charged: ``{"credits": charged_mc / 1000, "usd": credits × usd_per_credit}``;
    without ``charged_mc`` (auth off), a succeeded job's measured ``cost_usd`` and 0 for the others. ``artifacts``
    are ``[{"name", "url"}]`` of a succeeded job, else empty, the URLs from ``artifact_url(id, name)``
    (:class:`~lift3d.service.jobs.artifacts.ArtifactUrls`; API paths by default); ``error`` is
    ``{"name", "message"}`` or null.
    """
    outcome = record.outcome if record.status == "succeeded" else None
    if charged_mc is not None:
        credits = charged_mc / 1000
    else:
        credits = round(outcome.cost_usd / usd_per_credit, 3) if outcome is not None else 0.0
    error = record.error
    return {"id": record.id, "kind": record.kind, "status": record.status,
            "cost": {"credits": credits, "usd": round(credits * usd_per_credit, 6)},
            "artifacts": [{"name": name, "url": artifact_url(record.id, name)}
                          for name in (outcome.artifacts if outcome is not None else [])],
            "error": None if error is None else {"name": error.name, "message": error.message}}


def event_payload(event_type: str, data: dict, now: float) -> str:
    """The JSON body of a message: ``{"type", "timestamp" (ISO 8601, UTC), "data"}``."""
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"))


def enqueue_event(session: Any, *, job_id: str, owner_id: str | None, url: str, event_type: str, data: dict,
                  now: float) -> str:
    """Insert a pending delivery (due at ``now``, epoch seconds) in the caller's transaction; returns its id, the
    ``webhook-id`` of every attempt (``msg_`` + 32 hex digits)."""
    message_id = f"msg_{uuid.uuid4().hex}"
    session.add(WebhookDelivery(id=message_id, job_id=job_id, owner_id=owner_id, url=url, event_type=event_type,
                                payload=event_payload(event_type, data, now), state="pending", attempts=0,
                                next_attempt_at=now, created_at=now))
    session.flush()
    return message_id


def enqueue_progress_event(session: Any, *, job_id: str, owner_id: str | None, url: str, data: dict, now: float,
                           interval_s: float) -> str | None:
    """:func:`enqueue_event` for ``generation.progress``, unless the job already has one created less than
    ``interval_s`` seconds before ``now`` (the throttle, shared by every replica); returns the id or None."""
    last = session.execute(select(WebhookDelivery.created_at).where(
        WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == PROGRESS)
        .order_by(WebhookDelivery.created_at.desc()).limit(1)).scalar()
    if last is not None and now - last < interval_s:
        return None
    return enqueue_event(session, job_id=job_id, owner_id=owner_id, url=url, event_type=PROGRESS, data=data, now=now)


@dataclass
class WebhookEvents:
    """A job-store ``on_write`` hook ``(session, before, after)``: the events of a transition, for jobs with a
    ``webhook_url``. queued → running: ``generation.started``; a running job whose stage or progress changed:
    ``generation.progress`` (at most one per ``progress_interval_s`` seconds per job); the first
    succeeded/failed/canceled: ``generation.completed`` with the charge read from ``jobs.charged_mc`` and the
    artifact URLs of ``artifact_url`` (:func:`lift3d.service.state.open_state` passes the store's
    :class:`~lift3d.service.jobs.artifacts.ArtifactUrls`)."""

    progress_interval_s: float = 5.0
    usd_per_credit: float = 0.01
    artifact_url: Callable[[str, str], str] = field(default_factory=ArtifactUrls)

    def __call__(self, session: Any, before: _Record, after: _Record) -> str | None:
        url = after.webhook_url
        if not url:
            return None
        common = dict(job_id=after.id, owner_id=after.owner_id, url=url, now=after.updated_at)
        wanted = getattr(after, "webhook_events", None)  # the job's event filter (issue 24, Replicate); None: all
        sends = lambda event_type: wanted is None or event_type in wanted  # noqa: E731
        if after.status in _FINISHED and before.status not in _FINISHED and sends(COMPLETED):
            charged = session.execute(select(Job.charged_mc).where(Job.id == after.id)).scalar()
            data = completed_data(after, charged_mc=charged, usd_per_credit=self.usd_per_credit,
                                  artifact_url=self.artifact_url)
            return enqueue_event(session, event_type=COMPLETED, data=data, **common)
        if after.status == "running" and before.status == "queued" and sends(STARTED):
            return enqueue_event(session, event_type=STARTED, data=started_data(after), **common)
        if (after.status == "running" and (before.stage, before.progress) != (after.stage, after.progress)
                and sends(PROGRESS)):
            return enqueue_progress_event(session, data=progress_data(after), interval_s=self.progress_interval_s,
                                          **common)
        return None
