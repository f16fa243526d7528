"""Periodic work on the service database, run by every consumer replica (``deployments/consumer.py``); each step is
safe to run on several replicas at once (guarded updates, idempotent deletes).

- :func:`housekeeping` (every ``sweep_interval_s``): finished jobs past ``result_ttl_s`` lose their artifacts and
  become ``expired``; idempotency records past their TTL are deleted.
- :func:`deliver_webhooks` (every second or so): due webhook messages are sent (:func:`lift3d.service.webhooks.sender.deliver_due`).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import delete

from lift3d.service.config import StateSettings
from lift3d.service.db.engine import Database
from lift3d.service.db.models import IdempotencyRecord
from lift3d.service.state import ServiceState
from lift3d.service.webhooks.sender import DeliveryResult, deliver_due

logger = logging.getLogger(__name__)

__all__ = ["deliver_webhooks", "housekeeping", "purge_expired", "webhook_secret_for"]


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
    """One round of due webhook deliveries (blocking: up to 10 s per receiver)."""
    return deliver_due(state.database, webhook_secret_for(state, settings), allow_private=settings.allow_private_webhooks,
                       max_attempts=settings.webhook_max_attempts)
