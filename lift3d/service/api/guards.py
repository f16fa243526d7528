"""The API's outer guards: response headers every answer carries, the limit on unauthenticated traffic per client
address, and the cap on large uploads in flight.

- :class:`SecurityHeadersMiddleware`: ``X-Content-Type-Options: nosniff`` on every response (a result's bytes are
  never sniffed into HTML), and ``Cache-Control: private, no-store`` on every response to an authenticated call (or
  under the protected prefixes), so neither a shared proxy nor the browser keeps a key's results (OWASP REST
  Security Cheat Sheet, "Security headers"; RFC 9111 §5.2.2.5 ``no-store``). A response that already says
  ``no-store`` keeps its own ``Cache-Control``.
- :class:`FailedAuthLimiter`: a token bucket per client address for requests that fail authentication; once a client
  has spent its failures, its requests to the protected prefixes are refused with ``429 rate_limited`` and
  ``Retry-After`` *before* the key is looked up, so a flood of made-up keys costs no database round trips. Used by
  :class:`~lift3d.service.api.auth.AuthMiddleware`.
- :class:`UploadSlotsMiddleware`: at most ``per_key`` large uploads (``views-to-3d``) of one key and ``total`` of
  the process in flight; past them ``429 rate_limited`` (the key's) or ``503 overloaded`` (the process's), both with
  ``Retry-After``, before the body is read.

The client address is the TCP peer's (``scope["client"]``), or behind ``forwarded_hops`` trusted reverse proxies the
address the outermost one put in ``X-Forwarded-For`` (:func:`client_address`; 1 behind the nginx Ingress, whose
NetworkPolicy is the only way to Serve's port). The edge (the Ingress's ``limit-rps`` / ``limit-connections``,
``k8s/ingress.yaml``) limits every client's rate first; these are the inner doors.

Examples:
    >>> limiter = FailedAuthLimiter(failures_per_min=20)
    >>> limiter.retry_after("203.0.113.9")       # None: may try
    >>> limiter.failed("203.0.113.9")             # after 20 of these in a minute, retry_after() is a number
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Callable

from cachetools import TTLCache
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lift3d.service.api.errors import error_response
from lift3d.service.jobs.limits import OverloadedError, RateLimitedError

__all__ = ["NOSNIFF", "PRIVATE_NO_STORE", "UPLOAD_PATHS", "FailedAuthLimiter", "SecurityHeadersMiddleware",
           "UploadSlotsMiddleware", "client_address"]

PRIVATE_NO_STORE = "private, no-store"
"""``Cache-Control`` of every authenticated response."""
NOSNIFF = "nosniff"
"""``X-Content-Type-Options`` of every response."""
UPLOAD_PATHS = frozenset({"/v1/generation/views-to-3d"})
"""POST routes whose bodies are large uploads (a views ZIP, up to 200 MiB): :class:`UploadSlotsMiddleware` caps them."""


def client_address(scope: Scope, forwarded_hops: int = 0) -> str:
    """The client's address: the TCP peer's (``"unknown"`` when the server does not say), or, behind
    ``forwarded_hops`` reverse proxies that each append the address they saw to ``X-Forwarded-For``, the entry the
    outermost of them added (the ``forwarded_hops``-th from the right; entries left of it are the client's own
    claims and are ignored). Fewer entries than hops: the leftmost."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if forwarded_hops <= 0:
        return peer
    forwarded = ",".join(value.decode("latin-1") for name, value in scope.get("headers", ())
                         if name == b"x-forwarded-for")
    hops = [entry.strip() for entry in forwarded.split(",") if entry.strip()]
    return hops[-min(forwarded_hops, len(hops))] if hops else peer


class SecurityHeadersMiddleware:
    """ASGI middleware: ``nosniff`` on every HTTP response; ``Cache-Control: private, no-store`` on those to an
    authenticated call (a principal with a key id) or under ``private_prefixes``.

    Install it outermost (after the authentication middleware), so that it also covers 401s and errors.
    """

    def __init__(self, app: ASGIApp, private_prefixes: tuple[str, ...] = ("/v1/", "/v2beta/")) -> None:
        self.app, self.private_prefixes = app, private_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = NOSNIFF
                principal = state.get("principal")
                private = (scope["path"].startswith(self.private_prefixes)
                           or getattr(principal, "key_id", None) is not None)
                if private and "no-store" not in headers.get("cache-control", "").lower():
                    headers["Cache-Control"] = PRIVATE_NO_STORE
            await send(message)

        await self.app(scope, receive, send_with_headers)


