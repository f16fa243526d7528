"""Live progress of a job, HTTP-free: the events of ``GET /v1/generation/{id}/events`` (server-sent events) and the
wait behind ``Prefer: wait=N`` (RFC 7240) on the job-creating POSTs. Routes: :mod:`lift3d.service.api.routes.events`.

Events come from successive snapshots of the job record (polled): ``status`` when the status or stage changes,
``progress`` (stage, step, total, eta_s) when the progress changes — at most one per ``progress_interval_s`` — and
one terminal event named after the final status (``succeeded``, ``failed``, ``canceled``, ``expired``) with the
result summary, after which the stream ends.

Event ids are integers that grow with the record: ``4 · seq + k`` where ``seq`` is the record's ``version`` when it
has one, else its ``updated_at`` in milliseconds, and ``k`` is 0 (status), 1 (progress) or 2 (terminal). A client
that reconnects with ``Last-Event-ID`` gets only events of later snapshots; a job already finished sends just the
terminal event (or nothing, when the client saw it).

Examples:
    >>> stream = EventStream(result_summary)
    >>> [(e.event, e.id) for e in stream.feed(record)]     # a queued record, updated_at 100.0
    [('status', 400000)]
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from lift3d.service.jobs.artifacts import artifact_path

__all__ = [
    "MAX_WAIT_S", "EventStream", "StreamEvent", "event_id_base", "parse_last_event_id", "parse_prefer_wait",
    "result_summary", "wait_for_terminal",
]

MAX_WAIT_S = 60
"""Longest ``Prefer: wait`` honoured, seconds (larger values are clamped)."""
ACTIVE = ("queued", "running")
_STATUS, _PROGRESS, _TERMINAL = 0, 1, 2
_IDS_PER_SNAPSHOT = 4
_WAIT = re.compile(r'^\s*wait\s*=\s*"?(\d{1,12})"?\s*$', re.IGNORECASE)


class _Record(Protocol):
    """What the stream reads from a :class:`~lift3d.service.jobs.store.JobRecord`."""

    id: str
    status: str
    stage: str | None
    progress: Any
    eta_s: float | None
    updated_at: float


def event_id_base(record: _Record) -> int:
    """``4 · seq``: ``seq`` is ``record.version`` (an int) when the record has one, else ``updated_at`` in ms."""
    version = getattr(record, "version", None)
    seq = version if isinstance(version, int) else int(round(record.updated_at * 1000))
    return seq * _IDS_PER_SNAPSHOT


def result_summary(record: Any, artifact_url: Callable[[str, str], str] = artifact_path) -> dict:
    """A finished record as ``GET /v1/generation/{id}`` with ``Accept: application/json`` gives it, without the
    base64 ``content``: the :class:`~lift3d.service.schemas.GenerationResult` fields of a succeeded job (artifact URLs
    from ``artifact_url(id, name)``, API paths by default), else the error envelope ``{id, name, errors}``."""
    if record.status == "succeeded":
        outcome = record.outcome
        return {"id": record.id, "status": "succeeded", "finish_reason": "SUCCESS", "seed": record.params.seed,
                "content_type": outcome.content_type, "timings_s": outcome.timings_s,
                "gpu_seconds": outcome.gpu_seconds, "cost_usd": outcome.cost_usd,
                "artifacts": [{"name": name, "url": artifact_url(record.id, name)} for name in outcome.artifacts],
                "random_weights": outcome.random_weights}
    if record.status == "failed":
        error = record.error
        return {"id": record.id, "name": error.name if error else "internal_error",
                "errors": [error.message if error else "the generation failed"]}
    if record.status == "canceled":
        return {"id": record.id, "name": "generation_canceled", "errors": ["the generation was canceled"]}
    return {"id": record.id, "name": f"generation_{record.status}",
            "errors": [f"the generation's results {record.status}; they are no longer stored"]}


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event: ``event`` name, integer ``id``, JSON-able ``data``."""

    id: int
    event: str
    data: dict


