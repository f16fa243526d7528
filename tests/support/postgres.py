"""A throwaway PostgreSQL cluster (Debian's server binaries: ``initdb`` + ``pg_ctl``) listening on a Unix socket in
a temp dir; a missing binary fails, never skips (the image ships Debian's ``postgresql`` package)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.net import free_port

__all__ = ["PostgresServer", "running_postgres"]


@dataclass(frozen=True)
class PostgresServer:
    """Where the cluster listens: ``socket_dir`` (Unix socket), ``port`` (names the socket file), ``user``."""

    socket_dir: Path
    port: int
    user: str

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 over the Unix socket)."""
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (empty: a copy of ``template1``); returns its :meth:`url`."""
        self._execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE name WITH (FORCE)``: its files go at once, open connections are ended."""
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(statement)


def _postgres_bindir() -> Path | None:
    for candidate in filter(None, [shutil.which("pg_config")]):
        out = subprocess.run([candidate, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _in_memory_dir(path: str = "/dev/shm", min_free_bytes: int = 1 << 30) -> str | None:
    """``/dev/shm`` when it is a writable folder with at least 1 GiB free (a container's default is 64 MiB), else
    None (the default temp folder). In memory a test database is created and dropped in ~50 ms, ~300 ms on disk."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) and stats.f_bavail * stats.f_frsize >= min_free_bytes else None


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """``initdb`` + ``pg_ctl start`` in a temp dir (fsync off); stopped (``-m immediate``) and removed on exit.

    As root, the server runs as the ``postgres`` system user (``initdb`` refuses root). Fails the test (never
    skips) without the binaries.
    """
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin): install "
                    "Debian's postgresql package; the PostgreSQL tests must not be skipped")
    # Its own folder: pytest's tmp dirs are private to the test user, and the server may run as postgres.
    root = Path(tempfile.mkdtemp(prefix="lift3d-pg-", dir=_in_memory_dir()))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    user = getpass.getuser()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres system user
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' system user to run the PostgreSQL server as")
        user, as_user = "postgres", [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
        for path in (root, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        root.chmod(0o755)
    try:
        done = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                               "-E", "UTF8"], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {done.stderr[-2000:]}")
        port = free_port()
        # dynamic shared memory in the data folder (mmap), not /dev/shm: an immediate stop leaves nothing behind
        options = (f"-k {sockets} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off "
                   "-c dynamic_shared_memory_type=mmap")
        done = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                               str(root / "log"), "-w", "start"], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {done.stderr[-2000:]}")
        try:
            yield PostgresServer(socket_dir=sockets, port=port, user=user)
        finally:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, env=env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
