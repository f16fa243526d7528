"""Connecting to the service database and migrating it.

URLs (SQLAlchemy form): ``sqlite:////tmp/lift3d/lift3d.db`` (the embedded default for ``make serve`` and the CLI;
WAL journal so readers never wait for the writer; the file created 0600) or
``postgresql+psycopg://user:pass@host/db`` (clusters, where several ingress and consumer replicas share it).
``LIFT3D_DATABASE_URL`` overrides the default.
Secret columns are encrypted with the key of :func:`lift3d.service.db.encryption.cipher_for_url`
(``LIFT3D_ENCRYPTION_KEY``; required for PostgreSQL).

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
from sqlalchemy.engine import Engine, Row, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import SingletonThreadPool
from sqlalchemy.sql.expression import Executable
from sqlalchemy.orm import Session, sessionmaker

from lift3d.service.db.encryption import cipher_for_url

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATABASE_URL", "NOWAIT_BUSY_MS", "Database", "ReadWouldWait", "database_url_from_env", "migrate"]

DEFAULT_DATABASE_URL = "sqlite:////tmp/lift3d/lift3d.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x6C696674  # "lift": the PostgreSQL advisory lock key held while migrating
NOWAIT_BUSY_MS = 20
"""Milliseconds :meth:`Database.read_first_nowait` waits for a locked SQLite file before giving up."""


class ReadWouldWait(Exception):
    """:meth:`Database.read_first_nowait` could not answer without waiting (see there)."""


def database_url_from_env(environ: dict[str, str] | None = None) -> str:
    """``LIFT3D_DATABASE_URL`` if set, else :data:`DEFAULT_DATABASE_URL`."""
    env = os.environ if environ is None else environ
    return env.get("LIFT3D_DATABASE_URL") or DEFAULT_DATABASE_URL


class Database:
    """An engine and its session factory. One per process (or replica); thread-safe.

    Args:
        url: SQLAlchemy URL. For a SQLite file, its folder is created, the file is created with mode 0600 (an
            existing file of ours is narrowed to 0600; SQLite gives its -wal and -shm files the same mode) and the
            connection uses WAL, a 30 s busy timeout and foreign keys. ``postgres://`` and ``postgresql://`` mean
            psycopg 3.
        encryption_key: Fernet key(s) of the secret columns, comma-separated; None: ``LIFT3D_ENCRYPTION_KEY``, else
            the local fallbacks of :func:`~lift3d.service.db.encryption.cipher_for_url`.

    Raises:
        sqlalchemy.exc.ArgumentError: the URL cannot be parsed.
        lift3d.service.db.encryption.MissingEncryptionKey: a PostgreSQL database and no key (a startup error).
    """

    def __init__(self, url: str, encryption_key: str | None = None) -> None:
        parsed = make_url(url)
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.url = parsed
        self.cipher = cipher_for_url(parsed, encryption_key)
        if self.is_sqlite:
            self.engine = _sqlite_engine(parsed)
        else:
            self.engine = create_engine(parsed, pool_pre_ping=True, future=True)
        # EncryptedText columns find the cipher here (lift3d.service.db.encryption.cipher_of): per engine, not global.
        self.engine.dialect.lift3d_cipher = self.cipher
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads start a deferred transaction on SQLite (no write lock: WAL readers never wait for each other).
        self._read_sessions = sessionmaker(self.engine.execution_options(lift3d_read_only=True),
                                           expire_on_commit=False)
        # One-statement reads: no session, and on SQLite no BEGIN (the statement is its own snapshot).
        self._single_reads = self.engine.execution_options(lift3d_single_statement=True)
        # read_first_nowait: one connection per thread, a short busy timeout (a local file only)
        self._nowait_reads = None
        if self.is_sqlite and parsed.database not in (None, "", ":memory:"):
            nowait = _sqlite_engine(parsed, busy_timeout_ms=NOWAIT_BUSY_MS, per_thread=True)
            nowait.dialect.lift3d_cipher = self.cipher
            self._nowait_reads = nowait.execution_options(lift3d_single_statement=True)

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

    def read_first(self, statement: Executable, params: dict | None = None) -> Row | None:
        """The first row of one ``SELECT`` (None: no row), run on its own: no ORM session, and on SQLite no
        ``BEGIN`` (one statement is its own consistent snapshot). For hot single reads such as a status poll's job
        row, where the session and the transaction cost more than the query; use :meth:`read` for anything that
        needs two statements to agree. ``params``: values of the statement's bound parameters (a statement built
        once with ``bindparam`` skips SQLAlchemy's per-call construction, most of a primary-key read's cost)."""
        with self._single_reads.connect() as connection:
            return connection.execute(statement, params).first()

    def read_first_nowait(self, statement: Executable, params: dict | None = None) -> Row | None:
        """:meth:`read_first` for a caller on an event loop, which must not block: on a SQLite file only, on the
        calling thread's own connection (no pool to wait for) with a :data:`NOWAIT_BUSY_MS` busy timeout. A WAL
        reader waits for nobody in normal operation and a primary-key read takes ~0.1 ms, less than the hop to a
        worker thread (issue 23, poll cost).

        Raises:
            ReadWouldWait: PostgreSQL (a network round trip) or an in-memory SQLite database, or the file stayed
                locked for :data:`NOWAIT_BUSY_MS` (then call :meth:`read_first` in a worker thread).
        """
        if self._nowait_reads is None:
            raise ReadWouldWait("reads of this database wait for the network")
        try:
            with self._nowait_reads.connect() as connection:
                return connection.execute(statement, params).first()
        except OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ReadWouldWait("the database is locked") from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()
        if self._nowait_reads is not None:
            self._nowait_reads.engine.dispose()


def _sqlite_engine(url, busy_timeout_ms: int = 30_000, per_thread: bool = False) -> Engine:
    database = url.database
    if database and database != ":memory:":
        _private_file(Path(database))
    # Python's sqlite3 opens transactions lazily and on its own terms; take control so that BEGIN IMMEDIATE
    # takes the write lock at the start of a write transaction (no lost updates between replicas/threads).
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
                           future=True, **({"poolclass": SingletonThreadPool, "pool_size": 16} if per_thread else {}))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        options = connection.get_execution_options()
        if options.get("lift3d_single_statement", False):
            return  # Database.read_first: the driver is in autocommit, so the one statement runs in its own snapshot
        connection.exec_driver_sql("BEGIN" if options.get("lift3d_read_only", False) else "BEGIN IMMEDIATE")

    return engine


def _private_file(path: Path) -> None:
    """Create the SQLite file ``path`` (and its folder) readable by this user only: mode 0600, whatever the umask.
    Existing files of this user (the database, its -wal, -shm, -journal) with a wider mode are narrowed; another
    user's are left alone (logged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        mode = None
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(file, 0o600)
        except FileNotFoundError:
            continue
        except PermissionError:
            logger.warning("database file %s has mode %s and is not ours to narrow to 0600", file.name,
                           "?" if mode is None else oct(mode))


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
        if database.is_sqlite:
            # A migration that changes a column rebuilds the table (Alembic's batch mode), and dropping a table that
            # other rows reference fails while foreign keys are enforced: turn them off for this connection, outside
            # any transaction (where the pragma works), as https://www.sqlite.org/lang_altertable.html prescribes,
            # and check them after.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            # Replicas start together: the whole upgrade is one BEGIN IMMEDIATE transaction, so one replica reads the
            # version, migrates and commits while the others wait and then find the schema current. (Left to itself,
            # Alembic commits SQLite after every revision, and a replica that read the old version between two of
            # them would run the next revision a second time.)
            connection.begin()
        else:
            # The same on PostgreSQL: the advisory lock opens the transaction and holds the others until its commit.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if database.is_sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"migration left rows whose foreign keys point nowhere: {broken[:5]}")
            connection.commit()
        finally:
            if database.is_sqlite:
                connection.rollback()  # nothing is open after a commit; after an error, end it before the pragma
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
    logger.info("database %s at revision %s", database.redacted_url(), revision)