@dataclass
class EventStream:
    """Turns successive snapshots of one job into events (see the module docstring).

    Args:
        summarize: the terminal event's data from the finished record (a dict or a pydantic model; a ``content``
            field is dropped).
        last_event_id: the client's ``Last-Event-ID`` (resume): events of snapshots it already saw are not sent.
        progress_interval_s: least seconds between two ``progress`` events (0: no throttle).
        clock: monotonic seconds (injectable for tests).
    """

    summarize: Callable[[Any], Any]
    last_event_id: int | None = None
    progress_interval_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    done: bool = field(default=False, init=False)
    _last_sent: int = field(default=-1, init=False)
    _status: tuple | None = field(default=None, init=False)
    _progress: tuple | None = field(default=None, init=False)
    _progress_at: float | None = field(default=None, init=False)

    def feed(self, record: _Record) -> list[StreamEvent]:
        """The events that ``record`` (the latest snapshot) adds to the stream; sets :attr:`done` at the end."""
        if self.done:
            return []
        base = event_id_base(record)
        if record.status not in ACTIVE:
            self.done = True
            if not self._fresh(base + _TERMINAL):
                return []
            return [self._event(base + _TERMINAL, record.status, _as_dict(self.summarize(record)))]
        events = []
        status = (record.status, record.stage)
        if status != self._status:
            self._status = status  # sent now, or seen by the client before it resumed
            if self._fresh(base + _STATUS):
                events.append(self._event(base + _STATUS, "status",
                                          {"status": record.status, "stage": record.stage, "eta_s": record.eta_s}))
        progress = record.progress
        current = None if progress is None else (record.stage, progress.step, progress.total, record.eta_s)
        now = self.clock()
        throttled = self._progress_at is not None and now - self._progress_at < self.progress_interval_s
        if current is not None and current != self._progress and not throttled:
            self._progress = current
            if self._fresh(base + _PROGRESS):
                self._progress_at = now
                events.append(self._event(base + _PROGRESS, "progress", {
                    "stage": record.stage, "step": progress.step, "total": progress.total, "eta_s": record.eta_s}))
        return events

    def _fresh(self, event_id: int) -> bool:
        """Whether the client has not seen the snapshot event ``event_id`` (resume)."""
        return self.last_event_id is None or event_id > self.last_event_id

    def _event(self, event_id: int, name: str, data: dict) -> StreamEvent:
        event_id = max(event_id, self._last_sent + 1)  # strictly increasing even if two writes share a millisecond
        self._last_sent = event_id
        return StreamEvent(id=event_id, event=name, data=data)


def _as_dict(value: Any) -> dict:
    data = value.model_dump(mode="json") if hasattr(value, "model_dump") else dict(value)
    data.pop("content", None)
    return data


def parse_last_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` header as an event id; None when absent or not one of ours (then the stream starts
    afresh)."""
    if value is None or not value.strip().isdigit() or len(value.strip()) > 30:
        return None
    return int(value.strip())


def parse_prefer_wait(values: str | list[str] | None) -> int | None:
    """The ``wait`` preference of ``Prefer`` header value(s) (RFC 7240), seconds, clamped to :data:`MAX_WAIT_S`;
    None when absent or malformed (the preference is then ignored, as RFC 7240 §2 asks). The first ``wait`` wins."""
    if values is None:
        return None
    for header in [values] if isinstance(values, str) else values:
        for preference in header.split(","):
            match = _WAIT.match(preference.split(";")[0])
            if match:
                return min(int(match.group(1)), MAX_WAIT_S)
    return None


async def wait_for_terminal(get_record: Callable[[str], Any], job_id: str, seconds: float, *,
                            poll_interval_s: float = 0.25, clock: Callable[[], float] = time.monotonic) -> Any | None:
    """Poll ``get_record(job_id)`` (in a worker thread) every ``poll_interval_s`` seconds until the job is no longer
    queued or running, for at most ``seconds``; returns the finished record, or None when time ran out.

    Raises:
        whatever ``get_record`` raises (e.g. JobNotFound).
    """
    deadline = clock() + max(0.0, seconds)
    while True:
        record = await asyncio.to_thread(get_record, job_id)
        if record.status not in ACTIVE:
            return record
        left = deadline - clock()
        if left <= 0:
            return None
        await asyncio.sleep(min(poll_interval_s, left))


async def maybe_await(value: Any | Awaitable[Any]) -> Any:
    """``value``, awaited if it is awaitable (callbacks may be sync or async)."""
    return await value if inspect.isawaitable(value) else value
