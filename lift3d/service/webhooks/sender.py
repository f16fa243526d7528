"""Sending the outbox's webhook messages (Standard Webhooks, https://www.standardwebhooks.com): signing, the HTTP
POST, and the retry loop.

A consumer loop calls :func:`deliver_due`: each due row is claimed with a guarded ``UPDATE`` (two replicas never
send the same attempt), the URL is checked again (:func:`lift3d.service.webhooks.urls.check_webhook_url`: DNS may
have changed) and the request goes to the checked address, signed with the owner's ``whsec_`` secret; non-2xx
answers are retried with exponential backoff (:class:`Backoff`) up to ``max_attempts``, then the row is ``failed``.

Examples:
    >>> deliver_due(database, secret_for=lambda owner_id: keys[owner_id].webhook_secret)
    [DeliveryResult(message_id='msg_…', attempt=1, state='delivered', status_code=204, ...)]
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import select, update
from standardwebhooks import Webhook

from lift3d.io.media_types import JSON
from lift3d.service.db.models import WebhookDelivery
from lift3d.service.webhooks.urls import WebhookUrlError, check_webhook_url

logger = logging.getLogger(__name__)

__all__ = ["Backoff", "DeliveryResult", "WebhookRequest", "deliver_due", "http_post", "sign"]


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (after ``n`` failed attempts): ``min(cap_s, base_s · factor^(n-1))`` seconds, less
    up to ``jitter`` of it at random (0: none)."""

    base_s: float = 5.0
    factor: float = 2.0
    cap_s: float = 3600.0
    jitter: float = 0.2
    rng: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempts: int) -> float:
        delay = min(self.cap_s, self.base_s * self.factor ** max(0, attempts - 1))
        return delay * (1.0 - self.jitter * self.rng())


@dataclass(frozen=True)
class WebhookRequest:
    """One signed attempt. ``address``: the checked IP to connect to (None: resolve ``url`` again)."""

    message_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    address: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """What one attempt did. ``state``: pending (will be retried), delivered or failed."""

    message_id: str
    attempt: int
    state: str
    status_code: int | None
    error: str | None
    next_attempt_at: float | None


def http_post(request: WebhookRequest, timeout_s: float = 10.0) -> int:
    """POST ``request`` with httpx and return the status code. Redirects are not followed; proxies from the
    environment are not used; the connection goes to ``request.address`` (Host header and TLS SNI/certificate
    checks keep the URL's host), so the address checked is the address reached.

    Raises:
        httpx.HTTPError: connection failure or timeout (``timeout_s`` seconds per phase).
    """
    import httpx

    url = httpx.URL(request.url)
    headers, extensions = dict(request.headers), {}
    if request.address is not None:
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        url = url.copy_with(host=request.address)
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        with client.stream("POST", url, content=request.body, headers=headers, extensions=extensions) as response:
            return response.status_code


