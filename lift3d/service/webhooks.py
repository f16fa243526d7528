"""Signed webhooks (Standard Webhooks, https://www.standardwebhooks.com) sent through an outbox table.

1. At submit, :func:`check_webhook_url` refuses URLs that are not http(s), carry credentials, or resolve to a
   non-public address (SSRF), unless private targets are allowed (``allow_private_webhooks``).
2. Inside the job store's transactions, :func:`enqueue_event` inserts one ``webhook_deliveries`` row per event
   (``generation.started``, ``generation.progress`` — throttled by :func:`enqueue_progress_event` —,
   ``generation.completed``); :class:`WebhookEvents` is a job-store ``on_write`` hook that does this per transition.
   The row's id (``msg_…``) is the ``webhook-id`` header of every attempt, so receivers can drop duplicates.
3. A consumer loop calls :func:`deliver_due`: each due row is claimed with a guarded ``UPDATE`` (two replicas never
   send the same attempt), the URL is checked again (DNS may have changed) and the request goes to the checked
   address, signed with the owner's ``whsec_`` secret; non-2xx answers are retried with exponential backoff up to
   ``max_attempts``, then the row is ``failed``.

Examples:
    >>> check_webhook_url("https://hooks.example.com/lift3d").host
    'hooks.example.com'
    >>> with database.transaction() as session:
    ...     enqueue_event(session, job_id=job.id, owner_id=key.id, url=job.webhook_url,
    ...                   event_type="generation.started", data={"id": job.id}, now=time.time())
    'msg_…'
    >>> deliver_due(database, secret_for=lambda owner_id: keys[owner_id].webhook_secret)
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol
from urllib.parse import quote, urlsplit

from sqlalchemy import select, update
from standardwebhooks import Webhook

from lift3d.errors import InvalidInputError
from lift3d.service.db.models import Job, WebhookDelivery

logger = logging.getLogger(__name__)

__all__ = [
    "COMPLETED", "PROGRESS", "STARTED", "Backoff", "CheckedUrl", "DeliveryResult", "WebhookEvents",
    "WebhookRequest", "WebhookUrlError", "api_artifact_url", "check_webhook_url", "completed_data", "deliver_due",
    "enqueue_event", "enqueue_progress_event", "event_payload", "http_post", "progress_data", "sign", "started_data",
]

STARTED, PROGRESS, COMPLETED = "generation.started", "generation.progress", "generation.completed"
_FINISHED = ("succeeded", "failed", "canceled")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookUrlError(InvalidInputError):
    """A ``webhook_url`` that may not be used (scheme, credentials, unresolvable or non-public host)."""

    name = "invalid_parameters"


# ------------------------------------------------------------------------------------------------ SSRF check
@dataclass(frozen=True)
class CheckedUrl:
    """A webhook URL that passed :func:`check_webhook_url`; ``addresses`` are the IPs its host resolved to."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_webhook_url(url: str, allow_private: bool = False) -> CheckedUrl:
    """Check that ``url`` may receive webhooks, resolving its host (``socket.getaddrinfo``).

    Refused: schemes other than http/https; a user or password in the URL; a host that does not resolve; unless
    ``allow_private``, any resolved address (IPv4 or IPv6, IPv4-mapped/NAT64/6to4 forms unwrapped) that is
    loopback, private, link-local, multicast, reserved, unspecified or otherwise not globally routable. Every
    address of the host must pass, so a DNS answer mixing public and private addresses is refused.

    Raises:
        WebhookUrlError: (``invalid_parameters``) the message says which rule the URL broke.
    """
    if not isinstance(url, str) or not url.strip() or len(url) > 2048:
        raise WebhookUrlError("webhook_url: expected an http(s) URL of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"webhook_url: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlError(f"webhook_url: only http and https URLs are accepted, not {scheme or 'no'} scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookUrlError("webhook_url: must not contain credentials (user:password@); authenticate the "
                              "sender by the webhook-signature header instead")
    host = parts.hostname
    if not host:
        raise WebhookUrlError("webhook_url: has no host")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = _non_public(address)
            if reason:
                shown = host if _is_ip(host) else f"{host} resolves to {address}, which"
                article = "an" if reason[0] in "aeiou" else "a"
                raise WebhookUrlError(f"webhook_url: {shown} is {article} {reason} address; webhooks go to public "
                                      "addresses only (a local setup may set allow_private_webhooks)")
    return CheckedUrl(url=url.strip(), scheme=scheme, host=host, port=port, addresses=addresses)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> tuple[str, ...]:
    if _is_ip(host):
        return (str(ipaddress.ip_address(host)),)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlError(f"webhook_url: host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise WebhookUrlError(f"webhook_url: host {host!r} has no address")
    return addresses


def _non_public(address: str) -> str | None:
    """Why ``address`` is not a public unicast address (None when it is)."""
    ip: Any = ipaddress.ip_address(address)
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for reason in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{reason}"):
            return reason.replace("_", "-")
    return None if ip.is_global else "non-public"


# ------------------------------------------------------------------------------------------------ outbox
class _Record(Protocol):
    """What the payload builders read from a :class:`~lift3d.service.jobs.JobRecord`."""

    id: str
    kind: str
    status: str
    stage: str | None
    progress: Any
    eta_s: float | None
    attempts: int
    owner_id: str | None
    webhook_url: str | None
    updated_at: float
    error: Any
    outcome: Any


def api_artifact_url(job_id: str, name: str) -> str:
    """The API path of an artifact: ``/v1/generation/{id}/artifacts/{name}`` (relative to the server)."""
    return f"/v1/generation/{job_id}/artifacts/{quote(name, safe='/')}"


def started_data(record: _Record) -> dict:
    """``generation.started`` data: id, kind, status, attempt."""
    return {"id": record.id, "kind": record.kind, "status": record.status, "attempt": record.attempts}


def progress_data(record: _Record) -> dict:
    """``generation.progress`` data: id, status, stage, progress ``{step, total}`` (or null), eta_s (seconds)."""
    progress = record.progress
    return {"id": record.id, "status": record.status, "stage": record.stage,
            "progress": None if progress is None else {"step": progress.step, "total": progress.total},
            "eta_s": record.eta_s}


def completed_data(record: _Record, *, charged_mc: int | None = None, usd_per_credit: float = 0.01,
                   artifact_url: Callable[[str, str], str] = api_artifact_url) -> dict:
    """``generation.completed`` data: id, kind, status (succeeded, failed, canceled), cost, artifacts, error.

    ``cost`` is what the caller was charged: ``{"credits": charged_mc / 1000, "usd": credits × usd_per_credit}``;
    without ``charged_mc`` (auth off), a succeeded job's measured ``cost_usd`` and 0 for the others. ``artifacts``
    are ``[{"name", "url"}]`` (API paths by default) of a succeeded job, else empty; ``error`` is
    ``{"name", "message"}`` or null.
    """
    outcome = record.outcome if record.status == "succeeded" else None
    if charged_mc is not None:
        credits = charged_mc / 1000
    else:
        credits = round(outcome.cost_usd / usd_per_credit, 3) if outcome is not None else 0.0
    error = record.error
    return {"id": record.id, "kind": record.kind, "status": record.status,
            "cost": {"credits": credits, "usd": round(credits * usd_per_credit, 6)},
            "artifacts": [{"name": name, "url": artifact_url(record.id, name)}
                          for name in (outcome.artifacts if outcome is not None else [])],
            "error": None if error is None else {"name": error.name, "message": error.message}}


def event_payload(event_type: str, data: dict, now: float) -> str:
    """The JSON body of a message: ``{"type", "timestamp" (ISO 8601, UTC), "data"}``."""
    stamp = datetime.fromtimestamp(now, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":"))


def enqueue_event(session: Any, *, job_id: str, owner_id: str | None, url: str, event_type: str, data: dict,
                  now: float) -> str:
    """Insert a pending delivery (due at ``now``, epoch seconds) in the caller's transaction; returns its id, the
    ``webhook-id`` of every attempt (``msg_`` + 32 hex digits)."""
    message_id = f"msg_{uuid.uuid4().hex}"
    session.add(WebhookDelivery(id=message_id, job_id=job_id, owner_id=owner_id, url=url, event_type=event_type,
                                payload=event_payload(event_type, data, now), state="pending", attempts=0,
                                next_attempt_at=now, created_at=now))
    session.flush()
    return message_id


def enqueue_progress_event(session: Any, *, job_id: str, owner_id: str | None, url: str, data: dict, now: float,
                           interval_s: float) -> str | None:
    """:func:`enqueue_event` for ``generation.progress``, unless the job already has one created less than
    ``interval_s`` seconds before ``now`` (the throttle, shared by every replica); returns the id or None."""
    last = session.execute(select(WebhookDelivery.created_at).where(
        WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == PROGRESS)
        .order_by(WebhookDelivery.created_at.desc()).limit(1)).scalar()
    if last is not None and now - last < interval_s:
        return None
    return enqueue_event(session, job_id=job_id, owner_id=owner_id, url=url, event_type=PROGRESS, data=data, now=now)


@dataclass
class WebhookEvents:
    """A job-store ``on_write`` hook ``(session, before, after)``: the events of a transition, for jobs with a
    ``webhook_url``. queued → running: ``generation.started``; a running job whose stage or progress changed:
    ``generation.progress`` (at most one per ``progress_interval_s`` seconds per job); the first
    succeeded/failed/canceled: ``generation.completed`` with the charge read from ``jobs.charged_mc``."""

    progress_interval_s: float = 5.0
    usd_per_credit: float = 0.01
    artifact_url: Callable[[str, str], str] = api_artifact_url

    def __call__(self, session: Any, before: _Record, after: _Record) -> str | None:
        url = after.webhook_url
        if not url:
            return None
        common = dict(job_id=after.id, owner_id=after.owner_id, url=url, now=after.updated_at)
        if after.status in _FINISHED and before.status not in _FINISHED:
            charged = session.execute(select(Job.charged_mc).where(Job.id == after.id)).scalar()
            data = completed_data(after, charged_mc=charged, usd_per_credit=self.usd_per_credit,
                                  artifact_url=self.artifact_url)
            return enqueue_event(session, event_type=COMPLETED, data=data, **common)
        if after.status == "running" and before.status == "queued":
            return enqueue_event(session, event_type=STARTED, data=started_data(after), **common)
        if after.status == "running" and (before.stage, before.progress) != (after.stage, after.progress):
            return enqueue_progress_event(session, data=progress_data(after), interval_s=self.progress_interval_s,
                                          **common)
        return None


# ------------------------------------------------------------------------------------------------ delivery
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
            "content-type": "application/json", "user-agent": "lift3d-webhooks/1"}


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
        allow_private: skip the address rules of :func:`check_webhook_url` (a local setup).

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