class FailedAuthLimiter:
    """Failed authentications per client address: a token bucket of ``burst`` tokens refilled at
    ``failures_per_min`` per minute; each failure takes one, and a client with none left is refused until one is
    back. In one process (event-loop thread only); at most ``max_clients`` addresses are remembered (the oldest are
    forgotten first), each for as long as its bucket takes to refill.

    Args:
        failures_per_min: refill rate (> 0).
        burst: bucket size (default: ``failures_per_min``).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, failures_per_min: float = 20, burst: int | None = None, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not failures_per_min > 0:
            raise ValueError("failures_per_min must be > 0")
        self.rate_per_s = failures_per_min / 60.0
        self.burst = burst if burst is not None else max(1, int(failures_per_min))
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self.clock = clock
        self._buckets: TTLCache = TTLCache(maxsize=max_clients, ttl=self.burst / self.rate_per_s, timer=clock)

    def _tokens(self, client: str) -> float:
        tokens, since = self._buckets.get(client, (float(self.burst), self.clock()))
        return min(float(self.burst), tokens + (self.clock() - since) * self.rate_per_s)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try a key again (≥ 1), or None: it may now."""
        tokens = self._tokens(client)
        return None if tokens >= 1 else max(1, math.ceil((1 - tokens) / self.rate_per_s))

    def failed(self, client: str) -> None:
        """Count one failed authentication of ``client``."""
        self._buckets[client] = (max(0.0, self._tokens(client) - 1), self.clock())

    def refusal(self, client: str) -> RateLimitedError | None:
        """The 429 for ``client`` when it has no failures left, else None."""
        seconds = self.retry_after(client)
        if seconds is None:
            return None
        return RateLimitedError("too many requests with a missing or invalid API key from this address; retry "
                                f"in {seconds} s", retry_after_s=seconds)


class UploadSlotsMiddleware:
    """ASGI middleware: at most ``per_key`` uploads of one key and ``total`` of the process in flight on ``paths``
    (POST); a slot is held from before the body is read until the response has been sent.

    Install it inside the authentication middleware (it reads ``scope["state"]["principal"]``; without one, the
    client address stands for the key).

    Args:
        per_key: uploads of one key at once (≥ 1); past it ``429 rate_limited``.
        total: uploads of the process at once (≥ ``per_key``); past it ``503 overloaded``.
        retry_after_s: the refusals' ``Retry-After``.
    """

    def __init__(self, app: ASGIApp, per_key: int = 2, total: int = 8, retry_after_s: int = 5,
                 paths: frozenset[str] = UPLOAD_PATHS, forwarded_hops: int = 0) -> None:
        if not 1 <= per_key <= total:
            raise ValueError("need 1 <= per_key <= total")
        self.app, self.per_key, self.total, self.retry_after_s, self.paths = app, per_key, total, retry_after_s, paths
        self.forwarded_hops = forwarded_hops
        self.in_flight: Counter[str] = Counter()  # uploads in flight per key (event-loop thread only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        owner = getattr(principal, "key_id", None) or f"address:{client_address(scope, self.forwarded_hops)}"
        if self.in_flight[owner] >= self.per_key:
            refused = RateLimitedError(f"at most {self.per_key} uploads of one key at once; retry when one has "
                                       "finished", retry_after_s=self.retry_after_s)
            await error_response(refused)(scope, receive, send)
            return
        if self.in_flight.total() >= self.total:
            refused = OverloadedError("the server is receiving as many uploads as it takes; retry shortly",
                                      retry_after_s=self.retry_after_s)
            await error_response(refused)(scope, receive, send)
            return
        self.in_flight[owner] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[owner] -= 1
            if self.in_flight[owner] <= 0:
                del self.in_flight[owner]
