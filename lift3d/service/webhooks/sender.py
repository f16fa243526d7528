"""Sending the outbox's webhook messages (Standard Webhooks, https://www.standardwebhooks.com): signing, the HTTP
POST, and the retry loop.

A consumer replica keeps one :class:`WebhookDispatcher` and calls :meth:`~WebhookDispatcher.dispatch` every second
or so; it starts the due rows' attempts on its threads and returns at once. Attempts run concurrently across
owners (API keys), at most ``per_owner`` of one owner at a time, and each has one overall deadline (connect, send
and the answer's status line and headers together, :func:`http_post`), so a receiver that drips its answer a byte at
a time holds one of its owner's slots for ``timeout_s`` at most and never delays another owner's deliveries.
:func:`deliver_due` is the blocking one-shot form (tests, scripts).

Each due row is claimed with a guarded ``UPDATE`` (two replicas never send the same attempt), the URL is checked
again (:func:`lift3d.service.webhooks.urls.check_webhook_url`: DNS may have changed) and the request goes to the
checked address, signed with the owner's ``whsec_`` secret; non-2xx answers are retried with exponential backoff
(:class:`Backoff`) up to ``max_attempts``, then the row is ``failed``.

Examples:
    >>> deliver_due(database, secret_for=lambda owner_id: keys[owner_id].webhook_secret)
    [DeliveryResult(message_id='msg_…', attempt=1, state='delivered', status_code=204, ...)]
    >>> dispatcher = WebhookDispatcher(database, secret_for, timeout_s=10.0, per_owner=2)
    >>> futures = dispatcher.dispatch()  # returns at once; every second or so
    >>> dispatcher.close()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection

from sqlalchemy import and_, func, or_, select, update
from standardwebhooks import Webhook

from lift3d.io.media_types import JSON
from lift3d.service.db.models import WebhookDelivery
from lift3d.service.webhooks.urls import DEFAULT_WEBHOOK_PORTS, WebhookUrlError, check_webhook_url

logger = logging.getLogger(__name__)

__all__ = ["Backoff", "DeliveryResult", "DeliveryTimeout", "WebhookDispatcher", "WebhookRequest", "deliver_due",
           "http_post", "prepare_http", "sign"]


class DeliveryTimeout(TimeoutError):
    """An attempt passed its overall deadline (:func:`http_post`); the connection was dropped."""


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
    checks keep the URL's host), so the address checked is the address reached. The answer's body is not read.

    ``timeout_s`` is the attempt's overall deadline — connecting, sending and receiving the status line and headers
    together, not a limit per read (httpx's own timeouts are per phase and per read, so a receiver sending one byte
    every few seconds would never trip them): the request runs as an asyncio task cancelled at the deadline
    (:func:`asyncio.wait_for`), which closes the connection. Blocking; call it from a worker thread, not from
    inside a running event loop.

    Raises:
        DeliveryTimeout: no complete answer head within ``timeout_s`` seconds.
        httpx.HTTPError: connection failure or a malformed answer.
    """
    tls = prepare_http()  # once per process, before the deadline starts: not the receiver's time
    return asyncio.run(_post_within(request, timeout_s, tls))


async def _post_within(request: WebhookRequest, timeout_s: float, tls: Any) -> int:
    try:
        return await asyncio.wait_for(_post(request, timeout_s, tls), timeout_s)
    except asyncio.TimeoutError:
        raise DeliveryTimeout(f"no answer within the attempt's deadline of {timeout_s:g} s") from None


@functools.cache
def prepare_http() -> ssl.SSLContext:
    """The TLS context webhooks use (httpx's default: verifying, certifi's CA bundle), made once per process — later
    calls return it — together with the imports httpx makes at its first request (httpcore, h11, anyio's asyncio
    backend). Both block the event loop, so inside an attempt they would eat its deadline (1.4 s for the bundle per
    attempt, 6.5 s for a first attempt with the imports, measured on a loaded 2-core machine): :func:`http_post` and
    :class:`WebhookDispatcher` call this first. The context never changes after it is made; an SSLContext is safe
    to share between threads and event loops."""
    import anyio
    import h11  # noqa: F401 - what httpx imports at its first request (httpcore, h11, anyio's backend)
    import httpcore  # noqa: F401
    import httpx

    try:  # anyio's asyncio backend is imported at its first run; inside a running loop (a Serve replica's
        asyncio.get_running_loop()  # constructor) a nested run is refused, and the loop's own first use imports it
    except RuntimeError:
        anyio.run(anyio.sleep, 0)
    return httpx.create_ssl_context(trust_env=False)


