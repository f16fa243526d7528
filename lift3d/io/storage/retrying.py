"""Riding out an outage of the artifact store (or another backing service) instead of failing the work.

:func:`is_unavailable_error` tells a backing service that cannot be reached (connection refused or reset, timeouts,
a database that went away) from errors in the request itself. :class:`RetryingStore` wraps an
:class:`~lift3d.io.storage.base.ArtifactStore` and retries calls that failed that way, with exponential backoff,
within a time budget: workers use it so that a job running across a short S3 outage pauses and then finishes,
where the HTTP ingress fails fast with ``503`` and ``Retry-After`` instead.

Examples:
    >>> store = RetryingStore(make_store("s3://bucket/prefix"), budget_s=120)
    >>> store.put("generations/abc/model.glb", data)   # waits up to 120 s for S3 to come back
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

from lift3d.io.media_types import OCTET_STREAM
from lift3d.io.storage.base import ArtifactStore

logger = logging.getLogger(__name__)

__all__ = ["RetryingStore", "is_unavailable_error"]

T = TypeVar("T")

# Names, not imports: botocore, SQLAlchemy, redis-py and Kombu are optional here, and their connection errors do not
# share a base class with the builtin ConnectionError.
_UNAVAILABLE_NAMES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",  # botocore
    "OperationalError", "InterfaceError", "DisconnectionError",  # SQLAlchemy / DB-API (server gone, locked, …)
    "BusyLoadingError",  # redis-py (its ConnectionError/TimeoutError subclass the builtins' names below)
})


def is_unavailable_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception in its ``__cause__``/``__context__`` chain) says a backing service could not
    be reached: builtin ``ConnectionError``/``TimeoutError`` (refused, reset, timed out), or a client library's
    equivalent (botocore endpoint/connection errors, SQLAlchemy ``OperationalError``, redis/Kombu connection
    errors). Errors about the request itself (missing keys, bad input, permissions) are not."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & _UNAVAILABLE_NAMES or "ConnectionError" in names or "TimeoutError" in names:
            return True
        current = current.__cause__ or current.__context__
    return False


class RetryingStore:
    """An :class:`ArtifactStore` that retries calls failing with :func:`is_unavailable_error` until ``budget_s``
    seconds have passed since the first failure of that call, waiting ``first_wait_s``, then twice as long each
    time, at most ``max_wait_s``. Other errors (``StoredObjectNotFound``, bad keys) pass through at once.

    Args:
        store: the wrapped store.
        budget_s: seconds one call may spend retrying (> 0); then the last error is raised.
        sleep, clock: injectable for tests.
    """

    def __init__(self, store: ArtifactStore, budget_s: float = 120.0, *, first_wait_s: float = 0.5,
                 max_wait_s: float = 8.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not budget_s > 0:
            raise ValueError("budget_s must be > 0")
        self.store, self.budget_s = store, budget_s
        self.first_wait_s, self.max_wait_s, self.sleep, self.clock = first_wait_s, max_wait_s, sleep, clock

    def __repr__(self) -> str:
        return f"RetryingStore({self.store!r}, budget_s={self.budget_s})"

    def _call(self, what: str, call: Callable[[], T]) -> T:
        deadline, wait = None, self.first_wait_s
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_unavailable_error(exc):
                    raise
                now = self.clock()
                deadline = deadline if deadline is not None else now + self.budget_s
                if now + wait > deadline:
                    raise
                logger.warning("artifact store unavailable during %s (%s); retrying in %.1f s", what,
                               type(exc).__name__, wait)
                self.sleep(wait)
                wait = min(self.max_wait_s, wait * 2)

    def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        self._call(f"put {key}", lambda: self.store.put(key, data, content_type))

    def put_file(self, key: str, file: Any, content_type: str = OCTET_STREAM) -> None:
        """Store the rest of the seekable binary ``file`` (each retry starts from where it was): the wrapped store's
        ``put_file`` when it has one, else ``put`` of its bytes."""
        start = file.tell()

        def put() -> None:
            file.seek(start)
            put_file = getattr(self.store, "put_file", None)
            if put_file is None:
                self.store.put(key, file.read(), content_type)
            else:
                put_file(key, file, content_type)

        self._call(f"put {key}", put)

    def get(self, key: str) -> bytes:
        return self._call(f"get {key}", lambda: self.store.get(key))

    def get_file(self, key: str, file: Any) -> None:
        """Write the object into the seekable binary ``file`` (each retry truncates back to where it started): the
        wrapped store's ``get_file`` when it has one, else ``get``."""
        start = file.tell()

        def get() -> None:
            file.seek(start)
            file.truncate()
            get_file = getattr(self.store, "get_file", None)
            if get_file is None:
                file.write(self.store.get(key))
            else:
                get_file(key, file)

        self._call(f"get {key}", get)

    def exists(self, key: str) -> bool:
        return self._call(f"exists {key}", lambda: self.store.exists(key))

    def list(self, prefix: str) -> list[str]:
        return self._call(f"list {prefix}", lambda: self.store.list(prefix))

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self._call(f"url {key}", lambda: self.store.url(key, expires_s))

    def delete_prefix(self, prefix: str) -> int:
        return self._call(f"delete {prefix}", lambda: self.store.delete_prefix(prefix))
