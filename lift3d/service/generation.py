"""The HTTP-free core of the API: submission, status, results and cancellation over the job store and the queue.

Blocking methods (the HTTP app calls them through ``asyncio.to_thread``); the same object serves the FastAPI routes
(:func:`lift3d.service.app.create_api`) and the Python handle API of the Serve ingress.

Examples:
    >>> service = GenerationService(JobStore(LocalStore("/tmp/lift3d")), enqueue=queue.append)
    >>> service.submit(GenerationRequest(kind="text-to-3d", prompt="a wooden toy robot")).id  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Callable

from lift3d.errors import Lift3DError
from lift3d.io.images import ImageLimits, detect_kind, load_image
from lift3d.params import GenerationParams
from lift3d.service.jobs import InvalidTransition, JobNotFound, JobRecord, JobStore
from lift3d.service.schemas import (
    Artifact,
    ErrorBody,
    GenerationAccepted,
    GenerationRequest,
    GenerationResult,
    GenerationStatus,
    decode_image,
)
from lift3d.service.uploads import ReconstructParams, ViewsZipLimits, check_views_zip

logger = logging.getLogger(__name__)

__all__ = ["GenerationService", "QueueUnavailable"]

_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class GenerationService:
    """Submission, status and results over the job store and the queue. Blocking methods.

    Args:
        jobs: job records and artifacts.
        enqueue: puts a job id on the job queue.
        limits: upload limits (bytes, pixels).
        max_attempts: attempts per job.
        url_expires_s: lifetime of presigned artifact URLs.
        views_limits: limits of views ZIPs (``views-to-3d``).
    """

    def __init__(self, jobs: JobStore, enqueue: Callable[[str], None], limits: ImageLimits = ImageLimits(),
                 max_attempts: int = 3, url_expires_s: int = 3600,
                 views_limits: ViewsZipLimits = ViewsZipLimits()) -> None:
        self.jobs, self.enqueue, self.limits = jobs, enqueue, limits
        self.max_attempts, self.url_expires_s, self.views_limits = max_attempts, url_expires_s, views_limits

    # ---------------------------------------------------------------------------------------------- submit
    def submit(self, request: GenerationRequest, image: bytes | None = None) -> GenerationAccepted:
        """Validate, store the upload and the job record, enqueue.

        ``image``: the encoded image when it did not come base64 in ``request.image`` (multipart uploads).

        Raises:
            InvalidInputError, PayloadTooLargeError, BadRequestError: the request is unusable.
        """
        # 1. check the inputs
        if image is None and request.image is not None:
            image = decode_image(request.image, self.limits.max_bytes)
            request = request.model_copy(update={"image": ""})
        if image is not None and request.image is None:
            request = request.model_copy(update={"image": ""})
        request.check()
        if image is not None:
            load_image(image, self.limits)  # raises with a user-facing message
        # 2. store the upload and the record
        record = JobRecord.new(request.kind, request.params(), max_attempts=self.max_attempts,
                               input_key=None, now=self.jobs.clock())
        if image is not None:
            kind = detect_kind(image)
            record = record.model_copy(update={"input_key": f"{record.prefix}upload.{kind.lower()}"})
            self.jobs.store.put(record.input_key, image, _CONTENT_TYPES.get(kind, "application/octet-stream"))
        self.jobs.create(record)
        # 3. enqueue
        return self._enqueue(record)

    def submit_views(self, views: bytes, params: GenerationParams, options: ReconstructParams) -> GenerationAccepted:
        """Validate a views ZIP (:func:`~lift3d.service.uploads.check_views_zip`), store it as the upload of a
        ``views-to-3d`` job, enqueue. ``params``: only its seed is used.

        Raises:
            InvalidInputError, PayloadTooLargeError, BadRequestError: the ZIP is unusable.
        """
        check_views_zip(views, self.views_limits)
        record = JobRecord.new("views-to-3d", GenerationParams(seed=params.seed), max_attempts=self.max_attempts,
                               now=self.jobs.clock())
        record = record.model_copy(update={"input_key": f"{record.prefix}upload.zip", "reconstruct": options})
        self.jobs.store.put(record.input_key, views, "application/zip")
        self.jobs.create(record)
        return self._enqueue(record)

    def try_submit(self, request: GenerationRequest) -> GenerationAccepted | ErrorBody:
        """:meth:`submit` for the handle API (``request.image`` base64): errors come back as :class:`ErrorBody`."""
        try:
            return self.submit(request)
        except Lift3DError as exc:
            return ErrorBody(id=uuid.uuid4().hex, name=exc.name, errors=getattr(exc, "errors", None) or [str(exc)])

    def _enqueue(self, record: JobRecord) -> GenerationAccepted:
        """Put a created job on the queue; a job that cannot be queued fails at once rather than waiting forever."""
        try:
            self.enqueue(record.id)
        except Exception as exc:
            logger.exception("could not enqueue job %s", record.id)
            self.jobs.fail(record.id, "service_unavailable", "the job queue is unavailable; try again later")
            raise QueueUnavailable(str(exc)) from exc
        return GenerationAccepted(id=record.id)

    # ---------------------------------------------------------------------------------------------- status
    def status(self, job_id: str, with_content: bool = True) -> GenerationStatus | GenerationResult | ErrorBody:
        """The job's state as an API model (never raises for unknown ids: ``generation_not_found``)."""
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            return ErrorBody(id=job_id, name="generation_not_found", errors=[f"no generation with id {job_id!r}"])
        if record.status in ("queued", "running"):
            return GenerationStatus(id=record.id, status=record.status, stage=record.stage,
                                    progress=record.progress, eta_s=record.eta_s)
        if record.status == "canceled":
            return ErrorBody(id=record.id, name="generation_canceled", errors=["the generation was canceled"])
        if record.status == "failed":
            error = record.error
            return ErrorBody(id=record.id, name=error.name if error else "internal_error",
                             errors=[error.message if error else "the generation failed"])
        outcome = record.outcome
        content = self.jobs.store.get(record.prefix + outcome.main_key) if with_content else b""
        return GenerationResult(
            id=record.id, seed=int(record.params.seed), content_type=outcome.content_type,
            content=base64.b64encode(content).decode("ascii"), timings_s=outcome.timings_s,
            gpu_seconds=outcome.gpu_seconds, cost_usd=outcome.cost_usd, random_weights=outcome.random_weights,
            artifacts=[Artifact(name=name, url=self.jobs.store.url(record.prefix + name, self.url_expires_s))
                       for name in outcome.artifacts],
        )

    def content(self, job_id: str) -> tuple[bytes, str] | None:
        """``(bytes, content type)`` of a succeeded job's main artifact; None otherwise."""
        try:
            record = self.jobs.get(job_id)
        except JobNotFound:
            return None
        if record.status != "succeeded":
            return None
        return self.jobs.store.get(record.prefix + record.outcome.main_key), record.outcome.content_type

    def cancel(self, job_id: str) -> GenerationStatus | ErrorBody:
        try:
            record = self.jobs.request_cancel(job_id)
        except JobNotFound:
            return ErrorBody(id=job_id, name="generation_not_found", errors=[f"no generation with id {job_id!r}"])
        except InvalidTransition as exc:
            return ErrorBody(id=job_id, name="bad_request", errors=[str(exc)])
        if record.status == "canceled":
            return ErrorBody(id=job_id, name="generation_canceled", errors=["the generation was canceled"])
        return GenerationStatus(id=record.id, status=record.status, stage="canceling", progress=record.progress)


class QueueUnavailable(Lift3DError):
    """The job could not be put on the queue."""

    name = "service_unavailable"
