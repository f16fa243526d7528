"""Read deadlines and a connection cap for the service's own HTTP server (``lift3d playground``, uvicorn).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 past ``limit_concurrency``, but it
has no deadline for a request's headers or body: a client that sends half a request line, or declares a
1,000-byte body and sends 10, holds its connection (and, for a body, the route's task) for ever — the slowloris
attack. :class:`HttpLimits` states the deadlines and :func:`uvicorn_config` builds a uvicorn configuration whose
HTTP protocol enforces them, after nginx's ``client_header_timeout`` / ``client_body_timeout``
(https://nginx.org/en/docs/http/ngx_http_core_module.html#client_header_timeout):

* headers: a request's headers must be complete within ``header_timeout_s`` of the connection opening (or of the
  previous response on a kept-alive connection);
* body: while a request body is still arriving, each ``body_window_s`` window must bring at least
  ``body_min_bytes`` (a client dripping one byte every few seconds is cut after one window). Windows during which
  the server itself stopped reading (the route has not consumed what came, or a ``100-continue`` is pending) do not
  count.

A cut connection gets ``408 Request Timeout`` (``Connection: close``) when its response has not started, and is
closed. The protocol is uvicorn's httptools protocol (h11 when httptools is absent) with one timer per connection
checking these rules every ``check_interval_s``; it reads only the attributes both uvicorn protocols share
(``cycle``, ``transport``, ``flow``). The Serve graph's doors are the Serve proxy (``http_options`` in
``serve_config.yaml``) and the nginx Ingress (``k8s/ingress.yaml``): see docs/deployment.md.

Examples:
    >>> config = uvicorn_config(app, "127.0.0.1", 8000, HttpLimits(header_timeout_s=10))
    >>> uvicorn.Server(config).run()
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

__all__ = ["HttpLimits", "deadline_protocol", "uvicorn_config"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpLimits:
    """Deadlines and caps of one HTTP server process."""

    header_timeout_s: float = 10.0
    """Seconds a connection has to complete a request's headers (from its opening, or from the previous response)."""
    body_window_s: float = 10.0
    """Length of the windows in which a request body must make progress."""
    body_min_bytes: int = 10 * 1024
    """Bytes a request body must bring per window while it is arriving (1 KiB/s by default); a body that completes
    sooner is never cut."""
    keep_alive_s: float = 5.0
    """Seconds an idle kept-alive connection stays open (uvicorn's ``timeout_keep_alive``)."""
    limit_concurrency: int = 256
    """Connections or requests at once past which uvicorn answers 503 (its ``limit_concurrency``)."""
    check_interval_s: float = 1.0
    """How often each connection's deadlines are checked (the cut happens at most this late)."""

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_window_s", "keep_alive_s", "check_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.body_min_bytes < 0 or self.limit_concurrency < 1:
            raise ValueError("body_min_bytes must be >= 0 and limit_concurrency >= 1")


_TIMEOUT_BODY = b'{"name": "request_timeout", "message": "the request did not arrive in time", "errors": []}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


def _base_protocol() -> type:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415 - optional (C) parser

        return HttpToolsProtocol
    except ImportError:  # uvicorn without its [standard] extra
        from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: PLC0415

        return H11Protocol


def deadline_protocol(limits: HttpLimits) -> type:
    """uvicorn's HTTP protocol class with ``limits``' header and body deadlines (for ``uvicorn.Config(http=…)``)."""
    base = _base_protocol()

    class DeadlineProtocol(base):  # type: ignore[misc, valid-type]
        """One connection: uvicorn's protocol plus a timer that cuts slow headers and slow bodies."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._received = 0
            self._waiting_since: float | None = time.monotonic()  # waiting for a request's headers
            self._waiting_bytes = 0
            self._window: tuple[float, int] | None = None  # (start, bytes received at start) of a body window
            self._timer = self.loop.call_later(limits.check_interval_s, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            self._timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._received += len(data)
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._waiting_since, self._waiting_bytes = time.monotonic(), self._received

        def _check(self) -> None:
            if self.transport.is_closing():
                return
            now, cycle = time.monotonic(), self.cycle
            if cycle is None or cycle.response_complete:  # between requests: the next one's headers must come
                if self._waiting_since is None:
                    self._waiting_since, self._waiting_bytes = now, self._received
                elif now - self._waiting_since > limits.header_timeout_s:
                    self._cut("headers", partial=self._received > self._waiting_bytes)
                    return
            else:
                self._waiting_since = None
                self._check_body(now, cycle)
            if not self.transport.is_closing():
                self._timer = self.loop.call_later(limits.check_interval_s, self._check)

        def _check_body(self, now: float, cycle: Any) -> None:
            arriving = cycle.more_body and not cycle.disconnected
            if not arriving or self.flow.read_paused or getattr(cycle, "waiting_for_100_continue", False):
                self._window = None  # no body on its way, or the server is not reading it: no deadline
                return
            if self._window is None:
                self._window = (now, self._received)
            elif now - self._window[0] >= limits.body_window_s:
                if self._received - self._window[1] < limits.body_min_bytes:
                    self._cut("body", partial=not cycle.response_started)
                else:
                    self._window = (now, self._received)

        def _cut(self, what: str, partial: bool) -> None:
            client = "%s:%d" % self.client if self.client else "a client"
            logger.warning("closing the connection of %s: its request %s did not arrive in time", client, what)
            if partial:
                self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    return DeadlineProtocol


def uvicorn_config(app: Any, host: str, port: int, limits: HttpLimits = HttpLimits(),
                   **options: Any) -> uvicorn.Config:
    """A uvicorn configuration serving ``app`` with ``limits`` (keep-alive, concurrency cap, header and body
    deadlines); ``options`` go to :class:`uvicorn.Config` (e.g. ``log_level``)."""
    return uvicorn.Config(app, host=host, port=port, http=deadline_protocol(limits),
                          timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.limit_concurrency,
                          **options)
