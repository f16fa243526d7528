"""Idempotent POSTs: the ``Idempotency-Key`` header (IETF httpapi-idempotency-key draft), scoped per API key.

A client that sends ``Idempotency-Key: <key>`` (1-255 printable ASCII characters, :data:`OPENAPI_PARAMETER`) with
a POST may retry it safely for ``ttl_s`` seconds (24 h by default):

- first request: a ``pending`` row in ``idempotency_records`` is inserted before the route runs. The insert is the
  lock (the table's primary key is ``(owner_id, idempotency_key)``): a concurrent request with the same key finds
  the row, or loses the insert, and is answered ``409 idempotency_key_in_use`` with ``Retry-After: 1``.
- when the route has answered: the status, the body and the headers worth replaying (:data:`REPLAYED_HEADERS`) are
  stored with the request's fingerprint and the row becomes ``done``.
- a retry with the same key and the same request (:func:`request_hash`: method, path and body) gets the stored
  response byte for byte plus ``Idempotent-Replayed: true`` (the same job id); a different request with the same
  key gets ``422 idempotency_key_reused``.
- what is stored: every 2xx-4xx answer except those that say "not now" rather than "no" (:data:`NOT_STORED`: 402
  insufficient credits, 408, 409, 425, 429 rate limited), so a client may retry those with the same key after
  topping up or waiting. 4xx answers are stored and replayed (the draft allows either; a retry of the same body would
  be rejected the same way, and replaying keeps the answer to one key stable). 5xx answers and exceptions delete the
  pending row: a retry runs again. A request answered before its body was read (e.g. 413 from Content-Length) is
  not stored either (its answer depends on headers only). Responses over ``max_stored_body_bytes`` are not stored.
- rows expire ``ttl_s`` after the first request (a pending row after ``pending_timeout_s``: a replica that died
  mid-request does not block the key for a day); expired rows are ignored and overwritten, and
  :func:`lift3d.service.housekeeping.purge_expired` deletes them.

The owner is ``request.state.principal.key_id`` (set by the authentication middleware, which must run first);
without a principal (auth off) every request belongs to the single owner ``"local"``.

Bodies are never buffered here: the first request's body is hashed as the route reads it (the route keeps its own
streaming size limits); a retry's body is hashed chunk by chunk and discarded (at most ``max_body_bytes``). In a
``multipart/*`` body the boundary (random per request in curl, requests and httpx) is replaced by a fixed token
before hashing, so that a retry of the same form matches.

Examples:
    >>> install_idempotency(api, database, ttl_s=86400)   # before installing the auth middleware (so it runs after)
    3
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lift3d.service.db.engine import Database
from lift3d.service.db.models import IdempotencyRecord
from lift3d.errors import InvalidInputError, Lift3DError, PayloadTooLargeError
from lift3d.service.api.errors import error_response
from lift3d.service.schemas import BadRequestError

logger = logging.getLogger(__name__)

__all__ = ["LOCAL_OWNER", "NOT_STORED", "OPENAPI_PARAMETER", "REPLAYED_HEADERS", "Claim", "IdempotencyKeyInUse",
           "IdempotencyKeyReused", "IdempotencyMiddleware", "IdempotencyStore", "RequestHasher", "StoredResponse",
           "install_idempotency", "owner_of", "parse_idempotency_key", "request_hash"]

LOCAL_OWNER = "local"
"""Owner of every request without a principal (authentication off)."""

REPLAYED_HEADERS = ("content-type", "location", "content-disposition", "preference-applied")
"""Response headers stored and replayed (lower case). Per-call headers (credits left, request ids) are not."""

NOT_STORED = frozenset({402, 408, 409, 425, 429})
"""Client-error statuses that describe a passing condition; the pending row is deleted, a retry runs again."""

OPENAPI_PARAMETER = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
    "description": "Makes the POST safe to retry for 24 h: the same key and body replay the first response "
                   "(`Idempotent-Replayed: true`); another body → 422; while the first runs → 409.",
}
"""The header as an OpenAPI parameter, for the POST routes' ``openapi_extra``."""

_HEADER = b"idempotency-key"


class IdempotencyKeyInUse(Lift3DError):
    """The first request with this key is still running (409, ``Retry-After: 1``)."""

    name, status_code, retry_after_s = "idempotency_key_in_use", 409, 1


class IdempotencyKeyReused(InvalidInputError):
    """The key was used with a different request (422)."""

    name = "idempotency_key_reused"

