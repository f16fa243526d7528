"""The service's state handles, opened the same way by every replica, the CLI and the tests: the database
(migrated), the artifact store, the job store and the API keys.

Examples:
    >>> state = open_state(ServiceConfig(preset="tiny"))  # or a replica's TrainerSettings / ConsumerSettings
    >>> state.jobs.count_queued()
    0
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from lift3d.io.storage import make_store
from lift3d.io.storage.base import ArtifactStore
from lift3d.io.storage.retrying import RetryingStore
from lift3d.service.config import StateSettings
from lift3d.service.db import Database, database_url_from_env, migrate
from lift3d.service.jobs.artifacts import ArtifactUrls
from lift3d.service.jobs.store import JobRecord, JobStore
from lift3d.service.accounts.keys import ApiKeyStore
from lift3d.service.metrics import FinishedJobCounter, count_finished_jobs
from lift3d.service.webhooks.events import WebhookEvents

logger = logging.getLogger(__name__)

__all__ = ["ServiceState", "open_state"]


@dataclass
class ServiceState:
    """What a replica holds: ``keys`` is None when the service runs without API keys (``auth: false``)."""

    database: Database
    store: ArtifactStore
    jobs: JobStore
    keys: ApiKeyStore | None

    def close(self) -> None:
        self.database.dispose()


def open_state(settings: StateSettings, *, run_migrations: bool = True,
               on_write: Callable[[Any, JobRecord, JobRecord], None] | None = None,
               store_retry_s: float = 0.0, metrics: FinishedJobCounter | None = None) -> ServiceState:
    """Connect (and, by default, migrate: replicas starting together take turns) and build the stores.

    Args:
        settings: store and database URLs, auth, credit and expiry settings (every ``*Settings`` and
            :class:`~lift3d.service.config.ServiceConfig` is one).
        on_write: the job store's write hook (tests); default: the webhook outbox's
            :class:`~lift3d.service.webhooks.events.WebhookEvents` with the settings' progress interval, USD per
            credit and artifact URLs (presigned for ``url_expires_s`` when the store presigns).
        store_retry_s: > 0: store calls that fail because the store is unreachable are retried for up to this many
            seconds (:class:`~lift3d.io.storage.retrying.RetryingStore`; workers ride out an outage). 0: fail at
            once (the ingress answers 503).
        metrics: counts every job once when it ends (``lift3d_jobs_finished``), whichever replica ends it.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    database = Database(settings.database_url or database_url_from_env())
    if run_migrations:
        migrate(database)
    store = make_store(settings.store_url)
    if store_retry_s > 0:
        store = RetryingStore(store, budget_s=store_retry_s)
    if on_write is None:
        on_write = WebhookEvents(progress_interval_s=settings.webhook_progress_interval_s,
                                 usd_per_credit=settings.usd_per_credit,
                                 artifact_url=ArtifactUrls(store, settings.url_expires_s))
    if metrics is not None:
        on_write = _both(on_write, count_finished_jobs(metrics))
    jobs = JobStore(database, store, usd_per_credit=settings.usd_per_credit, result_ttl_s=settings.result_ttl_s,
                    on_write=on_write, lease_s=settings.lease_s)
    logger.info("service state: database %s, store %r, auth %s", database.redacted_url(), store, settings.auth)
    return ServiceState(database=database, store=store, jobs=jobs,
                        keys=ApiKeyStore(database) if settings.auth else None)


def _both(first: Callable[[Any, JobRecord, JobRecord], None],
          second: Callable[[Any, JobRecord, JobRecord], None]) -> Callable[[Any, JobRecord, JobRecord], None]:
    def hook(session: Any, before: JobRecord, after: JobRecord) -> None:
        first(session, before, after)
        second(session, before, after)

    return hook
