"""Admission control: per-key rate limits, per-key concurrency and a global queue-depth limit.

- Rate limit: requests per minute per API key on every ``/v1/`` and ``/v2beta/`` request (moving window of 60 s,
  the ``limits`` library). The key's own ``rate_limit_per_min``, else the config's ``default_rate_limit_per_min``;
  0 means no limit. Over it: ``429 rate_limited`` with ``Retry-After`` (whole seconds until a slot frees). The
  counts live in ``rate_limit_storage_url``: ``redis://host:port/db`` shares them between every ingress replica;
  ``memory://`` (the default, for the embedded single-ingress setup) keeps them in the process, so N replicas
  would admit up to N times the limit; in memory the window is a deque of times per owner (:class:`LocalWindow`,
  O(1) per request: ``limits``' memory storage inserted at the front of a list and started a timer thread to
  expire entries, the largest cost of a status poll in the profile, issue 23). When Redis cannot be reached the request is admitted (fail open) and the
  error logged.
- Concurrency: a key (``max_concurrent_jobs``, else ``default_max_concurrent_jobs``; 0 = no limit) that already
  has that many ``queued`` + ``running`` jobs gets ``429 rate_limited`` for a new job.
- Queue depth: when ``max_queue_depth`` jobs (all keys; 0 = no limit) are ``queued``, a new job gets ``503
  overloaded``.

The last two apply to job-creating requests only (``POST /v1/generation/...``). The exact check runs in the
transaction that inserts the job, under an admission lock (:mod:`lift3d.service.jobs.limits`: ``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL), so concurrent submits cannot overshoot either limit. The middleware here
(:class:`JobAdmissionMiddleware`) runs the same counts earlier, without the lock, to refuse a flood before its body
is read and parsed.

Without a principal (authentication off) every request counts for the single owner ``"local"`` (jobs with
``owner_id`` NULL).

Examples:
    >>> install_admission(api, database, ServiceConfig())   # after the routes, before the auth middleware
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Protocol

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from lift3d.service.db.engine import Database
from lift3d.service.jobs.limits import (BUSY_RETRY_AFTER_S, OverloadedError, RateLimitedError, RefusedError,
                                        check_job_admission, count_active_jobs, count_queued_jobs)
from lift3d.service.api.auth import PROTECTED_PREFIX
from lift3d.service.api.errors import error_response
from lift3d.service.api.idempotency import LOCAL_OWNER, install_idempotency

logger = logging.getLogger(__name__)

__all__ = [
    "BUSY_RETRY_AFTER_S",
    "AdmissionSettings",
    "JobAdmissionMiddleware",
    "LocalWindow",
    "OverloadedError",
    "RateLimitMiddleware",
    "RateLimitedError",
    "RateLimiter",
    "RefusedError",
    "check_job_admission",
    "count_active_jobs",
    "count_queued_jobs",
    "install_admission",
    "principal_limits",
]

class AdmissionSettings(Protocol):
    """The :class:`~lift3d.service.config.ServiceConfig` fields that :func:`install_admission` reads."""

    idempotency_ttl_s: int
    rate_limit_storage_url: str
    default_rate_limit_per_min: int
    default_max_concurrent_jobs: int
    max_queue_depth: int


def principal_limits(scope: Scope) -> tuple[str | None, int | None, int | None]:
    """``(key_id, rate_limit_per_min, max_concurrent_jobs)`` of the request's principal (``request.state
    .principal``); Nones when absent (no principal: authentication off; None limits: the config's defaults)."""
    principal = (scope.get("state") or {}).get("principal")
    return (getattr(principal, "key_id", None), getattr(principal, "rate_limit_per_min", None),
            getattr(principal, "max_concurrent_jobs", None))


# ------------------------------------------------------------------------------------------------ rate limit
class LocalWindow:
    """A 60 s moving window per owner in this process: the times of the requests it admitted, oldest first, in a
    deque (append and expiry O(1) per request). Thread-safe.

    Args:
        window_s: the window's length in seconds (> 0).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = clock() + window_s

    def hit(self, owner: str, limit: int) -> float | None:
        """Admit and count one request of ``owner`` when fewer than ``limit`` (≥ 1) were admitted in the window:
        None; else (nothing counted) the seconds until enough of them leave it for one more."""
        now = self.clock()
        with self._lock:
            if now >= self._next_sweep:  # forget owners that went quiet, so the dict does not grow forever
                self._times = {k: t for k, t in self._times.items() if t and t[-1] > now - self.window_s}
                self._next_sweep = now + self.window_s
            times = self._times.setdefault(owner, deque())
            while times and times[0] <= now - self.window_s:
                times.popleft()
            if len(times) < limit:
                times.append(now)
                return None
            return times[len(times) - limit] + self.window_s - now


class RateLimiter:
    """Requests per minute per owner: a 60 s moving window, in this process (:class:`LocalWindow`) or in
    ``limits``' Redis storage.

    Args:
        storage_url: ``memory://`` (this process only) or ``redis://host:port/db`` (shared by every replica; also
            ``rediss://``, ``redis+sentinel://``, ``redis+cluster://``).
        default_per_min: limit of owners without their own, ≥ 0 (0: no limit).

    Raises:
        limits.errors.ConfigurationError: unknown storage scheme, or its client library is missing.
    """

    def __init__(self, storage_url: str = "memory://", default_per_min: int = 60) -> None:
        if default_per_min < 0:
            raise ValueError("default_per_min must be >= 0")
        self.default_per_min = default_per_min
        self.local = LocalWindow() if storage_url.startswith("memory://") else None
        if self.local is None:
            self.storage = storage_from_string(storage_url, wrap_exceptions=True)
            self.strategy = MovingWindowRateLimiter(self.storage)
        self.blocking = self.local is None  # network storage: call it off the event loop

    def check(self, owner: str, per_min: int | None = None) -> None:
        """Count one request of ``owner`` against ``per_min`` (None: the default; 0: no limit).

        Raises:
            RateLimitedError: over the limit (the request is not counted); ``retry_after_s`` is the whole seconds
                until the oldest request in the window leaves it (1-60).
        """
        limit = self.default_per_min if per_min is None else per_min
        if limit <= 0:
            return
        if self.local is not None:
            wait_s = self.local.hit(owner, limit)
            if wait_s is None:
                return
        else:
            item = RateLimitItemPerMinute(limit)
            try:
                if self.strategy.hit(item, "lift3d-requests", owner):
                    return
                reset_at, _ = self.strategy.get_window_stats(item, "lift3d-requests", owner)
            except StorageError:
                logger.exception("rate limit storage unavailable; admitting the request of %s", owner)
                return
            wait_s = reset_at - time.time()
        retry_after = min(60, max(1, math.ceil(wait_s)))
        raise RateLimitedError(f"rate limit of {limit} requests per minute reached for this API key; retry in "
                               f"{retry_after} s", retry_after)


class RateLimitMiddleware:
    """ASGI middleware: :meth:`RateLimiter.check` for every request whose path starts with ``prefix`` (one or a
    tuple; by default the authenticated paths, ``/v1/`` and ``/v2beta/``)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefix: str | tuple[str, ...] = PROTECTED_PREFIX) -> None:
        self.app, self.limiter, self.prefix = app, limiter, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            key_id, per_min, _ = principal_limits(scope)
            owner = key_id or LOCAL_OWNER
            try:
                if self.limiter.blocking:
                    await asyncio.to_thread(self.limiter.check, owner, per_min)
                else:
                    self.limiter.check(owner, per_min)
            except RateLimitedError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------ concurrency, queue depth