async def _post(request: WebhookRequest, timeout_s: float, tls: Any) -> int:
    import httpx

    url = httpx.URL(request.url)
    headers, extensions = dict(request.headers), {}
    if request.address is not None:
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        url = url.copy_with(host=request.address)
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=tls) as client:
        async with client.stream("POST", url, content=request.body, headers=headers,
                                 extensions=extensions) as response:
            return response.status_code


def sign(message_id: str, payload: str, secret: str, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt at ``now`` (epoch seconds), signed with ``standardwebhooks``."""
    stamp = math.floor(now)
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(stamp, tz=timezone.utc), payload)
    return {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": signature,
            "content-type": JSON, "user-agent": "lift3d-webhooks/1"}


class WebhookDispatcher:
    """Starts due webhook attempts on a thread pool and returns at once: concurrent across owners, at most
    ``per_owner`` attempts of one owner (API key; jobs without one share the owner ``None``) and ``max_workers`` in
    all at a time, each cut at ``timeout_s`` (:func:`http_post`). Thread-safe; one per consumer replica.

    Args:
        database: a :class:`~lift3d.service.db.Database`.
        secret_for: the ``whsec_…`` secret of an owner id (None when auth is off).
        post: sends one request, returns the HTTP status; raises on network errors (default: :func:`http_post` with
            ``timeout_s``; a custom ``post`` enforces its own deadline).
        timeout_s: overall deadline of one attempt, seconds (``webhook_timeout_s``).
        max_workers: attempts in flight at once, all owners together (``webhook_concurrency``).
        per_owner: attempts in flight at once for one owner (``webhook_per_owner_concurrency``): a slow receiver
            holds at most this many of the ``max_workers`` slots.
        max_attempts: attempts per message, then ``failed``.
        allow_private, allowed_ports: the URL rules of :func:`~lift3d.service.webhooks.urls.check_webhook_url`,
            applied again before each attempt.
        backoff: delay before each retry.
        lease_s: seconds a claimed attempt is reserved (a replica that dies mid-send leaves it due again after
            this); must exceed ``timeout_s``.
        clock: seconds since the epoch.

    Raises:
        ValueError: ``lease_s <= timeout_s``, or a count below 1.
    """

    def __init__(self, database: Any, secret_for: Callable[[str | None], str],
                 post: Callable[[WebhookRequest], int] | None = None, *, timeout_s: float = 10.0,
                 max_workers: int = 16, per_owner: int = 2, max_attempts: int = 8, allow_private: bool = False,
                 allowed_ports: tuple[int, ...] | list[int] = DEFAULT_WEBHOOK_PORTS, backoff: Backoff = Backoff(),
                 lease_s: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        if lease_s <= timeout_s:
            raise ValueError(f"lease_s ({lease_s}) must exceed timeout_s ({timeout_s}): an attempt still sending "
                             "would be claimed again by another consumer")
        if max_workers < 1 or per_owner < 1:
            raise ValueError("max_workers and per_owner must be at least 1")
        self.database, self.secret_for, self.clock = database, secret_for, clock
        if post is None:
            prepare_http()  # imports and the TLS context now, at replica start, not at the first delivery
            post = functools.partial(http_post, timeout_s=timeout_s)
        self.post = post
        self.max_workers, self.per_owner, self.max_attempts = max_workers, per_owner, max_attempts
        self.allow_private, self.allowed_ports = allow_private, tuple(allowed_ports)
        self.backoff, self.lease_s = backoff, lease_s
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="lift3d-webhook")
        self._lock = threading.Lock()
        self._running: Counter[str | None] = Counter()  # owner → attempts in flight
        self._in_flight: set[str] = set()  # message ids in flight here

    def in_flight(self) -> int:
        """Attempts running now."""
        with self._lock:
            return len(self._in_flight)

    def dispatch(self, now: float | None = None, exclude: Collection[str] = (), limit: int | None = None
                 ) -> dict[str, Future]:
        """Start the attempts of due rows (oldest due first) that fit the free slots; return without waiting.

        Rows of owners with ``per_owner`` attempts in flight are left for a later call; so are rows beyond the free
        slots. ``now``: epoch seconds, fixed for every step of these attempts (default: the clock at each step);
        ``exclude``: message ids not to start; ``limit``: most attempts to start.

        Returns:
            ``{message_id: future}`` per attempt started, the future resolving to its :class:`DeliveryResult`, or
            None when another consumer claimed the attempt first.
        """
        clock = (lambda: now) if now is not None else self.clock
        with self._lock:
            free = self.max_workers - len(self._in_flight)
            if limit is not None:
                free = min(free, limit)
            busy_owners = [owner for owner, n in self._running.items() if n >= self.per_owner]
            skip = set(self._in_flight) | set(exclude)
        if free <= 0:
            return {}
        due = self._due(clock(), skip, busy_owners, free)
        started: dict[str, Future] = {}
        with self._lock:
            for message_id, attempts, owner in due:
                if len(self._in_flight) >= self.max_workers or len(started) >= free:
                    break
                if self._running[owner] >= self.per_owner or message_id in self._in_flight:
                    continue
                self._running[owner] += 1
                self._in_flight.add(message_id)
                future: Future = Future()
                self._pool.submit(self._run, message_id, attempts, owner, clock, future)
                started[message_id] = future
        return started

    def close(self, wait: bool = True) -> None:
        """Stop the pool (``wait``: let running attempts finish first, each within its deadline)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _due(self, now: float, skip: set[str], busy_owners: list[str | None], limit: int
             ) -> list[tuple[str, int, str | None]]:
        """Due rows, at most ``per_owner`` per owner (ranked by due time) and ``limit`` in all. Only the oldest
        pending message of each job is ever due (a job's events arrive in the order they happened: ``started``
        before its ``progress`` before ``completed``), and not while its attempt is in flight (``skip``)."""
        order = func.row_number().over(partition_by=WebhookDelivery.job_id,
                                       order_by=(WebhookDelivery.created_at, WebhookDelivery.id)).label("order")
        heads = select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.owner_id,
                       WebhookDelivery.next_attempt_at, order).where(WebhookDelivery.state == "pending").subquery()
        conditions = [heads.c.order == 1, heads.c.next_attempt_at <= now]
        if skip:
            conditions.append(heads.c.id.not_in(sorted(skip)))
        named = [owner for owner in busy_owners if owner is not None]
        if named:
            conditions.append(or_(heads.c.owner_id.is_(None), heads.c.owner_id.not_in(named)))
        if None in busy_owners:
            conditions.append(heads.c.owner_id.is_not(None))
        rank = func.row_number().over(partition_by=heads.c.owner_id,
                                      order_by=(heads.c.next_attempt_at, heads.c.id)).label("rank")
        ranked = select(heads.c.id, heads.c.attempts, heads.c.owner_id, heads.c.next_attempt_at,
                        rank).where(and_(*conditions)).subquery()
        with self.database.read() as session:  # a snapshot; on SQLite no write lock (claims take it, one by one)
            rows = session.execute(select(ranked.c.id, ranked.c.attempts, ranked.c.owner_id)
                                   .where(ranked.c.rank <= self.per_owner)
                                   .order_by(ranked.c.next_attempt_at, ranked.c.id).limit(limit)).all()
        return [(message_id, attempts, owner) for message_id, attempts, owner in rows]

    def _run(self, message_id: str, attempts: int, owner: str | None, clock: Callable[[], float],
             future: Future) -> None:
        result, error = None, None
        try:
            result = _deliver_one(self, message_id, attempts, clock)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future (a crash included)
            error = exc
            if isinstance(exc, Exception):  # the consumer loop never reads its futures: say it here
                logger.warning("webhook %s: the attempt could not be claimed or recorded", message_id, exc_info=True)
        finally:
            # free the slot before the future resolves: whoever waits on it may dispatch again at once
            with self._lock:
                self._running[owner] -= 1
                if self._running[owner] <= 0:
                    del self._running[owner]
                self._in_flight.discard(message_id)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _deliver_one(dispatcher: WebhookDispatcher, message_id: str, attempts: int, clock: Callable[[], float]
                 ) -> DeliveryResult | None:
    row = _claim(dispatcher.database, message_id, attempts, clock(), dispatcher.lease_s)
    if row is None:
        return None  # another consumer took this attempt
    status, error = _attempt(row, dispatcher.secret_for, dispatcher.post, clock(), dispatcher.allow_private,
                             dispatcher.allowed_ports)
    return _record(dispatcher.database, row, attempts + 1, status, error, clock(), dispatcher.max_attempts,
                   dispatcher.backoff)


