"""Connecting to the service database and migrating it.

URLs (SQLAlchemy form): ``sqlite:////tmp/lift3d/lift3d.db`` (the embedded default for ``make serve`` and the CLI;
WAL journal so readers never wait for the writer) or ``postgresql+psycopg://user:pass@host/db`` (clusters, where
several ingress and consumer replicas share it). ``LIFT3D_DATABASE_URL`` overrides the default.

Examples:
    >>> db = Database("sqlite:////tmp/lift3d/lift3d.db")
    >>> migrate(db)
    >>> with db.transaction() as session:
    ...     session.execute(select(Job).where(Job.status == "queued")).scalars().all()
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATABASE_URL", "Database", "database_url_from_env", "migrate"]

DEFAULT_DATABASE_URL = "sqlite:////tmp/lift3d/lift3d.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x6C696674  # "lift": the PostgreSQL advisory lock key held while migrating


def database_url_from_env(environ: dict[str, str] | None = None) -> str:
    """``LIFT3D_DATABASE_URL`` if set, else :data:`DEFAULT_DATABASE_URL`."""
    env = os.environ if environ is None else environ
    return env.get("LIFT3D_DATABASE_URL") or DEFAULT_DATABASE_URL


class Database:
    """An engine and its session factory. One per process (or replica); thread-safe.

    Args:
        url: SQLAlchemy URL. For a SQLite file, its folder is created and the connection uses WAL, a 30 s busy
            timeout and foreign keys. ``postgres://`` and ``postgresql://`` mean psycopg 3.

    Raises:
        sqlalchemy.exc.ArgumentError: the URL cannot be parsed.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        if self.is_sqlite:
            self.engine = _sqlite_engine(parsed)
        else:
            self.engine = create_engine(parsed, pool_pre_ping=True, future=True)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads start a deferred transaction on SQLite (no write lock: WAL readers never wait for each other).
        self._read_sessions = sessionmaker(self.engine.execution_options(lift3d_read_only=True),
                                           expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def redacted_url(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on leaving the block, rolled back on an exception. On SQLite
        it holds the write lock from its start (``BEGIN IMMEDIATE``): read-then-write needs no retry loop."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only: one consistent snapshot, and on SQLite no write lock (writes in it fail)."""
        with self._read_sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_engine(url) -> Engine:
    database = url.database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # Python's sqlite3 opens transactions lazily and on its own terms; take control so that BEGIN IMMEDIATE
    # takes the write lock at the start of a write transaction (no lost updates between replicas/threads).
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, future=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        read_only = connection.get_execution_options().get("lift3d_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def migrate(database: Database, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (idempotent: a current database is left alone).

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached (the message names the redacted URL).
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.connect() as connection:
        if not database.is_sqlite:
            # Replicas start together: one migrates, the others wait here and then find the schema current.
            # (SQLite needs nothing: BEGIN IMMEDIATE already serialises the migration transaction.)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
    logger.info("database %s at revision %s", database.redacted_url(), revision)