SYNCHRONOUS_PREFIXES = ("/v1/generation/text-to-image",)
"""POSTs under ``/v1/generation/`` that answer at once and create no job: the job limits do not apply to them
(the rate limit does)."""


class JobAdmissionMiddleware:
    """ASGI middleware: :func:`check_job_admission` for every POST whose path starts with ``prefix``.

    Args:
        app: the wrapped ASGI app.
        database: the service database (the ``jobs`` table).
        default_max_concurrent_jobs: limit of keys without their own (≥ 0; 0: no limit).
        max_queue_depth: queued jobs in all (≥ 0; 0: no limit).
        retry_after_s: ``Retry-After`` of a refusal.
        prefix: paths of job-creating POSTs.
        exclude: paths under ``prefix`` that create no job (the synchronous image endpoints).
    """

    def __init__(self, app: ASGIApp, database: Database, default_max_concurrent_jobs: int = 4,
                 max_queue_depth: int = 100, retry_after_s: int = BUSY_RETRY_AFTER_S,
                 prefix: str = "/v1/generation/", exclude: tuple[str, ...] = SYNCHRONOUS_PREFIXES) -> None:
        self.app, self.database, self.prefix, self.exclude = app, database, prefix, exclude
        self.default_max_concurrent_jobs, self.max_queue_depth = default_max_concurrent_jobs, max_queue_depth
        self.retry_after_s = retry_after_s

    def _check(self, owner_id: str | None, max_concurrent_jobs: int) -> None:
        with self.database.read() as session:
            check_job_admission(session, owner_id, max_concurrent_jobs=max_concurrent_jobs,
                                max_queue_depth=self.max_queue_depth, retry_after_s=self.retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(self.prefix)
                and not scope["path"].startswith(self.exclude)):
            key_id, _, own_limit = principal_limits(scope)
            limit = self.default_max_concurrent_jobs if own_limit is None else own_limit
            try:
                await asyncio.to_thread(self._check, key_id, limit)
            except (RateLimitedError, OverloadedError) as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_admission(api: Any, database: Database, config: AdmissionSettings, *, idempotency: bool = True,
                      clock: Callable[[], float] = time.time, retry_after_s: int = BUSY_RETRY_AFTER_S) -> None:
    """Add, innermost first: :class:`JobAdmissionMiddleware`, the idempotency middleware
    (:func:`~lift3d.service.api.idempotency.install_idempotency`, unless ``idempotency`` is False) and
    :class:`RateLimitMiddleware` to the FastAPI/Starlette ``api`` (before it starts).

    So a request goes: rate limit (every ``/v1/`` request, replays included) → idempotency (a retry is replayed
    even while its key is at its job limit) → concurrency and queue depth → the route. Starlette runs the
    middleware added last first: call this after adding the routes and BEFORE installing the authentication
    middleware, which must run before all three (they read ``request.state.principal``).

    Raises:
        limits.errors.ConfigurationError: ``config.rate_limit_storage_url`` is not a storage ``limits`` knows.
    """
    api.add_middleware(JobAdmissionMiddleware, database=database,
                       default_max_concurrent_jobs=config.default_max_concurrent_jobs,
                       max_queue_depth=config.max_queue_depth, retry_after_s=retry_after_s)
    if idempotency:
        install_idempotency(api, database, config.idempotency_ttl_s, clock)
    limiter = RateLimiter(config.rate_limit_storage_url, config.default_rate_limit_per_min)
    api.add_middleware(RateLimitMiddleware, limiter=limiter)