_MiB = 1024 * 1024
_BINARY_MARKER = ":body-encoding"  # not a valid header name: marks a base64-stored binary body in response_headers


def parse_idempotency_key(values: list[str]) -> str:
    """The key of the ``Idempotency-Key`` header ``values`` (one per occurrence of the header), without surrounding
    blanks. Opaque: the draft's structured-field form ``"abc"`` is the key ``"abc"``, quotes included (a client
    retries with the same header, so either form works).

    Raises:
        BadRequestError: the header repeats, or the key is empty, over 255 characters or not printable ASCII
            (0x20-0x7E).
    """
    if len(values) != 1:
        raise BadRequestError("Idempotency-Key: send the header once")
    key = values[0].strip(" \t")
    if not 1 <= len(key) <= 255:
        raise BadRequestError("Idempotency-Key: 1 to 255 characters")
    if any(not " " <= ch <= "~" for ch in key):
        raise BadRequestError("Idempotency-Key: printable ASCII characters only")
    return key


def owner_of(scope: Scope) -> str:
    """The idempotency scope of a request: its principal's ``key_id``, else :data:`LOCAL_OWNER`."""
    principal = (scope.get("state") or {}).get("principal")
    return getattr(principal, "key_id", None) or LOCAL_OWNER


def _multipart_boundary(content_type: str | None) -> bytes | None:
    if not content_type:
        return None
    media, *params = (part.strip() for part in content_type.split(";"))
    if not media.lower().startswith("multipart/"):
        return None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    return None


class RequestHasher:
    """SHA-256 fingerprint of a request: method, path and body, fed in chunks.

    For ``multipart/*`` bodies every ``--boundary`` delimiter is replaced by a fixed token (also across chunk
    borders), so two encodings of the same form with different random boundaries hash the same.
    """

    _TOKEN = b"--lift3d-boundary"

    def __init__(self, method: str, path: str, content_type: str | None = None) -> None:
        self._sha = hashlib.sha256(f"{method.upper()} {path}\n".encode("utf-8", "surrogateescape"))
        boundary = _multipart_boundary(content_type)
        self._delimiter = b"--" + boundary if boundary else None
        self._held = b""  # tail that may be the start of a delimiter continuing in the next chunk

    def update(self, data: bytes) -> None:
        if self._delimiter is None:
            self._sha.update(data)
            return
        buffer, start, size = self._held + data, 0, len(self._delimiter)
        while (found := buffer.find(self._delimiter, start)) != -1:
            self._sha.update(buffer[start:found])
            self._sha.update(self._TOKEN)
            start = found + size
        keep = max(start, len(buffer) - (size - 1))
        self._sha.update(buffer[start:keep])
        self._held = buffer[keep:]

    def hexdigest(self) -> str:
        """The fingerprint of what was fed so far (64 hex characters); feeding may go on."""
        sha = self._sha.copy()
        sha.update(self._held)
        return sha.hexdigest()


def request_hash(method: str, path: str, body: bytes, content_type: str | None = None) -> str:
    """:class:`RequestHasher`'s fingerprint of a whole request (64 hex characters)."""
    hasher = RequestHasher(method, path, content_type)
    hasher.update(body)
    return hasher.hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    """A response kept for replay: status, the :data:`REPLAYED_HEADERS` present (lower-case names), body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Claim:
    """What :meth:`IdempotencyStore.claim` found. ``token`` is set when this request holds the key and must run
    (pass it to :meth:`~IdempotencyStore.complete` or :meth:`~IdempotencyStore.release`); otherwise ``state`` is
    the live row's (``pending`` or ``done``) with its ``request_hash`` and ``response``."""

    token: str | None
    expires_at: float
    state: str = "pending"
    request_hash: str = ""
    response: StoredResponse | None = field(default=None, repr=False)


def _encode_body(body: bytes, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    try:
        return body.decode("utf-8"), headers
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), {**headers, _BINARY_MARKER: "base64"}


def _decode_response(row: IdempotencyRecord) -> StoredResponse | None:
    if row.response_status is None:
        return None
    headers = dict(row.response_headers or {})
    text = row.response_body or ""
    body = base64.b64decode(text) if headers.pop(_BINARY_MARKER, None) == "base64" else text.encode("utf-8")
    return StoredResponse(status=row.response_status, headers=headers, body=body)


