"""Fixtures shared by the test modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class EmptyHubCache:
    """An empty Hugging Face cache; ``offline`` tells whether HF_HUB_OFFLINE is set."""

    hub_dir: Path
    offline: bool

    @property
    def limit_s(self) -> float:
        """How fast a missing model must be reported: offline needs no network at all."""
        return 5.0 if self.offline else 10.0


@pytest.fixture(params=[True, False], ids=["offline", "online"])
def empty_hub_cache(request, monkeypatch, tmp_path) -> EmptyHubCache:
    """HF_HOME pointing at an empty directory, with HF_HUB_OFFLINE set (first run) or unset (second run)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    if request.param:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return EmptyHubCache(hub_dir=tmp_path / "hf" / "hub", offline=request.param)


# ------------------------------------------------------------------------------------- databases (issue 9)
@dataclass(frozen=True)
class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's server binaries) listening on a Unix socket in a temp dir."""

    socket_dir: Path
    port: int
    user: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"


def _postgres_bindir() -> Path | None:
    import shutil
    import subprocess

    for candidate in filter(None, [shutil.which("pg_config")]):
        out = subprocess.run([candidate, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres_server():
    """Start ``initdb`` + ``pg_ctl`` in a temp dir for the session; fails (never skips) without the binaries."""
    import getpass
    import os
    import shutil
    import socket
    import subprocess

    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin): install "
                    "Debian's postgresql package; the PostgreSQL tests must not be skipped")
    import tempfile

    # Its own folder under /tmp: pytest's tmp dirs are private to the test user, and the server may run as postgres.
    root = Path(tempfile.mkdtemp(prefix="lift3d-pg-"))
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
    done = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
                           "-E", "UTF8"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"initdb failed: {done.stderr[-2000:]}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"-k {sockets} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
    done = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                           "-w", "start"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        pytest.fail(f"pg_ctl start failed: {done.stderr[-2000:]}")
    try:
        yield PostgresServer(socket_dir=sockets, port=port, user=user)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file in ``tmp_path``, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lift3d.db'}"
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(host=str(server.socket_dir), port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


@pytest.fixture
def database(database_url):
    """A migrated :class:`lift3d.service.db.Database` on SQLite or PostgreSQL."""
    from lift3d.service.db import Database, migrate

    db = Database(database_url)
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def sqlite_database(tmp_path):
    """A migrated SQLite :class:`lift3d.service.db.Database` in ``tmp_path`` (for tests about something else)."""
    from lift3d.service.db import Database, migrate

    db = Database(f"sqlite:///{tmp_path / 'lift3d.db'}")
    migrate(db)
    yield db
    db.dispose()
