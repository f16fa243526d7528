"""The service's relational state: job records, API keys, the credit ledger, idempotency records and webhook
deliveries, through SQLAlchemy 2 with Alembic migrations. Artifacts stay in the artifact store.

- :mod:`.engine`: :class:`Database` (engine + sessions) from a URL; SQLite (WAL) embedded default, PostgreSQL on
  clusters; :func:`migrate` brings a database to the newest schema.
- :mod:`.models`: the tables.
"""

from lift3d.service.db.engine import DEFAULT_DATABASE_URL, Database, ReadWouldWait, database_url_from_env, migrate

__all__ = ["DEFAULT_DATABASE_URL", "Database", "ReadWouldWait", "database_url_from_env", "migrate"]
