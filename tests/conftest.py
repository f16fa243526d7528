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


# ------------------------------------------------------------------------------------------- shared runs
@dataclass(frozen=True)
class Generation:
    """A finished ``lift3d generate`` run: its exit code, output folder (read it, never write into it) and the
    generation parameters it was given (``GenerationParams`` fields)."""

    code: int
    out: Path
    params: dict


@pytest.fixture(scope="session")
def dragon_generation(tmp_path_factory) -> Generation:
    """``lift3d generate`` of ``examples/dragon2_rgba.png`` in this process, once per session: the tiny preset on
    the CPU, seed 3, 4 views, 2 multi-view steps, 12 SDS steps, texture on (the CLI's default). The CLI tests check
    it; the serial batch test compares a batch item with it byte for byte."""
    from lift3d.cli import main

    params = {"seed": 3, "num_views": 4, "num_multiview_steps": 2, "num_3d_max_steps": 12}
    out = tmp_path_factory.mktemp("dragon-generation")
    options = [f"--{key.replace('_', '-')}={value}" for key, value in params.items()]
    code = main(["generate", "--image", str(Path(__file__).parents[1] / "examples" / "dragon2_rgba.png"), "--out",
                 str(out), "--preset", "tiny", "--device", "cpu", *options])
    return Generation(code, out, params)


# ------------------------------------------------------------------------------------- servers (tests/support)
@pytest.fixture(scope="session")
def postgres_server():
    """ONE throwaway PostgreSQL cluster for the session (:func:`support.postgres.running_postgres`); tests get a
    fresh database each (``database_url``)."""
    from support.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """ONE throwaway ``redis-server`` for the session, no persistence (:class:`support.redis_server.RedisServer`).

    Flush it (``redis_server.client.flushall()``) before counting; tests that stop, kill or restart a server
    start their own ``RedisServer``."""
    from support.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server():
    """ONE moto S3-protocol server for the session (:class:`support.s3.S3Server`) on 127.0.0.1; its URL is
    ``s3_server.url``. Clients need ``support.s3.AWS_TEST_ENV`` in their environment. Tests that stop S3 start
    their own."""
    from support.s3 import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """ONE local Ray cluster for the session (:class:`support.ray_cluster.RayCluster`: 2 CPUs, 2 fake GPUs),
    started on first use; claim it with ``ray_cluster.use(name, start, stop)``."""
    from support.ray_cluster import RayCluster

    cluster = RayCluster().start()
    try:
        yield cluster
    finally:
        cluster.shutdown()


# ------------------------------------------------------------------------------------- databases (issue 9)
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database: a SQLite file in ``tmp_path``, or a new database on the session's PostgreSQL
    (dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lift3d.db'}"
        return
    import uuid

    from cryptography.fernet import Fernet

    # a PostgreSQL database needs the key of its encrypted columns (lift3d.service.db.encryption, issue 23)
    request.getfixturevalue("monkeypatch").setenv("LIFT3D_ENCRYPTION_KEY", Fernet.generate_key().decode())
    server, name = request.getfixturevalue("postgres_server"), f"t_{uuid.uuid4().hex[:16]}"
    yield server.create_database(name)
    server.drop_database(name)


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


@pytest.fixture(scope="session")
def sphere_views(tmp_path_factory):
    """16 RGBA views (64²) of a UV sphere of radius 0.5 centred at (0.2, 0.1, -0.1), via `render_views` files."""
    import trimesh

    from lift3d.reconstruct import RenderViewsOptions, render_views

    root = tmp_path_factory.mktemp("sphere")
    mesh = trimesh.creation.uv_sphere(radius=0.5, count=[48, 48])
    mesh.apply_translation([0.2, 0.1, -0.1])
    mesh.export(root / "sphere.ply")
    render_views(root / "sphere.ply", root / "views", RenderViewsOptions(
        num_views=16, resolution=64, normalize=False, y_up=False, distance=2.2))
    return root / "views"
