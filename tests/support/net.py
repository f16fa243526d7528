"""Loopback networking for tests: a free port, an ASGI app served by uvicorn in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

__all__ = ["free_port", "serve_in_thread"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it; the probe socket is closed, so
    a test may also use it as "a port where nothing listens")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout_s: float = 10.0) -> Iterator[str]:
    """Serve ``app`` (ASGI) with uvicorn on a free port of 127.0.0.1 in a daemon thread; yields its base URL
    (``http://127.0.0.1:<port>``) once the server accepts connections, and stops it on exit.

    The socket is bound here and handed to uvicorn, so no other process can take the port in between.
    Raises ``TimeoutError`` if the server has not started within ``timeout_s``.
    """
    import uvicorn

    from support.wait import wait_until

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout_s, "uvicorn started", interval_s=0.01)
        if not server.started:
            raise RuntimeError("uvicorn exited before it started (see the log above)")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
