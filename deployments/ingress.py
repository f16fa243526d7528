"""``Ingress`` deployment: the HTTP API (v1, FastAPI, OpenAPI at ``/docs``) and the Python handle API.

HTTP only here: requests are validated, the upload and a job record are written to the artifact store, and the
job id goes on the job queue; nothing long runs inside a request, so a client disconnect cancels nothing.
:class:`GenerationService` is the HTTP-free core (blocking; called through ``asyncio.to_thread``), and
:func:`create_api` the FastAPI app over it, testable without Ray.

Routes:

- ``POST /v1/generation/image-to-3d`` | ``text-to-3d`` | ``multiview`` → ``202 {"id"}``; multipart (``image`` file
  + form fields) or JSON (``image`` base64) with :class:`~lift3d.params.GenerationParams`' fields.
- ``POST /v1/generation/views-to-3d`` → ``202 {"id"}``; multipart: ``views`` (ZIP of ``transforms.json`` + images)
  + ``seed`` and :class:`~lift3d.service.uploads.ReconstructParams`' fields (HTTP only, no handle method).
- ``GET /v1/generation/{id}`` → ``202`` status while queued/running; ``200`` GLB (``model/gltf-binary``) or ZIP of
  views, or with ``Accept: application/json`` a :class:`~lift3d.service.schemas.GenerationResult`.
- ``DELETE /v1/generation/{id}`` → cancel. ``GET /healthz`` → 200 when every deployment is healthy, else 503.

Handle API (same models): ``handle.generate.remote(GenerationRequest(...))`` →
:class:`~lift3d.service.schemas.GenerationAccepted` | :class:`~lift3d.service.schemas.ErrorBody`;
``handle.status.remote(id)`` → ``GenerationStatus | GenerationResult | ErrorBody``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from typing import Any, Callable, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from lift3d.service.jobs import InvalidTransition, JobNotFound, JobRecord, JobStore
from lift3d.service.uploads import ReconstructParams, ViewsZipLimits, check_views_zip
from lift3d.service.schemas import (
    Artifact,
    BadRequestError,
    ErrorBody,
    GenerationAccepted,
    GenerationKind,
    GenerationRequest,
    GenerationResult,
    GenerationStatus,
    decode_image,
)
from lift3d.errors import InvalidInputError, Lift3DError, PayloadTooLargeError
from lift3d.io.images import ImageLimits, detect_kind, load_image
from lift3d.params import GenerationParams
from lift3d.io.storage import make_store

logger = logging.getLogger(__name__)

__all__ = ["GenerationService", "IngressDeployment", "create_api"]

_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_EXTENSIONS = {"model/gltf-binary": "glb", "application/zip": "zip"}


def _messages(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
            for e in exc.errors()]


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


class RequestMetrics(Protocol):
    def count_request(self, route: str, method: str, status: int) -> None: ...


# ---------------------------------------------------------------------------------------------- HTTP layer
def _error(name: str, errors: list[str], id: str | None = None) -> JSONResponse:
    body = ErrorBody(id=id or uuid.uuid4().hex, name=name, errors=errors)
    return JSONResponse(body.model_dump(), status_code=body.http_status)


def _wants_json(accept: str | None) -> bool:
    """Whether ``Accept`` ranks application/json at least as high as any binary type it names."""
    if not accept:
        return False
    best_json, best_other = 0.0, 0.0
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media == "application/json":
            best_json = max(best_json, q)
        elif media in ("model/gltf-binary", "application/zip", "application/octet-stream", "model/*"):
            best_other = max(best_other, q)
    return best_json > 0 and best_json >= best_other


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": GenerationRequest.model_json_schema()},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "additionalProperties": True,
                "description": "`image` file plus any GenerationRequest field as a form field.",
            }},
        },
    },
}


_VIEWS_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["views"],
            "properties": {
                "views": {"type": "string", "format": "binary",
                          "description": "ZIP of transforms.json (NeRF-synthetic) and its images, at the root or "
                                         "in one top-level folder."},
                "seed": {"type": "integer", "minimum": 0},
                **ReconstructParams.model_json_schema()["properties"],
            },
        }}},
    },
}


def _invalid(exc: ValidationError) -> InvalidInputError:
    error = InvalidInputError("; ".join(_messages(exc)))
    error.errors = _messages(exc)  # type: ignore[attr-defined]
    return error


def create_api(service: GenerationService, metrics: RequestMetrics,
               health: Callable[[], Any] | None = None, limits: ImageLimits = ImageLimits()) -> FastAPI:
    """The FastAPI app over ``service``. ``health`` (async) returns ``(ok, details)``."""
    api = FastAPI(title="lift3d", version="1.0",
                  description="Image or prompt → novel views → NeRF with SDS → GLB. Submit, poll, download.")
    body_limit = limits.max_bytes * 4 // 3 + 64 * 1024  # base64 overhead and form fields

    @api.middleware("http")
    async def count_and_contain(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - logged here; the client gets the envelope, never a traceback
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            response = _error("internal_error", ["internal error; the server logged the details"])
        route = request.scope.get("route")
        metrics.count_request(getattr(route, "path", "unmatched"), request.method, response.status_code)
        return response

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = "generation_not_found" if exc.status_code == 404 else "bad_request"
        return JSONResponse(ErrorBody(id=uuid.uuid4().hex, name=name, errors=[str(exc.detail)]).model_dump(),
                            status_code=exc.status_code)

    async def parse(request: Request, kind: GenerationKind) -> tuple[GenerationRequest, bytes | None]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            raise PayloadTooLargeError(f"request body is larger than {body_limit // (1024 * 1024)} MiB")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        image: bytes | None = None
        if content_type == "application/json":
            try:
                fields = await asyncio.to_thread(json.loads, await request.body())
            except (UnicodeDecodeError, ValueError):
                raise BadRequestError("body is not valid JSON") from None
            if not isinstance(fields, dict):
                raise BadRequestError("JSON body must be an object")
        elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=1, max_fields=32)
            except Exception as exc:  # noqa: BLE001 - Starlette raises several types for malformed bodies
                raise BadRequestError(f"malformed form body: {exc}") from None
            fields = {}
            for key, value in form.multi_items():
                if key == "image" and not isinstance(value, str):
                    image = await value.read()
                    if len(image) > limits.max_bytes:
                        raise PayloadTooLargeError(f"image is larger than {limits.max_bytes // (1024 * 1024)} MiB")
                elif isinstance(value, str) and value != "":
                    fields[key] = value
        else:
            raise BadRequestError("send multipart/form-data (image file + fields) or application/json")
        if "kind" in fields:
            raise InvalidInputError("kind: set by the route; remove this field")
        try:
            return GenerationRequest(kind=kind, **fields), image
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def submit(request: Request, kind: GenerationKind) -> Response:
        try:
            parsed, image = await parse(request, kind)
            accepted = await asyncio.to_thread(service.submit, parsed, image)
        except Lift3DError as exc:
            return _error(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return JSONResponse(accepted.model_dump(), status_code=202,
                            headers={"Location": f"/v1/generation/{accepted.id}"})

    responses = {202: {"model": GenerationAccepted}, 400: {"model": ErrorBody}, 413: {"model": ErrorBody},
                 422: {"model": ErrorBody}, 500: {"model": ErrorBody}}

    @api.post("/v1/generation/image-to-3d", status_code=202, responses=responses, openapi_extra=_BODY_DOC,
              summary="Image → GLB (or views with return_3d=false)")
    async def image_to_3d(request: Request) -> Response:
        return await submit(request, "image-to-3d")

    @api.post("/v1/generation/text-to-3d", status_code=202, responses=responses, openapi_extra=_BODY_DOC,
              summary="Prompt → SDXL image → GLB")
    async def text_to_3d(request: Request) -> Response:
        return await submit(request, "text-to-3d")

    @api.post("/v1/generation/multiview", status_code=202, responses=responses, openapi_extra=_BODY_DOC,
              summary="Image or prompt → ZIP of novel views")
    async def multiview(request: Request) -> Response:
        return await submit(request, "multiview")

    views_limit = service.views_limits.max_bytes

    async def parse_views(request: Request) -> tuple[bytes, GenerationParams, ReconstructParams]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > views_limit + 64 * 1024:
            raise PayloadTooLargeError(f"views: ZIP is larger than {views_limit // (1024 * 1024)} MiB")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise BadRequestError("send multipart/form-data: a `views` ZIP file plus option fields")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - Starlette raises several types for malformed bodies
            raise BadRequestError(f"malformed form body: {exc}") from None
        views, fields = None, {}
        for key, value in form.multi_items():
            if key == "views" and not isinstance(value, str):
                if (value.size or 0) > views_limit:
                    raise PayloadTooLargeError(f"views: ZIP is larger than {views_limit // (1024 * 1024)} MiB")
                views = await value.read()
            elif isinstance(value, str) and value != "":
                fields[key] = value
        if views is None:
            raise InvalidInputError("views: required (a ZIP file field)")
        seed = fields.pop("seed", None)
        try:
            return views, GenerationParams(seed=seed), ReconstructParams(**fields)
        except ValidationError as exc:
            raise _invalid(exc) from None

    @api.post("/v1/generation/views-to-3d", status_code=202, responses=responses, openapi_extra=_VIEWS_BODY_DOC,
              summary="Posed views (ZIP with transforms.json) → NeRF fit → GLB")
    async def views_to_3d(request: Request) -> Response:
        try:
            views, params, options = await parse_views(request)
            accepted = await asyncio.to_thread(service.submit_views, views, params, options)
        except Lift3DError as exc:
            return _error(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return JSONResponse(accepted.model_dump(), status_code=202,
                            headers={"Location": f"/v1/generation/{accepted.id}"})

    @api.get("/v1/generation/{id}", summary="Status while running; the result when done",
             responses={200: {"model": GenerationResult,
                              "content": {"model/gltf-binary": {}, "application/zip": {}}},
                        202: {"model": GenerationStatus}, 404: {"model": ErrorBody}, 410: {"model": ErrorBody},
                        422: {"model": ErrorBody}, 500: {"model": ErrorBody}})
    async def get_generation(id: str, request: Request) -> Response:
        as_json = _wants_json(request.headers.get("accept"))
        if not as_json:
            found = await asyncio.to_thread(service.content, id)
            if found is not None:
                data, content_type = found
                filename = f"{id}.{_EXTENSIONS.get(content_type, 'bin')}"
                return Response(data, media_type=content_type,
                                headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body = await asyncio.to_thread(service.status, id)
        if isinstance(body, ErrorBody):
            return JSONResponse(body.model_dump(), status_code=body.http_status)
        code = 200 if isinstance(body, GenerationResult) else 202
        return JSONResponse(body.model_dump(), status_code=code)

    @api.delete("/v1/generation/{id}", summary="Cancel a generation",
                responses={202: {"model": GenerationStatus}, 404: {"model": ErrorBody}, 410: {"model": ErrorBody}})
    async def cancel_generation(id: str) -> Response:
        body = await asyncio.to_thread(service.cancel, id)
        if isinstance(body, ErrorBody):
            code = 200 if body.name == "generation_canceled" else body.http_status
            return JSONResponse(body.model_dump(), status_code=code)
        return JSONResponse(body.model_dump(), status_code=202)

    @api.get("/healthz", summary="200 when every deployment is healthy, else 503")
    async def healthz() -> Response:
        if health is None:
            return JSONResponse({"status": "ok"})
        ok, details = await health()
        if ok:
            return JSONResponse({"status": "ok", "deployments": details})
        return _error("service_unavailable", [f"{name}: {status}" for name, status in details.items()
                                              if status != "HEALTHY"] or ["not ready"])

    return api


# ---------------------------------------------------------------------------------------------- deployment
@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.5, "memory": 1024**3},
    max_ongoing_requests=200,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 50},
)
@serve.ingress()
class IngressDeployment:
    """HTTP and handle front door. Holds no job state: everything lives in the artifact store."""

    def __init__(self, store_url: str, queue_config: Any, consumer: DeploymentHandle, max_attempts: int = 3,
                 url_expires_s: int = 3600, max_upload_bytes: int = 20 * 1024 * 1024) -> None:
        from deployments.metrics import RayMetrics
        from deployments.tasks import JobQueue

        self.consumer = consumer  # bound so that the job queue's consumer deploys with the application

        self.limits = ImageLimits(max_bytes=max_upload_bytes)
        self.service = GenerationService(JobStore(make_store(store_url)), JobQueue(queue_config).enqueue,
                                         self.limits, max_attempts, url_expires_s)
        self.metrics = RayMetrics()
        self.app_name = serve.get_replica_context().app_name

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self.service, self.metrics, self.health, self.limits)

    async def health(self) -> tuple[bool, dict[str, str]]:
        """Whether every deployment of this application is HEALTHY, and each one's status."""
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        if app is None:
            return False, {}
        details = {name: str(getattr(d.status, "value", d.status)) for name, d in app.deployments.items()}
        return all(s == "HEALTHY" for s in details.values()), details

    # ----------------------------------------------------------------------------------------- handle API
    async def generate(self, request: GenerationRequest) -> GenerationAccepted | ErrorBody:
        """Submit a generation (``request.image`` base64). Errors come back as :class:`ErrorBody`."""
        try:
            return await asyncio.to_thread(self.service.submit, request)
        except Lift3DError as exc:
            return ErrorBody(id=uuid.uuid4().hex, name=exc.name, errors=getattr(exc, "errors", None) or [str(exc)])

    async def status(self, id: str) -> GenerationStatus | GenerationResult | ErrorBody:
        """The same body as ``GET /v1/generation/{id}`` with ``Accept: application/json``."""
        return await asyncio.to_thread(self.service.status, id)

    async def cancel(self, id: str) -> GenerationStatus | ErrorBody:
        return await asyncio.to_thread(self.service.cancel, id)
