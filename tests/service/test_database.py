"""The service database: migrations on SQLite and PostgreSQL, and the models agree with them."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from lift3d.service.db import Database, database_url_from_env, migrate
from lift3d.service.db.engine import MIGRATIONS
from lift3d.service.db.models import Base


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def test_migrations_create_every_table_and_match_the_models(database):
    tables = set(inspect(database.engine).get_table_names())
    assert {"api_keys", "jobs", "credit_ledger", "idempotency_records", "webhook_deliveries",
            "alembic_version"} <= tables
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []  # a model change without a migration shows up here
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()  # issue 23 added 0002
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    migrate(database)  # a second run is a no-op


def test_sqlite_uses_wal_and_foreign_keys(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")  # the folder is created
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()


def test_database_url_from_env():
    assert database_url_from_env({}) == "sqlite:////tmp/lift3d/lift3d.db"
    assert database_url_from_env({"LIFT3D_DATABASE_URL": "postgresql://u@h/db"}) == "postgresql://u@h/db"
    key = "8ZbHn3vI3Bq6sQ0cYbPnQm4wQmXc7xD0Yb1oE2hF3gM="  # a Fernet key: PostgreSQL needs one (issue 23)
    assert Database("postgresql://u:secret@h/db", encryption_key=key).redacted_url() == "postgresql+psycopg://u:***@h/db"


def test_replicas_migrating_at_once_all_succeed(database_url):
    """Four replicas (processes: Alembic's context is process-global) starting together: one migrates, the others
    wait for it and find the schema current."""
    import subprocess
    import sys

    code = "import sys; from lift3d.service.db import Database, migrate; migrate(Database(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert errors == []
    db = Database(database_url)
    with db.engine.connect() as connection:
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    db.dispose()


def test_a_sqlite_upgrade_through_every_revision_is_one_transaction(tmp_path):
    """The race the replica test can only catch by luck: were each revision committed on its own, a replica reading
    the version between two commits would run the next revision again. The whole upgrade must be one BEGIN … COMMIT,
    with the version read inside it."""
    from sqlalchemy import event

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    statements = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement.strip().split()[0].upper()))
    event.listen(db.engine, "commit", lambda conn: statements.append("COMMIT"))
    migrate(db)
    revisions = len(list(ScriptDirectory.from_config(_alembic_config()).walk_revisions()))
    assert revisions >= 2
    assert statements.count("COMMIT") == 1 and statements[-1] == "COMMIT"
    first_read = next(i for i, s in enumerate(statements) if s in ("SELECT", "PRAGMA") and i > 0)
    assert "COMMIT" not in statements[:first_read]
    db.dispose()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    """A write transaction holds SQLite's lock; a read session still answers at once (WAL snapshot)."""
    import time

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    migrate(db)
    with db.transaction() as writer:
        writer.execute(text("INSERT INTO api_keys (id, name, key_hash, prefix, webhook_secret, balance_mc, "
                            "created_at) VALUES ('k', 'n', 'h', 'p', 's', 5, 1.0)"))
        started = time.perf_counter()
        with db.read() as reader:
            assert reader.execute(text("SELECT count(*) FROM api_keys")).scalar() == 0  # before the commit
        assert time.perf_counter() - started < 1.0  # not the 30 s busy timeout
    with db.read() as reader:
        assert reader.execute(text("SELECT balance_mc FROM api_keys")).scalar() == 5
    db.dispose()


def test_read_first_answers_one_row_without_a_transaction(database):
    """The status poll's read (issue 23, poll cost): the row or None, from a statement built once with a bound
    parameter; on SQLite no BEGIN is sent (one statement is its own snapshot)."""
    from sqlalchemy import bindparam, event, select

    from lift3d.service.db.models import ApiKey

    with database.transaction() as writer:
        writer.execute(text("INSERT INTO api_keys (id, name, key_hash, prefix, webhook_secret, balance_mc, "
                            "created_at) VALUES ('k', 'n', 'h', 'p', 's', 5, 1.0)"))
    by_id = select(ApiKey.name, ApiKey.balance_mc).where(ApiKey.id == bindparam("key_id"))
    statements = []
    event.listen(database.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: statements.append(statement.split()[0].upper()))
    assert tuple(database.read_first(by_id, {"key_id": "k"})) == ("n", 5)
    assert database.read_first(by_id, {"key_id": "other"}) is None
    if database.is_sqlite:
        assert statements == ["SELECT", "SELECT"]


def test_read_first_nowait_answers_from_a_sqlite_file_and_gives_up_on_a_lock(tmp_path):
    """The event loop's read (issue 23, poll cost): answers at once from a SQLite file, and when the file is locked
    (another process in exclusive locking mode) raises ReadWouldWait after ~NOWAIT_BUSY_MS instead of blocking the
    loop for the 30 s busy timeout."""
    import sqlite3
    import time

    from lift3d.service.db import ReadWouldWait
    from lift3d.service.db.engine import NOWAIT_BUSY_MS

    path = tmp_path / "x.db"
    db = Database(f"sqlite:///{path}")
    migrate(db)
    count = text("SELECT count(*) FROM api_keys")
    assert tuple(db.read_first_nowait(count)) == (0,)
    db.dispose()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("UPDATE api_keys SET name = 'x'")
    started = time.perf_counter()
    with pytest.raises(ReadWouldWait):
        db.read_first_nowait(count)
    assert time.perf_counter() - started < 20 * NOWAIT_BUSY_MS / 1000
    other.execute("COMMIT")
    other.close()
    db.dispose()


def test_read_first_nowait_refuses_databases_behind_a_network(database):
    from lift3d.service.db import ReadWouldWait

    if database.is_sqlite:
        assert tuple(database.read_first_nowait(text("SELECT 1"))) == (1,)
    else:
        with pytest.raises(ReadWouldWait):
            database.read_first_nowait(text("SELECT 1"))