class IdempotencyStore:
    """The ``idempotency_records`` table: claim a key, then complete it with the response or release it.

    Args:
        database: the service database.
        ttl_s: seconds a key stays bound to its first request (its response is replayed), > 0.
        pending_timeout_s: seconds a ``pending`` row holds the key when its request never completes (the replica
            died); then the key may be claimed again. Longer than the longest request (``Prefer: wait`` up to 60 s,
            slow uploads).
    """

    def __init__(self, database: Database, ttl_s: float = 86400.0, pending_timeout_s: float = 600.0) -> None:
        if ttl_s <= 0 or pending_timeout_s <= 0:
            raise ValueError("ttl_s and pending_timeout_s must be positive")
        self.database, self.ttl_s, self.pending_timeout_s = database, ttl_s, pending_timeout_s

    def claim(self, owner: str, key: str, now: float) -> Claim:
        """Take ``(owner, key)`` for a new request (insert a ``pending`` row, or overwrite an expired row), or
        report the live row. Safe against concurrent callers on any number of replicas: exactly one gets a token."""
        record = IdempotencyRecord.__table__.c
        where = (record.owner_id == owner, record.idempotency_key == key)
        for _ in range(5):
            token = uuid.uuid4().hex  # kept in request_hash while pending: fences complete() and release()
            pending = {"request_hash": token, "state": "pending", "response_status": None, "response_body": None,
                       "response_headers": None, "created_at": now,
                       "expires_at": now + min(self.pending_timeout_s, self.ttl_s)}
            with self.database.transaction() as session:
                row = session.get(IdempotencyRecord, (owner, key))
                if row is not None and row.expires_at > now:
                    return Claim(None, row.expires_at, row.state, row.request_hash, _decode_response(row))
                if row is not None:  # expired: overwrite it, unless another request just did
                    taken = session.execute(update(IdempotencyRecord).where(*where, record.expires_at <= now)
                                            .values(**pending)).rowcount
                    if taken == 1:
                        return Claim(token, now + self.ttl_s)
                    continue
            try:
                with self.database.transaction() as session:
                    session.add(IdempotencyRecord(owner_id=owner, idempotency_key=key, **pending))
                return Claim(token, now + self.ttl_s)
            except IntegrityError:  # a concurrent request inserted it first: look again
                continue
        return Claim(None, now + 1.0)  # the row keeps changing hands: report it as in use

    def complete(self, owner: str, key: str, claim: Claim, request_hash: str, response: StoredResponse) -> bool:
        """Store the response of the request holding ``claim``; False when the claim was lost meanwhile (its
        pending row timed out and another request took the key)."""
        record = IdempotencyRecord.__table__.c
        body, headers = _encode_body(response.body, response.headers)
        with self.database.transaction() as session:
            done = session.execute(
                update(IdempotencyRecord)
                .where(record.owner_id == owner, record.idempotency_key == key, record.state == "pending",
                       record.request_hash == claim.token)
                .values(state="done", request_hash=request_hash, response_status=response.status,
                        response_body=body, response_headers=headers, expires_at=claim.expires_at)).rowcount
        return done == 1

    def release(self, owner: str, key: str, claim: Claim) -> None:
        """Delete the pending row of ``claim`` (the request failed): a retry runs again."""
        record = IdempotencyRecord.__table__.c
        with self.database.transaction() as session:
            session.execute(delete(IdempotencyRecord).where(
                record.owner_id == owner, record.idempotency_key == key, record.state == "pending",
                record.request_hash == claim.token))