def deliver_due(database: Any, secret_for: Callable[[str | None], str],
                post: Callable[[WebhookRequest], int] | None = None, now: float | None = None, *,
                max_attempts: int = 8, limit: int = 50, allow_private: bool = False,
                allowed_ports: tuple[int, ...] | list[int] = DEFAULT_WEBHOOK_PORTS, backoff: Backoff = Backoff(),
                lease_s: float = 120.0, timeout_s: float = 10.0, max_workers: int = 16,
                per_owner: int = 2) -> list[DeliveryResult]:
    """Send up to ``limit`` pending deliveries that are due, one attempt each, and wait for them: the blocking form
    of :class:`WebhookDispatcher` (same concurrency: across owners, ``per_owner`` at a time for one owner).

    Each row is claimed by ``UPDATE … SET attempts = attempts + 1, next_attempt_at = now + lease_s WHERE id = :id
    AND state = 'pending' AND attempts = :read AND next_attempt_at <= now``: of several consumers only one claims
    an attempt; a consumer that dies mid-send leaves the row due again after ``lease_s``. Every attempt carries the
    row's id as ``webhook-id``. 2xx → ``delivered``; anything else (status, refused URL, network error, the
    deadline) → retried after ``backoff.delay(attempts)`` seconds, or ``failed`` once ``max_attempts`` attempts
    were made.

    Args:
        database: a :class:`~lift3d.service.db.Database`.
        secret_for: the ``whsec_…`` secret of an owner id (None when auth is off).
        post: sends one request, returns the HTTP status; raises on network errors (default :func:`http_post`
            with ``timeout_s``, the overall deadline of an attempt).
        now: epoch seconds (default: ``time.time()`` at each step).
        allow_private: skip the address and port rules of
            :func:`~lift3d.service.webhooks.urls.check_webhook_url` (a local setup).

    Returns:
        One :class:`DeliveryResult` per attempt made, in the order they started.

    Raises:
        BaseException: what an attempt raised outside its own handling (a ``post`` that kills the process).
    """
    dispatcher = WebhookDispatcher(database, secret_for, post, timeout_s=timeout_s, max_workers=max_workers,
                                   per_owner=per_owner, max_attempts=max_attempts, allow_private=allow_private,
                                   allowed_ports=allowed_ports, backoff=backoff, lease_s=lease_s)
    started: dict[str, Future] = {}
    try:
        while len(started) < limit:
            batch = dispatcher.dispatch(now, exclude=started.keys(), limit=limit - len(started))
            started.update(batch)
            pending = [future for future in started.values() if not future.done()]
            if not pending and not batch:
                break
            if pending:
                wait(pending, return_when=FIRST_COMPLETED)
        wait(started.values())
        return [result for result in (future.result() for future in started.values()) if result is not None]
    finally:
        dispatcher.close(wait=True)


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
             now: float, allow_private: bool, allowed_ports: tuple[int, ...]) -> tuple[int | None, str | None]:
    try:
        checked = check_webhook_url(row.url, allow_private, allowed_ports)
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
