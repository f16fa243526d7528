"""Periodic work on the service database, run by every consumer replica (``deployments/consumer.py``); each step is
safe to run on several replicas at once (guarded updates, idempotent deletes).

- :func:`housekeeping` (every ``sweep_interval_s``): finished jobs past ``result_ttl_s`` lose their artifacts and
  become ``expired``; idempotency records past their TTL are deleted.
- :func:`webhook_dispatcher` (its ``dispatch()`` every second or so): due webhook messages are sent, concurrently
  across API keys (:class:`lift3d.service.webhooks.sender.WebhookDispatcher`); :func:`deliver_webhooks` is one
  blocking round.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import delete

from lift3d.service.config import StateSettings
from lift3d.service.db.engine import Database
from lift3d.service.db.models import IdempotencyRecord
from lift3d.service.state import ServiceState
from lift3d.service.webhooks.sender import DeliveryResult, WebhookDispatcher, deliver_due

logger = logging.getLogger(__name__)

__all__ = ["Housekeeper", "deliver_webhooks", "housekeeping", "purge_expired", "webhook_dispatcher",
           "webhook_secret_for"]


def purge_expired(database: Database, now: float) -> int:
    """Delete idempotency rows with ``expires_at <= now`` (epoch seconds); returns how many were deleted."""
    with database.transaction() as session:
        return session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now)).rowcount


def housekeeping(state: ServiceState, settings: StateSettings, now: float | None = None) -> dict[str, int]:
    """Expire results and purge idempotency records; returns ``{"expired": n, "idempotency_purged": m}``."""
    expired = state.jobs.expire_due()
    purged = purge_expired(state.database, time.time() if now is None else now)
    if expired or purged:
        logger.info("housekeeping: %d jobs expired, %d idempotency records purged", len(expired), purged)
    return {"expired": len(expired), "idempotency_purged": purged}


def webhook_secret_for(state: ServiceState, settings: StateSettings):
    """``owner_id → whsec_…``: the key's own secret; for jobs without an owner (auth off) the service's
    ``webhook_secret``.

    Raises (when called):
        LookupError: an ownerless job and no ``webhook_secret`` configured (submit refuses such jobs first).
    """
    def secret_for(owner_id: str | None) -> str:
        if owner_id is not None and state.keys is not None:
            return state.keys.get(owner_id).webhook_secret
        if settings.webhook_secret:
            return settings.webhook_secret
        raise LookupError("no webhook secret for jobs without an API key; set webhook_secret")

    return secret_for


def deliver_webhooks(state: ServiceState, settings: StateSettings) -> list[DeliveryResult]:
    """One round of due webhook deliveries, waited for (each attempt within ``webhook_timeout_s``)."""
    return deliver_due(state.database, webhook_secret_for(state, settings), allow_private=settings.allow_private_webhooks,
                       allowed_ports=settings.webhook_allowed_ports, max_attempts=settings.webhook_max_attempts,
                       timeout_s=settings.webhook_timeout_s, max_workers=settings.webhook_concurrency,
                       per_owner=settings.webhook_per_owner_concurrency)


def webhook_dispatcher(state: ServiceState, settings: StateSettings) -> WebhookDispatcher:
    """A consumer replica's :class:`~lift3d.service.webhooks.sender.WebhookDispatcher` (call ``dispatch()`` every
    second or so; it never blocks on a receiver), configured by the ``webhook_*`` settings."""
    return WebhookDispatcher(state.database, webhook_secret_for(state, settings), timeout_s=settings.webhook_timeout_s,
                             max_workers=settings.webhook_concurrency,
                             per_owner=settings.webhook_per_owner_concurrency,
                             max_attempts=settings.webhook_max_attempts, allow_private=settings.allow_private_webhooks,
                             allowed_ports=settings.webhook_allowed_ports)


class Housekeeper:
    """A consumer replica's periodic work for a process that has none (``lift3d playground``): a background thread
    that runs :func:`housekeeping` every ``sweep_interval_s`` (results and idempotency records expire) and
    dispatches due webhooks every ``webhook_interval_s`` (:func:`webhook_dispatcher`), so the single-process
    service expires and delivers like the graph (issue 23). :meth:`start` / :meth:`stop`, or a context manager;
    :meth:`run_once` for tests.

    Args:
        state: the service state (database, jobs, keys).
        settings: expiry and webhook settings (a :class:`~lift3d.service.config.ServiceConfig` is one).
        sweep_interval_s, webhook_interval_s: seconds between rounds (> 0).
    """

    def __init__(self, state: ServiceState, settings: StateSettings, *, sweep_interval_s: float = 5.0,
                 webhook_interval_s: float = 1.0) -> None:
        if not sweep_interval_s > 0 or not webhook_interval_s > 0:
            raise ValueError("sweep_interval_s and webhook_interval_s must be > 0")
        self.state, self.settings = state, settings
        self.sweep_interval_s, self.webhook_interval_s = sweep_interval_s, webhook_interval_s
        self.dispatcher = webhook_dispatcher(state, settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lift3d-housekeeping", daemon=True)

    def run_once(self, sweep: bool = True) -> None:
        """One round: dispatch due webhooks (they run on the dispatcher's threads); with ``sweep``, housekeeping."""
        self.dispatcher.dispatch()
        if sweep:
            housekeeping(self.state, self.settings)

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stop.wait(self.webhook_interval_s):
            sweep = time.monotonic() >= next_sweep
            try:
                self.run_once(sweep)
            except Exception:  # noqa: BLE001 - keep going; the database may come back
                logger.warning("housekeeping round failed", exc_info=True)
            if sweep:
                next_sweep = time.monotonic() + self.sweep_interval_s

    def start(self) -> "Housekeeper":
        """Start the background thread (once)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (after its current round) and the webhook attempts not yet started."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.dispatcher.close(wait=False)

    def __enter__(self) -> "Housekeeper":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