class IdempotencyMiddleware:
    """ASGI middleware applying :mod:`lift3d.service.api.idempotency` to every POST that carries the header.

    Args:
        app: the wrapped ASGI app.
        database: the service database.
        ttl_s: seconds a key replays its first response (> 0; default 24 h).
        clock: epoch seconds (tests inject one).
        pending_timeout_s: see :class:`IdempotencyStore`.
        max_body_bytes: the most body bytes hashed when checking a retry (larger: 413); above every route's limit.
        max_stored_body_bytes: larger responses are sent but not stored (the key is released).
    """

    def __init__(self, app: ASGIApp, database: Database, ttl_s: float = 86400.0,
                 clock: Callable[[], float] = time.time, *, pending_timeout_s: float = 600.0,
                 max_body_bytes: int = 256 * _MiB, max_stored_body_bytes: int = 16 * _MiB) -> None:
        self.app, self.clock = app, clock
        self.store = IdempotencyStore(database, ttl_s, pending_timeout_s)
        self.max_body_bytes, self.max_stored_body_bytes = max_body_bytes, max_stored_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        values = [value.decode("latin-1") for name, value in scope["headers"] if name == _HEADER]
        if not values:
            await self.app(scope, receive, send)
            return
        try:
            key = parse_idempotency_key(values)
        except BadRequestError as exc:
            await error_response(exc)(scope, receive, send)
            return
        owner = owner_of(scope)
        claim = await asyncio.to_thread(self.store.claim, owner, key, self.clock())
        if claim.token is None:
            await self._answer_existing(claim, scope, receive, send)
        else:
            await self._run_first(owner, key, claim, scope, receive, send)

    # --------------------------------------------------------------------------------------------- a retry
    async def _answer_existing(self, claim: Claim, scope: Scope, receive: Receive, send: Send) -> None:
        if claim.state != "done" or claim.response is None:
            await error_response(IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still being processed; retry shortly"))(scope, receive, send)
            return
        hasher = _hasher_for(scope)
        read = await self._feed_body(scope, receive, hasher)
        if read is None:  # the client went away
            return
        if not read:
            await error_response(PayloadTooLargeError(
                f"request body is larger than {self.max_body_bytes // _MiB} MiB"))(scope, receive, send)
            return
        if hasher.hexdigest() != claim.request_hash:
            await error_response(IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request (method, path or body) in the last "
                f"{self.store.ttl_s / 3600:g} h; send a new key for a new request"))(scope, receive, send)
            return
        stored = claim.response
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in stored.headers.items()]
        headers += [(b"content-length", str(len(stored.body)).encode()), (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": stored.body})

    async def _feed_body(self, scope: Scope, receive: Receive, hasher: RequestHasher) -> bool | None:
        """Feed the rest of the body to ``hasher``: True; over ``max_body_bytes``: False; client gone: None."""
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return False
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            total += len(chunk := message.get("body", b""))
            if total > self.max_body_bytes:
                return False
            hasher.update(chunk)
            if not message.get("more_body", False):
                return True

    # ------------------------------------------------------------------------------------ the first request
    async def _run_first(self, owner: str, key: str, claim: Claim, scope: Scope, receive: Receive,
                         send: Send) -> None:
        hasher = _hasher_for(scope)
        body_read = False
        start: Message | None = None
        chunks: list[bytes] = []

        async def hashing_receive() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] == "http.request" and not body_read:
                hasher.update(message.get("body", b""))
                body_read = not message.get("more_body", False)
            return message

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, hashing_receive, capture)
        except BaseException:
            await _shielded(asyncio.to_thread(self.store.release, owner, key, claim))
            raise
        if start is None:
            await asyncio.to_thread(self.store.release, owner, key, claim)
            return
        status, body = start["status"], b"".join(chunks)
        if not body_read and status < 400:  # the route ignored (part of) the body: hash the rest before storing
            body_read = await self._feed_body(scope, receive, hasher) is True
        stored = False
        if body_read and status < 500 and status not in NOT_STORED and len(body) <= self.max_stored_body_bytes:
            headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                       for name, value in start.get("headers", [])
                       if name.decode("latin-1").lower() in REPLAYED_HEADERS}
            stored = await asyncio.to_thread(self.store.complete, owner, key, claim, hasher.hexdigest(),
                                             StoredResponse(status, headers, body))
            if not stored:
                logger.warning("idempotency key of %s: its pending row timed out before the response", owner)
        if not stored:
            await asyncio.to_thread(self.store.release, owner, key, claim)
        await send(start)
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _hasher_for(scope: Scope) -> RequestHasher:
    return RequestHasher(scope["method"], scope["path"], _header(scope, b"content-type"))


async def _shielded(work: Any) -> None:
    """Run ``work`` to its end even when the request task is being cancelled (releasing a claim)."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        logger.warning("idempotency: cancelled while releasing a claim; the release goes on in the background")
    except Exception:  # noqa: BLE001 - the original error matters more; the pending row expires on its own
        logger.exception("idempotency: could not release a claim")


def install_idempotency(api: Any, database: Database, ttl_s: float = 86400.0,
                        clock: Callable[[], float] = time.time) -> None:
    """Add :class:`IdempotencyMiddleware` to the FastAPI/Starlette ``api`` (before it starts).

    Starlette runs the middleware added last first: install this BEFORE the authentication middleware, so that
    ``request.state.principal`` is set when it runs.
    """
    api.add_middleware(IdempotencyMiddleware, database=database, ttl_s=ttl_s, clock=clock)
