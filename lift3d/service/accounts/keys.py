"""API keys: created once, stored as a hash, looked up on every request.

A key is ``sk-`` followed by 43 URL-safe characters (32 random bytes from :mod:`secrets`). The database keeps only its
SHA-256 (hex) and a short display prefix (``sk-`` + 8 characters), so a leaked database does not leak a usable key;
the plaintext key is returned once by :meth:`ApiKeyStore.create` and is never logged or stored. Each key also gets a
Standard Webhooks signing secret (``whsec_`` + base64 of 24 random bytes) for the webhooks of its jobs.

Money is integer milli-credits in the database (:mod:`lift3d.service.accounts.credits` converts); :class:`KeyInfo` shows
credits.

Examples:
    >>> keys = ApiKeyStore(database)
    >>> created = keys.create(name="alice", credits=100)
    >>> keys.authenticate(created.key).balance
    100.0
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import or_, select, update

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.service.accounts import credits as ledger
from lift3d.service.db import Database
from lift3d.service.db.models import ApiKey, CreditEntry

logger = logging.getLogger(__name__)

__all__ = ["KEY_PREFIX", "ApiKeyStore", "CreatedKey", "KeyInfo", "KeyNotFound", "Unauthorized", "hash_key"]

KEY_PREFIX = "sk-"
"""Every API key starts with this."""
_DISPLAY_CHARS = 8
"""Random characters of the key kept as its display prefix (after ``sk-``)."""
_MAX_KEY_LENGTH = 200
"""Longer strings are rejected without hashing (a real key is 46 characters)."""
LAST_USED_RESOLUTION_S = 60.0
"""``last_used_at`` is written at most once per this many seconds per key (a read on the other requests)."""


class Unauthorized(Lift3DError):
    """Missing, unknown, revoked or expired API key (HTTP 401). The message never says which."""

    name = "unauthorized"
    status_code = 401


class KeyNotFound(Lift3DError):
    """No API key has this id (administration: ``lift3d keys``)."""

    name = "key_not_found"


@dataclass(frozen=True)
class KeyInfo:
    """What the service knows about a key; never the key itself.

    Attributes:
        id: ``key_<hex>``.
        name: free text given at creation.
        prefix: ``sk-`` and the key's next 8 characters, to tell keys apart in listings.
        balance: credits left (may be slightly negative after a job that cost more than its estimate).
        rate_limit_per_min: requests per minute; None: the service default.
        max_concurrent_jobs: queued + running jobs at once; None: the service default (or unlimited).
        webhook_secret: ``whsec_…`` Standard Webhooks signing secret of this key's webhooks.
        created_at, expires_at, revoked_at, last_used_at: seconds since the epoch; None: never.
    """

    id: str
    name: str
    prefix: str
    balance: float
    rate_limit_per_min: int | None
    max_concurrent_jobs: int | None
    webhook_secret: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None = None

    @classmethod
    def from_row(cls, row: ApiKey) -> "KeyInfo":
        return cls(id=row.id, name=row.name, prefix=row.prefix, balance=ledger.to_credits(row.balance_mc),
                   rate_limit_per_min=row.rate_limit_per_min, max_concurrent_jobs=row.max_concurrent_jobs,
                   webhook_secret=row.webhook_secret, created_at=row.created_at, expires_at=row.expires_at,
                   revoked_at=row.revoked_at, last_used_at=row.last_used_at)

    def usable(self, now: float) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class CreatedKey:
    """The answer to :meth:`ApiKeyStore.create`: the only time ``key`` is available."""

    info: KeyInfo
    key: str

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def webhook_secret(self) -> str:
        return self.info.webhook_secret

    def __repr__(self) -> str:  # keep the key out of reprs, tracebacks and logs
        return f"CreatedKey(id={self.info.id!r}, prefix={self.info.prefix!r})"


def hash_key(key: str) -> str:
    """SHA-256 of ``key`` (hex, 64 characters): what the database stores. Keys carry 256 random bits, so an
    unsalted fast hash is enough (nothing to brute-force)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInputError(f"{name}: must be a whole number >= 1 (or unset), got {value!r}")