def sign(message_id: str, payload: str, secret: str, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at ``now`` (epoch seconds), signed with ``standardwebhooks``."""
    stamp = math.floor(now)
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(stamp, tz=timezone.utc), payload)
    return {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": signature,
            "content-type": JSON, "user-agent": "lift3d-webhooks/1"}


def deliver_due(database: Any, secret_for: Callable[[str | None], str],
                post: Callable[[WebhookRequest], int] = http_post, now: float | None = None, *,
                max_attempts: int = 8, limit: int = 50, allow_private: bool = False, backoff: Backoff = Backoff(),
                lease_s: float = 120.0) -> list[DeliveryResult]:
    """Send up to ``limit`` pending deliveries that are due, oldest due first, one attempt each.

    Each row is claimed by ``UPDATE … SET attempts = attempts + 1, next_attempt_at = now + lease_s WHERE id = :id
    AND state = 'pending' AND attempts = :read AND next_attempt_at <= now``: of several consumers only one claims
    an attempt; a consumer that dies mid-send leaves the row due again after ``lease_s``. Every attempt carries the
    row's id as ``webhook-id``. 2xx → ``delivered``; anything else (status, refused URL, network error) → retried
    after ``backoff.delay(attempts)`` seconds, or ``failed`` once ``max_attempts`` attempts were made.

    Args:
        database: a :class:`~lift3d.service.db.Database`.
        secret_for: the ``whsec_…`` secret of an owner id (None when auth is off).
        post: sends one request, returns the HTTP status; raises on network errors (default :func:`http_post`).
        now: epoch seconds (default: ``time.time()`` at each step).
        allow_private: skip the address rules of :func:`~lift3d.service.webhooks.urls.check_webhook_url` (a local
            setup).

    Returns:
        One :class:`DeliveryResult` per attempt made.
    """
    clock = (lambda: now) if now is not None else time.time
    with database.sessions() as session:
        due = session.execute(select(WebhookDelivery.id, WebhookDelivery.attempts).where(
            WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= clock())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)).all()
    results = []
    for message_id, attempts in due:
        row = _claim(database, message_id, attempts, clock(), lease_s)
        if row is None:
            continue  # another consumer took this attempt
        status, error = _attempt(row, secret_for, post, clock(), allow_private)
        results.append(_record(database, row, attempts + 1, status, error, clock(), max_attempts, backoff))
    return results


def _claim(database: Any, message_id: str, attempts: int, now: float, lease_s: float) -> WebhookDelivery | None:
    with database.transaction() as session:
        claimed = session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == message_id, WebhookDelivery.state == "pending",
            WebhookDelivery.attempts == attempts, WebhookDelivery.next_attempt_at <= now,
        ).values(attempts=attempts + 1, next_attempt_at=now + lease_s)).rowcount
        if claimed != 1:
            return None
        return session.execute(select(WebhookDelivery).where(WebhookDelivery.id == message_id)).scalar_one()


def _attempt(row: WebhookDelivery, secret_for: Callable[[str | None], str], post: Callable[[WebhookRequest], int],
             now: float, allow_private: bool) -> tuple[int | None, str | None]:
    try:
        checked = check_webhook_url(row.url, allow_private)
    except WebhookUrlError as exc:
        return None, f"refused: {exc}"
    try:
        headers = sign(row.id, row.payload, secret_for(row.owner_id), now)
    except Exception as exc:  # noqa: BLE001 - an unknown owner or a malformed secret fails this attempt only
        logger.warning("webhook %s: no usable signing secret for owner %s: %s", row.id, row.owner_id, exc)
        return None, "no usable signing secret"
    request = WebhookRequest(message_id=row.id, url=checked.url, body=row.payload.encode(), headers=headers,
                             address=checked.addresses[0])
    try:
        return int(post(request)), None
    except Exception as exc:  # noqa: BLE001 - any send failure is one failed attempt, retried with backoff
        return None, f"{type(exc).__name__}: {exc}"[:500]


def _record(database: Any, row: WebhookDelivery, attempt: int, status: int | None, error: str | None, now: float,
            max_attempts: int, backoff: Backoff) -> DeliveryResult:
    if status is not None and 200 <= status < 300:
        state, next_at, values = "delivered", None, dict(delivered_at=now)
    elif attempt >= max_attempts:
        state, next_at, values = "failed", None, {}
    else:
        state, next_at = "pending", now + backoff.delay(attempt)
        values = dict(next_attempt_at=next_at)
    error = error if error is not None or state == "delivered" else f"HTTP {status}"
    with database.transaction() as session:
        session.execute(update(WebhookDelivery).where(
            WebhookDelivery.id == row.id, WebhookDelivery.attempts == attempt, WebhookDelivery.state == "pending",
        ).values(state=state, last_status_code=status, last_error=error, **values))
    if state != "delivered":
        logger.info("webhook %s (%s) attempt %d: %s → %s", row.id, row.event_type, attempt, error, state)
    return DeliveryResult(message_id=row.id, attempt=attempt, state=state, status_code=status, error=error,
                          next_attempt_at=next_at)
