"""Helpers shared by the test modules, each written once: import them as ``from support import …`` (pytest puts
``tests/`` on ``sys.path``: ``pythonpath`` in ``pyproject.toml``).

- :func:`free_port`, :func:`serve_in_thread` (``support.net``): loopback ports and a uvicorn app in a thread.
- :func:`wait_until`, :func:`wait_healthy` (``support.wait``): poll a condition instead of sleeping a fixed time.
- :class:`Clock` (``support.clock``): a settable fake clock for stores that take ``clock=``.
- ``support.redis_server.RedisServer``, ``support.postgres.start_postgres``, ``support.s3.S3Server``: throwaway
  servers (Debian's ``redis-server`` and PostgreSQL binaries, moto's S3); a missing binary fails, never skips.
- ``support.ray_cluster.RayCluster``: the session's one local Ray cluster, lent to one user at a time.

The fixtures built on them (``postgres_server``, ``redis_server``, ``ray_cluster``, …) live in ``tests/conftest.py``.
"""

from support.clock import Clock
from support.net import free_port, serve_in_thread
from support.wait import wait_healthy, wait_until

__all__ = ["Clock", "free_port", "serve_in_thread", "wait_healthy", "wait_until"]
