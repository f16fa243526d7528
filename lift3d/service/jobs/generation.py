"""The HTTP-free core of the API: submission, status, results and cancellation over the job store and the queue.

Blocking methods (the HTTP app calls them through ``asyncio.to_thread``); the same object serves the FastAPI routes
(:mod:`lift3d.service.api.routes.generations`) and the Python handle API of the Serve ingress. Every answer that is
not the one asked for is raised: a :class:`~lift3d.errors.Lift3DError` with the API's error name and HTTP status
(:class:`~lift3d.service.schemas.GenerationNotFound`, ``GenerationFailed``, ``InsufficientCredits``, …).

Examples:
    >>> service = GenerationService(JobStore(LocalStore("/tmp/lift3d")), enqueue=queue.append)
    >>> service.submit(GenerationRequest(kind="text-to-3d", prompt="a wooden toy robot")).id  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import logging
import re
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from lift3d.errors import InvalidInputError
from lift3d.io.images import ImageLimits, detect_kind, load_image
from lift3d.io.media_types import BY_IMAGE_KIND, OCTET_STREAM, ZIP, media_type_of
from lift3d.io.storage.base import StoredObjectNotFound
from lift3d.params import GenerationParams
from lift3d.service.accounts.credits import InsufficientCredits, balance_credits, to_credits, to_mc
from lift3d.service.db import ReadWouldWait
from lift3d.service.jobs.artifacts import ArtifactUrls
from lift3d.service.jobs.limits import JobLimits
from lift3d.service.jobs.store import ANY_OWNER, InvalidTransition, JobNotFound, JobRecord, JobStore
from lift3d.service.webhooks.urls import DEFAULT_WEBHOOK_PORTS, check_webhook_url
from lift3d.service.schemas import (
    Artifact,
    ArtifactNotFound,
    GenerationAccepted,
    GenerationCanceled,
    GenerationExpired,
    GenerationFailed,
    GenerationFinished,
    GenerationNotFound,
    GenerationRequest,
    GenerationResult,
    GenerationStatus,
    ServiceUnavailableError,
    decode_image,
)
from lift3d.service.jobs.uploads import ReconstructParams, ViewsZip, ViewsZipLimits, check_views_zip, store_upload

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from lift3d.service.accounts.principal import Principal

__all__ = ["GenerationService", "QueueUnavailable", "WebhookPolicy", "is_progressive_artifact", "visible_to"]

class WebhookPolicy(NamedTuple):
    """Which webhook URLs a submit accepts: ``allow_private`` lifts the SSRF address rules (local setups);
    ``service_secret``: whether the service has a secret for jobs without an API key (auth off)."""

    allow_private: bool = False
    service_secret: bool = False
    allowed_ports: tuple[int, ...] = DEFAULT_WEBHOOK_PORTS  # ports of public webhook URLs (issue 23)


class GenerationService:
    """Submission, status and results over the job store and the queue. Blocking methods.

    Args:
        jobs: job records and artifacts.
        enqueue: puts a job id on the job queue.
        limits: upload limits (bytes, pixels).
        max_attempts: attempts per job.
        url_expires_s: lifetime of presigned artifact URLs (``artifact_urls``:
            :class:`~lift3d.service.jobs.artifacts.ArtifactUrls` over the job store's artifact store).
        views_limits: limits of views ZIPs (``views-to-3d``).
        price: credits a request is estimated to cost, ``(kind, params) → credits`` (reserved at submit from the
            caller's balance, settled to the measured cost at the end); None: nothing is charged.
        webhooks: which webhook URLs are accepted (SSRF rules) and whether jobs without a key may ask for them.
        job_limits: queued + running jobs per key and queued jobs in all, checked in the job's insert transaction
            (:mod:`lift3d.service.jobs.limits`; exact under concurrent submits). Default: no limits.

    Every method takes the ``caller`` (:class:`~lift3d.service.accounts.principal.Principal`; None for trusted internal callers
    such as Ray handle users): a job belongs to the key that submitted it, and another key's job is reported as
    missing. The local principal (auth off) and internal callers see every job.
    """

    def __init__(self, jobs: JobStore, enqueue: Callable[[str], None], limits: ImageLimits = ImageLimits(),
                 max_attempts: int = 3, url_expires_s: int = 3600,
                 views_limits: ViewsZipLimits = ViewsZipLimits(), *,
                 price: Callable[[str, Any], float] | None = None,
                 webhooks: WebhookPolicy = WebhookPolicy(), job_limits: JobLimits = JobLimits()) -> None:
        self.jobs, self.enqueue, self.limits = jobs, enqueue, limits
        self.max_attempts, self.url_expires_s, self.views_limits = max_attempts, url_expires_s, views_limits
        self.price, self.webhooks, self.job_limits = price, webhooks, job_limits
        self.artifact_urls = ArtifactUrls(jobs.store, url_expires_s)

    def _create(self, record: JobRecord, caller: Principal | None, price_params: Any) -> None:
        """Insert the record for ``caller``, admitted under the job limits and with the estimate reserved from its
        balance (one transaction)."""
        reserve_mc = 0
        if caller is not None and caller.key_id is not None and self.price is not None:
            reserve_mc = to_mc(self.price(record.kind, price_params))
        own_limit = caller.max_concurrent_jobs if caller is not None else None
        try:
            self.jobs.create(record, reserve_mc=reserve_mc, limits=self.job_limits, max_concurrent_jobs=own_limit)
        except Exception:
            if record.input_key is not None:  # nothing accepted: the upload must not linger
                self.jobs.store.delete_prefix(record.prefix)
            raise

    def _webhook_url(self, url: str | None, caller: Principal | None) -> str | None:
        """The checked webhook URL (None: none asked for). Raises InvalidInputError (SSRF rules, no secret)."""
        if url is None:
            return None
        check_webhook_url(url, self.webhooks.allow_private, self.webhooks.allowed_ports)
        if (caller is None or caller.key_id is None) and not self.webhooks.service_secret:
            raise InvalidInputError("webhook_url: this server runs without API keys and has no webhook_secret to "
                                    "sign webhooks with")
        return url

    def check_funds(self, caller: Principal | None, kind: str | None = None, params: Any = None) -> None:
        """Refuse early, with one read, a caller who cannot pay: its balance is below the estimate of ``kind`` with
        ``params`` (without them: below one milli-credit), so nothing is parsed or decoded for it. The reservation
        at insert still decides. Nothing to check without a key or without pricing.

        Raises:
            InsufficientCredits: the balance is short (402; the message gives the price and the balance).
        """
        if caller is None or caller.key_id is None or self.price is None:
            return
        price_mc = max(1, to_mc(self.price(kind, params))) if kind is not None else 1
        with self.jobs.database.read() as session:
            balance = balance_credits(session, caller.key_id)
        if to_mc(balance) < price_mc:
            cost = f"costs {to_credits(price_mc):.3f}" if kind is not None else "needs at least 0.001"
            raise InsufficientCredits(f"this request {cost} credits and the balance is {balance:.3f} credits; add "
                                      "credits and retry")

    # ---------------------------------------------------------------------------------------------- submit
    def submit(self, request: GenerationRequest, image: bytes | None = None,
               caller: Principal | None = None, webhook_events: list[str] | None = None) -> GenerationAccepted:
        """Validate, store the upload and the job record, enqueue.

        ``image``: the encoded image when it did not come base64 in ``request.image`` (multipart uploads).
        ``webhook_events``: the webhook event types to send (None: all).

        Raises:
            InvalidInputError, PayloadTooLargeError, BadRequestError: the request is unusable.
            InsufficientCredits: the caller's balance is below the estimate (nothing is stored; checked before the
                image is decoded).
            RateLimitedError, OverloadedError: the caller's concurrency or the queue-depth limit (429, 503).
        """
        # 1. check the credits (a read), then the inputs
        self.check_funds(caller, request.kind, request.params())
        if image is None and request.image is not None:
            image = decode_image(request.image, self.limits.max_bytes)
            request = request.model_copy(update={"image": ""})
        if image is not None and request.image is None:
            request = request.model_copy(update={"image": ""})
        request.check()
        if image is not None:
            load_image(image, self.limits)  # raises with a user-facing message
        # 2. store the upload and the record
        webhook_url = self._webhook_url(request.webhook_url, caller)
        record = JobRecord.new(request.kind, request.params(), max_attempts=self.max_attempts,
                               input_key=None, now=self.jobs.clock(), owner_id=_owner_id(caller),
                               webhook_url=webhook_url)
        record = record.model_copy(update={"webhook_events": webhook_events})  # None: every event (issue 24)
        if image is not None:
            kind = detect_kind(image)
            record = record.model_copy(update={"input_key": f"{record.prefix}upload.{kind.lower()}"})
            self.jobs.store.put(record.input_key, image, BY_IMAGE_KIND.get(kind, OCTET_STREAM))
        self._create(record, caller, record.params)
        # 3. enqueue
        return self._enqueue(record)

    def submit_views(self, views: ViewsZip, params: GenerationParams, options: ReconstructParams,
                     caller: Principal | None = None, webhook_url: str | None = None) -> GenerationAccepted:
        """Validate a views ZIP (:func:`~lift3d.service.jobs.uploads.check_views_zip`), store it as the upload of a
        ``views-to-3d`` job, enqueue. ``params``: only its seed is used.

        Raises:
            InvalidInputError, PayloadTooLargeError, BadRequestError: the ZIP is unusable.
            InsufficientCredits: the caller's balance is below the estimate (nothing is stored; checked first).
            RateLimitedError, OverloadedError: the caller's concurrency or the queue-depth limit (429, 503).
        """
        self.check_funds(caller, "views-to-3d", options)
        check_views_zip(views, self.views_limits)
        webhook_url = self._webhook_url(webhook_url, caller)
        record = JobRecord.new("views-to-3d", GenerationParams(seed=params.seed), max_attempts=self.max_attempts,
                               now=self.jobs.clock(), owner_id=_owner_id(caller), webhook_url=webhook_url)
        record = record.model_copy(update={"input_key": f"{record.prefix}upload.zip", "reconstruct": options})
        store_upload(self.jobs.store, record.input_key, views, ZIP)  # a spooled file: copied in chunks
        self._create(record, caller, options)
        return self._enqueue(record)

    def _enqueue(self, record: JobRecord) -> GenerationAccepted:
        """Put a created job on the queue; a job that cannot be queued fails at once rather than waiting forever.

        Raises:
            QueueUnavailable: the queue refused the job (it is recorded as failed).
        """
        try:
            self.enqueue(record.id)
        except Exception as exc:
            logger.exception("could not enqueue job %s", record.id)
            self.jobs.fail(record.id, "service_unavailable", "the job queue is unavailable; try again later")
            raise QueueUnavailable(str(exc)) from exc
        return GenerationAccepted(id=record.id)

    # ---------------------------------------------------------------------------------------------- status
    def record(self, job_id: str, caller: Principal | None = None) -> JobRecord:
        """The job record ``caller`` may see.

        Raises:
            GenerationNotFound: no such job, or another key's.
        """
        try:
            return self.jobs.get(job_id, visible_to(caller))
        except JobNotFound:
            raise GenerationNotFound(job_id) from None

    def status(self, job_id: str, with_content: bool = True,
               caller: Principal | None = None) -> GenerationStatus | GenerationResult:
        """The job's state as an API model: its status while queued or running, its result once it succeeded. One
        read; an active job's few fields are taken from the stored record without validating all of it (the
        status poll's hot path).

        Raises:
            GenerationNotFound: no such job (or another key's). GenerationCanceled, GenerationExpired: 410.
            GenerationFailed: the job failed (its stored error name and message).
        """
        data = self._data(job_id, caller)
        if data["status"] in ("queued", "running"):
            return _active_status(data)
        return self._finished(JobRecord.model_validate(data), with_content)

    def poll(self, job_id: str, caller: Principal | None = None) -> GenerationStatus | None:
        """:meth:`status` of a queued or running job, without waiting, for a caller on an event loop: a local
        database's read costs less than a hop to a worker thread (issue 23, poll cost). None when answering needs
        more: the job ended (its result is in the artifact store), or the database cannot answer at once
        (PostgreSQL, a locked SQLite file); then call :meth:`status` in a worker thread.

        Raises:
            GenerationNotFound: no such job (or another key's).
        """
        try:
            data = self.jobs.get_data(job_id, visible_to(caller), nowait=True)
        except ReadWouldWait:
            return None
        except JobNotFound:
            raise GenerationNotFound(job_id) from None
        return _active_status(data) if data["status"] in ("queued", "running") else None

    def _data(self, job_id: str, caller: Principal | None) -> dict:
        try:
            return self.jobs.get_data(job_id, visible_to(caller))
        except JobNotFound:
            raise GenerationNotFound(job_id) from None

    def _finished(self, record: JobRecord, with_content: bool) -> GenerationResult:
        _raise_unless_succeeded(record)
        outcome = record.outcome
        content = self.jobs.store.get(record.prefix + outcome.main_key) if with_content else b""
        return GenerationResult(
            id=record.id, seed=record.params.seed, content_type=outcome.content_type,
            content=base64.b64encode(content).decode("ascii"), timings_s=outcome.timings_s,
            gpu_seconds=outcome.gpu_seconds, cost_usd=outcome.cost_usd, random_weights=outcome.random_weights,
            artifacts=[Artifact(name=name, url=self.artifact_urls(record.id, name)) for name in outcome.artifacts],
        )

    def artifact(self, job_id: str, name: str, caller: Principal | None = None) -> tuple[bytes, str]:
        """``(bytes, media type)`` of the artifact ``name`` of a succeeded job: a name listed in its result's
        ``artifacts``, relative to the job (``model.glb``, ``views/000_az000_el0.png``); while the job runs, the
        artifacts already written that show its progress (:func:`is_progressive_artifact`: the prepared input and
        the novel views).

        Raises:
            GenerationNotFound: an unknown id. ArtifactNotFound: the job has not succeeded, or ``name`` is not one
                of its artifacts (absolute, with ``..`` or ``\\``, or not listed), or it is no longer stored.
        """
        record = self.record(job_id, caller)
        unsafe = name.startswith("/") or "\\" in name or ".." in name.split("/")
        listed = (record.status == "succeeded" and name in record.outcome.artifacts) or (
            record.status in ("queued", "running") and is_progressive_artifact(name))
        if unsafe or not listed:
            state = "" if record.status == "succeeded" else f" (the generation is {record.status})"
            raise ArtifactNotFound(job_id, f"generation {job_id} has no artifact {name[:200]!r}{state}")
        try:
            data = self.jobs.store.get(record.prefix + name)
        except StoredObjectNotFound:
            raise ArtifactNotFound(job_id, f"artifact {name!r} is no longer stored") from None
        return data, media_type_of(name)

    def artifact_names(self, job_id: str, caller: Principal | None = None) -> list[str]:
        """The artifacts a client may fetch now: a succeeded job's (as its result lists them), those a queued or
        running job has written that show its progress (:func:`is_progressive_artifact`), none of a failed job.

        Raises:
            GenerationNotFound: no such job (or another key's). GenerationCanceled, GenerationExpired: as
                :meth:`status` (410).
        """
        record = self.record(job_id, caller)
        if record.status == "succeeded":
            return list(record.outcome.artifacts)
        if record.status in ("canceled", "expired"):
            _raise_unless_succeeded(record)
        if record.status in ("queued", "running"):
            names = (key[len(record.prefix):] for key in self.jobs.store.list(record.prefix))
            return sorted(name for name in names if is_progressive_artifact(name))
        return []

    def content(self, job_id: str, caller: Principal | None = None) -> tuple[bytes, str] | None:
        """``(bytes, content type)`` of a succeeded job's main artifact; None otherwise."""
        try:
            record = self.jobs.get(job_id, visible_to(caller))
        except JobNotFound:
            return None
        if record.status != "succeeded":
            return None
        return self.jobs.store.get(record.prefix + record.outcome.main_key), record.outcome.content_type

    def cancel(self, job_id: str, caller: Principal | None = None) -> GenerationStatus:
        """Ask the job to stop: a queued job is canceled at once, a running one by its worker soon after.

        Returns:
            The running job's status (stage ``canceling``).

        Raises:
            GenerationCanceled: the job had not started and is canceled now (``DELETE`` answers it with 200).
            GenerationNotFound: no such job (or another key's). GenerationFinished: it already ended.
        """
        try:
            record = self.jobs.request_cancel(job_id, visible_to(caller))
        except JobNotFound:
            raise GenerationNotFound(job_id) from None
        except InvalidTransition as exc:
            raise GenerationFinished(job_id, str(exc)) from None
        if record.status == "canceled":
            raise GenerationCanceled(job_id)
        return GenerationStatus(id=record.id, status=record.status, stage="canceling", progress=record.progress)


def _active_status(data: dict) -> GenerationStatus:
    """The status of a queued or running job from its stored record (a dict)."""
    return GenerationStatus(id=data["id"], status=data["status"], stage=data.get("stage"),
                            progress=data.get("progress"), eta_s=data.get("eta_s"))


def _raise_unless_succeeded(record: JobRecord) -> None:
    """Raises the answer for a job that ended without success: GenerationCanceled, GenerationExpired or
    GenerationFailed (its stored error)."""
    if record.status == "canceled":
        raise GenerationCanceled(record.id)
    if record.status == "expired":
        raise GenerationExpired(record.id)
    if record.status == "failed":
        error = record.error
        raise GenerationFailed(record.id, error.name if error else "internal_error",
                               error.message if error else "the generation failed")


def _owner_id(caller: Principal | None) -> str | None:
    return caller.key_id if caller is not None else None


_PROGRESSIVE = re.compile(r"^(?:input\.png|views/\d{3}_[A-Za-z0-9_.-]{1,64}\.png)$")


def is_progressive_artifact(name: str) -> bool:
    """Whether ``name`` is an artifact a running job may show before it ends: ``input.png`` (background removed,
    recentred) and the novel views ``views/NNN_….png``."""
    return bool(_PROGRESSIVE.fullmatch(name))


def visible_to(caller: Principal | None) -> Any:
    """The owner filter of reads: a key sees its own jobs; the local principal and internal callers see all."""
    return caller.key_id if caller is not None and caller.key_id is not None else ANY_OWNER


class QueueUnavailable(ServiceUnavailableError):
    """The job could not be put on the queue (HTTP 503, ``Retry-After``)."""
