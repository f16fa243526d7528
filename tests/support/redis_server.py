"""A throwaway ``redis-server`` (Debian's binary) for tests: loopback only, its data in a folder of its own, and
stop / crash / start again on the same port and data (durability tests).

A missing binary fails the test (never a skip): ``make test`` installs Debian's ``redis-server`` package
(``tools/ensure_test_deps.sh``).

Examples:
    >>> server = RedisServer(tmp_path / "redis", appendonly=True).start()
    >>> server.client.rpush("q", b"x")
    1
    >>> server.kill()           # SIGKILL: a crash, no shutdown save
    >>> server.start()          # same port, same data: the AOF is replayed
    >>> server.client.lrange("q", 0, -1)
    [b'x']
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from support.net import free_port
from support.wait import wait_until

__all__ = ["RedisServer"]


class RedisServer:
    """One ``redis-server`` process on a fixed loopback port with its data in ``folder``.

    Args:
        folder: data directory (AOF / RDB files) and ``redis.log``; created if missing.
        appendonly: ``appendonly yes`` with ``appendfsync everysec`` (what a broker should run with): every
            acknowledged write is in the AOF file before the reply, so it survives a crash of the process.
            False: no persistence at all (rate-limit counts).
        port: default: a free port, kept across restarts.
    """

    def __init__(self, folder: Path, *, appendonly: bool = False, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found: install Debian's redis-server package (make test does); the Redis "
                        "tests must not be skipped")
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> "RedisServer":
        """Start the server (again) and wait until it answers PING with its data loaded."""
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.appendonly else [
            "--appendonly", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                 "--save", "", *persistence, "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self._ready() or self.process.poll() is not None, timeout_s, "redis-server ready",
                       interval_s=0.02)
        except TimeoutError:
            pass
        if self.process.poll() is not None or not self._ready():
            self.kill()
            pytest.fail(f"redis-server did not start: {(self.folder / 'redis.log').read_text()[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            return bool(self.client.ping()) and self.client.info("persistence")["loading"] == 0
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown save) and wait for it to be gone."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: Redis's own shutdown (flushes the AOF)."""
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        self.client.connection_pool.disconnect()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        self.client.close()
