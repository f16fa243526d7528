"""The tables of the service database (SQLAlchemy 2 declarative). Times are seconds since the Unix epoch (float,
UTC); money is integer milli-credits (1 credit = 1 000 mc; 1 credit = US$0.01 by default, see
:mod:`lift3d.service.accounts.credits`), so that sums are exact.

Schema changes go through a new Alembic revision in ``migrations/versions`` (never edit an applied one).
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from lift3d.service.db.encryption import EncryptedText

__all__ = ["ApiKey", "Base", "CreditEntry", "IdempotencyRecord", "Job", "WebhookDelivery"]


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """An API key. The key itself is never stored: ``key_hash`` is its SHA-256 (hex); ``prefix`` is its first
    characters, shown in listings so that a user can tell keys apart. ``webhook_secret`` is stored encrypted
    (:class:`~lift3d.service.db.encryption.EncryptedText`, a Fernet token); Python code sees the ``whsec_…`` text."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    webhook_secret: Mapped[str] = mapped_column(EncryptedText())
    balance_mc: Mapped[int] = mapped_column(BigInteger, default=0)
    rate_limit_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Job(Base):
    """A generation job. ``record`` holds the whole :class:`~lift3d.service.jobs.store.JobRecord` as JSON; the columns
    beside it duplicate what queries and guarded updates need. ``version`` grows by one on every write: an update
    names the version it read (``UPDATE … WHERE version = :read``), so two writers can never both succeed and no
    field is lost to a race."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    updated_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    reserved_mc: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_mc: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    record: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (Index("ix_jobs_owner_status", "owner_id", "status"),)


class CreditEntry(Base):
    """One movement of a key's balance: ``grant`` (added credits), ``reserve`` (estimate held at submit),
    ``settle`` (the difference between measured cost and estimate), ``refund`` (a failed or canceled job).
    ``amount_mc`` is signed (negative spends); ``balance_mc`` is the balance after it."""

    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount_mc: Mapped[int] = mapped_column(BigInteger)
    balance_mc: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class IdempotencyRecord(Base):
    """A POST seen with an ``Idempotency-Key`` (IETF httpapi-idempotency-key draft), per API key.
    ``state``: ``pending`` while the first request is being accepted, then ``done`` with the stored response."""

    __tablename__ = "idempotency_records"

    owner_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_headers: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class WebhookDelivery(Base):
    """One webhook message (Standard Webhooks: ``id`` is the ``webhook-id`` header, the same on every retry) and
    its delivery attempts. ``state``: ``pending`` → ``delivered`` | ``failed`` (attempts exhausted)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    owner_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
