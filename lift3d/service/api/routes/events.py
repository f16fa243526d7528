"""HTTP side of live progress: ``GET /v1/generation/{id}/events`` (server-sent events, sse-starlette) and
``Prefer: wait=N`` for the job-creating POSTs. The event logic is in :mod:`lift3d.service.jobs.events`.

:data:`router` serves the app's generations, for the :data:`~lift3d.service.api.deps.Caller` (another key's job is a
404), with the poll and keep-alive intervals of the app's config; :func:`add_event_routes` adds the same route over
any record source (the CLI's tests serve fakes with it).

Examples:
    >>> api.include_router(router)
    >>> add_event_routes(api, get_record=lambda job_id, owner_id: jobs.get(job_id, owner_id))
    >>> # in a POST route, after the job was accepted:
    >>> return await apply_prefer_wait(request, accepted_response, job_id=accepted.id,
    ...                                get_record=lambda job_id: jobs.get(job_id, owner_id),
    ...                                result=lambda: get_as_json(accepted.id))
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from lift3d.errors import Lift3DError
from lift3d.io.media_types import EVENT_STREAM
from lift3d.service.api.deps import Caller, Config, Generations, Keys
from lift3d.service.api.errors import error_response
from lift3d.service.jobs.events import (
    EventStream,
    maybe_await,
    parse_last_event_id,
    parse_prefer_wait,
    result_summary,
    wait_for_terminal,
)
from lift3d.service.jobs.generation import GenerationService, visible_to
from lift3d.service.jobs.store import JobNotFound
from lift3d.service.schemas import ErrorBody, GenerationNotFound

logger = logging.getLogger(__name__)

__all__ = ["add_event_routes", "apply_prefer_wait", "event_stream", "no_caller", "router"]

_EVENTS_DOC = (
    "Server-sent events (`text/event-stream`) of one generation: `status` ({status, stage, eta_s}) on each status or "
    "stage change, `progress` ({stage, step, total, eta_s}; at most a few per second) and one terminal event — "
    "`succeeded` (the JSON result without `content`), `failed`, `canceled` or `expired` (the error envelope) — "
    "after which the stream ends. Event ids grow; reconnect with `Last-Event-ID` to resume without repeats "
    "(204 when that id was the terminal event). Comment lines keep idle connections alive. The stream also ends "
    "within about two seconds of its API key being revoked or expiring.")
_ROUTE = dict(path="/v1/generation/{id}/events", summary="Live status and progress (server-sent events)",
              description=_EVENTS_DOC,
              responses={200: {"content": {EVENT_STREAM: {"schema": {"type": "string"}}},
                               "description": "The event stream."},
                         204: {"description": "Last-Event-ID was the terminal event: nothing more to send."},
                         404: {"model": ErrorBody}})


async def event_stream(id: str, request: Request, get_record: Callable[[str], Any], *,
                       summarize: Callable[[Any], Any] = result_summary, poll_interval_s: float = 0.5,
                       progress_interval_s: float = 0.25, keepalive_s: float = 15.0,
                       authorized: Callable[[], bool] | None = None, recheck_s: float = 1.0) -> Response:
    """The events of job ``id`` from its first snapshot on (after ``Last-Event-ID``), as a streaming response.

    Args:
        get_record: ``job_id -> JobRecord``, blocking (run in a worker thread); raises
            :class:`~lift3d.service.jobs.store.JobNotFound` for unknown ids and other keys' jobs (→ the 404 envelope
            before the stream starts).
        summarize: the terminal event's data from the finished record (a dict or a pydantic model; ``content`` is
            dropped). Default :func:`~lift3d.service.jobs.events.result_summary`.
        poll_interval_s: seconds between record reads (> 0).
        progress_interval_s: least seconds between ``progress`` events.
        keepalive_s: seconds between keep-alive comments (> 0).
        authorized: blocking ``() -> bool``, asked again at most every ``recheck_s`` seconds while the stream lasts
            (between reads): False ends it (the caller's key was revoked or expired). None: never asked.
    """
    stream = EventStream(summarize, last_event_id=parse_last_event_id(request.headers.get("last-event-id")),
                         progress_interval_s=progress_interval_s)

    def poll() -> list:  # blocking (the read, and summarize for the terminal event): in a worker thread
        return stream.feed(get_record(id))

    try:
        first = await asyncio.to_thread(poll)
    except JobNotFound:
        return error_response(GenerationNotFound(id))
    if stream.done and not first:
        return Response(status_code=204)
    follow = _follow(first, stream, poll, poll_interval_s, _Recheck(authorized, recheck_s))
    return EventSourceResponse(follow, ping=keepalive_s, sep="\n")


def no_caller() -> None:
    """The caller dependency when auth is off: no owner id."""
    return None


def add_event_routes(api: FastAPI, get_record: Callable[[str, Any], Any], *,
                     summarize: Callable[[Any], Any] = result_summary, caller: Callable[..., Any] = no_caller,
                     poll_interval_s: float = 0.5, progress_interval_s: float = 0.25,
                     keepalive_s: float = 15.0) -> None:
    """Add ``GET /v1/generation/{id}/events`` over ``get_record`` to ``api``.

    Args:
        get_record: ``(job_id, owner_id) -> JobRecord``, blocking; raises
            :class:`~lift3d.service.jobs.store.JobNotFound` for unknown ids and other keys' jobs.
        caller: a FastAPI dependency returning the caller's owner id (it may raise 401); default: None.
        summarize, poll_interval_s, progress_interval_s, keepalive_s: as :func:`event_stream`.
    """

    @api.get(**_ROUTE)
    async def generation_events(id: str, request: Request, owner_id: Any = Depends(caller)) -> Response:
        return await event_stream(id, request, lambda job_id: get_record(job_id, owner_id), summarize=summarize,
                                  poll_interval_s=poll_interval_s, progress_interval_s=progress_interval_s,
                                  keepalive_s=keepalive_s)


def _summary(service: GenerationService, record: Any) -> Any:
    """A finished job's terminal event data: what ``GET /v1/generation/{id}`` answers in JSON, without content (the
    envelope for a job that did not succeed)."""
    try:
        return service.status(record.id, with_content=False)
    except Lift3DError as exc:
        return ErrorBody.of(exc)


router = APIRouter()


@router.get(**_ROUTE)
async def generation_events(id: str, request: Request, caller: Caller, service: Generations,
                            config: Config, keys: Keys) -> Response:
    key_id = caller.key_id
    authorized = None if keys is None or key_id is None else (lambda: keys.usable(key_id))
    return await event_stream(id, request, lambda job_id: service.jobs.get(job_id, visible_to(caller)),
                              summarize=lambda record: _summary(service, record),
                              poll_interval_s=config.events_poll_interval_s, keepalive_s=config.events_keepalive_s,
                              authorized=authorized)


class _Recheck:
    """``authorized()`` at most every ``every_s`` seconds (monotonic clock); True without a check."""

    def __init__(self, authorized: Callable[[], bool] | None, every_s: float) -> None:
        self.authorized, self.every_s, self.last = authorized, every_s, time.monotonic()

    def due(self) -> bool:
        return self.authorized is not None and time.monotonic() - self.last >= self.every_s

    def __call__(self) -> bool:
        self.last = time.monotonic()
        return self.authorized is None or self.authorized()


async def _follow(first: list, stream: EventStream, poll: Callable[[], list], poll_interval_s: float,
                  recheck: _Recheck) -> AsyncIterator[ServerSentEvent]:
    """The stream's events: ``first``, then those of a fresh snapshot (``poll()``, in a worker thread) every
    ``poll_interval_s`` until the end. A job that disappears (or a read that fails) ends the stream, and so does a
    key no longer authorized (``recheck``, when due); the client may reconnect with Last-Event-ID."""
    for event in first:
        yield _encode(event)
    while not stream.done:
        await asyncio.sleep(poll_interval_s)
        try:
            if recheck.due() and not await asyncio.to_thread(recheck):
                logger.info("event stream: the API key is no longer valid; closing the stream")
                return
            events = await asyncio.to_thread(poll)
        except JobNotFound:
            return
        except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable; the client reconnects
            logger.warning("event stream: could not read the job record; closing the stream", exc_info=True)
            return
        for event in events:
            yield _encode(event)


def _encode(event: Any) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(event.data, separators=(",", ":")), event=event.event, id=str(event.id),
                           sep="\n")


async def apply_prefer_wait(request: Request, accepted: Response, *, job_id: str, get_record: Callable[[str], Any],
                            result: Callable[[], Response | Awaitable[Response]],
                            poll_interval_s: float = 0.25) -> Response:
    """Honour ``Prefer: wait=N`` (RFC 7240; N ≤ 60 s, larger values clamped, malformed ones ignored) on a POST
    that created job ``job_id``: hold until the job finishes or N seconds pass, then return ``result()`` (the
    response ``GET /v1/generation/{id}`` with ``Accept: application/json`` gives: 200 with the result, or the
    error envelope) or ``accepted`` (the 202). Either carries ``Preference-Applied: wait=N``. Without the
    preference, ``accepted`` is returned at once, unchanged.

    Args:
        get_record: ``job_id -> JobRecord`` (blocking; the caller binds the owner).
        result: builds the finished job's response (blocking — run in a worker thread — or returning an awaitable).
    """
    seconds = parse_prefer_wait(request.headers.getlist("prefer"))
    if seconds is None:
        return accepted
    try:
        finished = await wait_for_terminal(get_record, job_id, seconds, poll_interval_s=poll_interval_s)
    except JobNotFound:
        finished = None
    response = accepted if finished is None else await maybe_await(await asyncio.to_thread(result))
    response.headers["Preference-Applied"] = f"wait={seconds}"
    vary = response.headers.get("Vary")
    response.headers["Vary"] = f"{vary}, Prefer" if vary else "Prefer"
    return response
