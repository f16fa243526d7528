"""``LazyReceive``: ASGI middleware for the ``Ingress`` replica that asks Serve's proxy for a request's body only
when the app reads it.

In proxy mode, Ray Serve (2.4x–2.6x, ``ray/serve/_private/http_util.py``: ``ASGIReceiveProxy``) starts a task per
HTTP request that fetches the request's ASGI messages from the proxy actor, one actor call per batch of messages,
until the client disconnects. The task runs as soon as the app first awaits anything, so a status poll, which
awaits a database read in a worker thread and never reads its (empty) body, still pays for one or two actor calls
between the replica and the proxy: measured with ``benchmarks/bench_serve.py --polls-only --ceiling`` as the largest
part of a poll's cost over the no-op app (issue 23, poll cost).

Here the fetch waits until the app calls ``receive()`` for the first time (a body read, or a disconnect check of an
event stream), then runs as before. Nothing else changes: the proxy still cancels the request when the client goes
away. Serve's receive proxy is not public API: when its fields are not the ones expected (another Ray version), the
middleware passes requests through unchanged and logs that once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

logger = logging.getLogger(__name__)

__all__ = ["LazyReceive"]

_FETCH = "_receive_asgi_messages"  # ASGIReceiveProxy's per-request fetch: (request metadata) → pickled messages


class LazyReceive:
    """ASGI middleware: defer Ray Serve's per-request body fetch from the proxy until the app first calls
    ``receive()``. Requests whose ``receive`` is not Serve's proxy (tests, ``lift3d playground``) pass through."""

    warned = False

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        fetch = getattr(receive, _FETCH, None)
        if scope["type"] != "http" or fetch is None or not callable(fetch):
            if scope["type"] == "http" and type(receive).__name__ == "ASGIReceiveProxy" and not LazyReceive.warned:
                LazyReceive.warned = True
                logger.warning("Ray Serve's ASGIReceiveProxy has no %s: request bodies are fetched eagerly", _FETCH)
            await self.app(scope, receive, send)
            return
        wanted = asyncio.Event()

        async def fetch_when_wanted(metadata: Any) -> Any:
            await wanted.wait()
            return await fetch(metadata)

        setattr(receive, _FETCH, fetch_when_wanted)

        async def app_receive() -> dict:
            wanted.set()
            return await receive()

        await self.app(scope, app_receive, send)