class ApiKeyStore:
    """Creates, authenticates and administers API keys in the service database.

    Args:
        database: the service database (migrated).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database, self.clock = database, clock

    def create(self, name: str = "", credits: float = 0.0, rate_limit_per_min: int | None = None,
               max_concurrent_jobs: int | None = None, expires_at: float | None = None) -> CreatedKey:
        """A new key with ``credits`` on its balance (a ``grant`` ledger row when > 0).

        Args:
            name: free text, at most 200 characters.
            credits: starting balance, >= 0 (1 credit = US$0.01 by default).
            rate_limit_per_min, max_concurrent_jobs: per-key limits, >= 1; None: the service defaults.
            expires_at: seconds since the epoch after which the key stops working; None: never.

        Returns:
            The key's info and the key itself, which cannot be recovered later.

        Raises:
            InvalidInputError: a value out of range.
        """
        if len(name) > 200:
            raise InvalidInputError("name: at most 200 characters")
        amount_mc = ledger.to_mc(ledger.check_credits(credits, allow_zero=True))
        _check_limit("rate_limit_per_min", rate_limit_per_min)
        _check_limit("max_concurrent_jobs", max_concurrent_jobs)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        row = ApiKey(id=f"key_{uuid.uuid4().hex[:16]}", name=name, key_hash=hash_key(key),
                     prefix=key[:len(KEY_PREFIX) + _DISPLAY_CHARS], webhook_secret=_new_webhook_secret(),
                     balance_mc=amount_mc, rate_limit_per_min=rate_limit_per_min,
                     max_concurrent_jobs=max_concurrent_jobs, created_at=now, expires_at=expires_at,
                     revoked_at=None, last_used_at=None)
        with self.database.transaction() as session:
            session.add(row)
            session.flush()
            if amount_mc > 0:
                session.add(CreditEntry(key_id=row.id, job_id=None, kind="grant", amount_mc=amount_mc,
                                        balance_mc=amount_mc, created_at=now))
            info = KeyInfo.from_row(row)
        logger.info("created API key %s (%s) with %.3f credits", info.id, info.prefix, info.balance)
        return CreatedKey(info=info, key=key)

    def authenticate(self, key: str | None) -> KeyInfo:
        """The key's info, when ``key`` is a known key that is neither revoked nor expired.

        The lookup is by SHA-256 (the database index never sees the key) and the hashes are compared with
        :func:`hmac.compare_digest`. On success ``last_used_at`` is refreshed when older than
        :data:`LAST_USED_RESOLUTION_S` (one guarded UPDATE per key and minute; a read otherwise).

        Raises:
            Unauthorized: missing, malformed, unknown, revoked or expired key (one message for all).
        """
        if not key or not key.startswith(KEY_PREFIX) or len(key) > _MAX_KEY_LENGTH:
            raise Unauthorized("missing or invalid API key")
        digest = hash_key(key)
        with self.database.read() as session:
            row = session.execute(select(ApiKey).where(ApiKey.key_hash == digest)).scalar_one_or_none()
            info = KeyInfo.from_row(row) if row is not None else None
        now = self.clock()
        if info is None or not hmac.compare_digest(row.key_hash, digest) or not info.usable(now):
            raise Unauthorized("missing or invalid API key")
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION_S:
            self._touch(info.id, now)
        return info

    def _touch(self, key_id: str, now: float) -> None:
        with self.database.transaction() as session:
            session.execute(update(ApiKey).where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION_S),
            ).values(last_used_at=now))

    def get(self, key_id: str) -> KeyInfo:
        """The info of key ``key_id`` (revoked and expired keys included).

        Raises:
            KeyNotFound: no such id.
        """
        with self.database.read() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise KeyNotFound(f"no API key with id {key_id!r}")
            return KeyInfo.from_row(row)

    def usable(self, key_id: str) -> bool:
        """Whether key ``key_id`` exists and is neither revoked nor expired now (one indexed read): long requests
        (event streams) ask it again while they last."""
        with self.database.read() as session:
            row = session.execute(select(ApiKey.revoked_at, ApiKey.expires_at).where(ApiKey.id == key_id)).first()
        return row is not None and row.revoked_at is None and (row.expires_at is None or self.clock() < row.expires_at)

    def balance(self, key_id: str) -> float:
        """The key's balance in credits (one indexed read).

        Raises:
            KeyNotFound: no such id.
        """
        with self.database.read() as session:
            try:
                return ledger.balance_credits(session, key_id)
            except LookupError:
                raise KeyNotFound(f"no API key with id {key_id!r}") from None

    def list(self) -> list[KeyInfo]:
        """Every key, oldest first (revoked and expired ones included)."""
        with self.database.read() as session:
            rows = session.execute(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)).scalars().all()
            return [KeyInfo.from_row(row) for row in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke key ``key_id`` now (a second revoke keeps the first time). Its jobs keep running.

        Raises:
            KeyNotFound: no such id.
        """
        now = self.clock()
        with self.database.transaction() as session:
            session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                            .values(revoked_at=now))
        info = self.get(key_id)
        logger.info("revoked API key %s (%s)", info.id, info.prefix)
        return info

    def charge(self, key_id: str, request_id: str, amount_mc: int) -> None:
        """Take the price of synchronous request ``request_id`` (:func:`lift3d.service.accounts.credits.charge`).

        Raises:
            InsufficientCredits: the balance is below ``amount_mc`` (nothing taken).
        """
        with self.database.transaction() as session:
            ledger.charge(session, key_id, request_id, amount_mc, self.clock())

    def return_charge(self, key_id: str, request_id: str, amount_mc: int) -> None:
        """Give a failed synchronous request's charge back (:func:`lift3d.service.accounts.credits.return_charge`)."""
        with self.database.transaction() as session:
            ledger.return_charge(session, key_id, request_id, amount_mc, self.clock())

    def add_credits(self, key_id: str, credits: float) -> KeyInfo:
        """Add ``credits`` (> 0) to the key's balance, with a ``grant`` ledger row.

        Raises:
            KeyNotFound: no such id.
            InvalidInputError: ``credits`` not a finite number > 0 (at least 0.001, the ledger's unit).
        """
        amount_mc = ledger.to_mc(ledger.check_credits(credits))
        with self.database.transaction() as session:
            balance_mc = ledger.grant(session, key_id, amount_mc, self.clock())
            if balance_mc is None:
                raise KeyNotFound(f"no API key with id {key_id!r}")
        logger.info("added %.3f credits to API key %s", ledger.to_credits(amount_mc), key_id)
        return self.get(key_id)
