"""The FastAPI app of the v1 generation API (OpenAPI at ``/docs``), over a :class:`GenerationService`.

Routes are thin: parse (:mod:`lift3d.service.http`), call one service method in a worker thread, shape the
response. Nothing long runs inside a request, so a client disconnect cancels nothing.

- ``POST /v1/generation/image-to-3d`` | ``text-to-3d`` | ``multiview`` → ``202 {"id"}``; multipart (``image`` file
  + form fields) or JSON (``image`` base64) with :class:`~lift3d.params.GenerationParams`' fields.
- ``POST /v1/generation/views-to-3d`` → ``202 {"id"}``; multipart: ``views`` (ZIP of ``transforms.json`` + images)
  + ``seed`` and :class:`~lift3d.service.uploads.ReconstructParams`' fields.
- ``GET /v1/generation/{id}`` → ``202`` status while queued/running; ``200`` GLB (``model/gltf-binary``) or ZIP of
  views, or with ``Accept: application/json`` a :class:`~lift3d.service.schemas.GenerationResult`.
- ``GET /v1/generation/{id}/artifacts/{name}`` → one artifact of a succeeded generation (``name`` as listed in the
  result's ``artifacts``, e.g. ``views/000_az000_el0.png``), with its media type.
- ``POST /v1/generation/text-to-image`` (``/regions``, ``/pose``) → ``200`` with the image(s), synchronously
  (:mod:`lift3d.service.image_routes`).
- ``DELETE /v1/generation/{id}`` → cancel (409 once finished). ``GET /healthz`` → 200 when every deployment is
  healthy, else 503.

Errors use one envelope (:class:`~lift3d.service.schemas.ErrorBody`); a method a path does not serve gets 405 with
an ``Allow`` header naming those it does.

Examples:
    >>> client = TestClient(create_api(GenerationService(jobs, queue.append), ServiceMetrics()))
    >>> client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}).status_code
    202
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Callable, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lift3d.errors import Lift3DError
from lift3d.io.images import ImageLimits
from lift3d.service.account_routes import add_account_routes
from lift3d.service.admission import install_admission
from lift3d.service.auth import Principal, install_auth, principal
from lift3d.service.config import ServiceConfig
from lift3d.service.db import Database
from lift3d.service.events_routes import add_service_event_routes, apply_prefer_wait
from lift3d.service.generation import GenerationService, _visible_to
from lift3d.service.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_KEY_PARAMETER
from lift3d.service.history_routes import add_history_routes
from lift3d.service.image_routes import add_image_routes
from lift3d.service.playground import add_playground
from lift3d.service.images import ImageService
from lift3d.service.keys import ApiKeyStore
from lift3d.service.http import (body_doc, error_response, parse_generation, parse_views, unexpected_error_response,
                                 views_body_doc, wants_json)
from lift3d.service.schemas import ErrorBody, GenerationAccepted, GenerationKind, GenerationResult, GenerationStatus

logger = logging.getLogger(__name__)

__all__ = ["RequestMetrics", "create_api"]

_EXTENSIONS = {"model/gltf-binary": "glb", "application/zip": "zip"}


class RequestMetrics(Protocol):
    """Counts requests (Prometheus in-process, or Ray Serve metrics in the graph)."""

    def count_request(self, route: str, method: str, status: int) -> None: ...


def create_api(service: GenerationService, metrics: RequestMetrics,
               health: Callable[[], Any] | None = None, limits: ImageLimits = ImageLimits(), *,
               keys: ApiKeyStore | None = None, database: Database | None = None,
               config: ServiceConfig | None = None, images: ImageService | None = None) -> FastAPI:
    """The FastAPI app over ``service``. ``health`` (async) returns ``(ok, details)``. With ``keys`` every ``/v1/``
    route needs an API key and ``/v1/user/balance|account`` exist; without, every caller is the local principal
    (``auth: false``, an explicitly local setup). With ``database`` and ``config``: rate limits, job admission and
    ``Idempotency-Key`` (:func:`lift3d.service.admission.install_admission`); ``config`` also sets the event-stream
    poll interval. ``images``: the synchronous image endpoints (:mod:`lift3d.service.image_routes`; without, they
    answer 503). :func:`lift3d.service.server.build_api` passes all of them."""
    config = config or ServiceConfig()
    api = FastAPI(title="lift3d", version="1.0",
                  description="Image or prompt → novel views → NeRF with SDS → GLB. Submit, poll, download.")

    @api.middleware("http")
    async def count_and_contain(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - logged here; the client gets the envelope, never a traceback
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            response = unexpected_error_response(exc)  # 503 + Retry-After when a backing service is down
        route = request.scope.get("route")
        metrics.count_request(getattr(route, "path", "unmatched"), request.method, response.status_code)
        return response

    @api.exception_handler(Exception)
    async def outside_routes(request: Request, exc: Exception) -> JSONResponse:
        # Errors raised in the middleware around the routes (admission, idempotency) reach Starlette's outermost
        # handler: the same envelope, and 503 rather than 500 when the database or the store is unreachable.
        logger.exception("unhandled error around %s %s", request.method, request.url.path)
        return unexpected_error_response(exc)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(api, request))
            errors = [f"{request.method} is not allowed here; use {headers['Allow']}"]
        else:
            errors = [str(exc.detail)]
        name = {404: "generation_not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(ErrorBody(id=uuid.uuid4().hex, name=name, errors=errors).model_dump(),
                            status_code=exc.status_code, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def parameter_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid value')}"
                  for e in exc.errors()]
        return error_response("invalid_parameters", errors or ["invalid parameters"])

    async def submit(request: Request, kind: GenerationKind) -> Response:
        try:
            caller = principal(request)
            parsed, image = await parse_generation(request, kind, limits)
            accepted = await asyncio.to_thread(service.submit, parsed, image, caller)
        except Lift3DError as exc:
            return error_response(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return await accepted_response(request, accepted.id, caller)

    async def accepted_response(request: Request, job_id: str, caller: Principal) -> Response:
        """202 with ``Location``; with ``Prefer: wait=N`` (RFC 7240) held until the job ends or N s pass."""
        accepted = JSONResponse(GenerationAccepted(id=job_id).model_dump(), status_code=202,
                                headers={"Location": f"/v1/generation/{job_id}"})

        def result() -> Response:
            body = service.status(job_id, caller=caller)
            if isinstance(body, ErrorBody):
                return JSONResponse(body.model_dump(), status_code=body.http_status)
            return JSONResponse(body.model_dump(), status_code=200 if isinstance(body, GenerationResult) else 202)

        return await apply_prefer_wait(request, accepted, job_id=job_id,
                                       get_record=lambda j: service.jobs.get(j, _visible_to(caller)),
                                       result=result, poll_interval_s=config.events_poll_interval_s)

    location = {"Location": {"description": "Where to poll: `/v1/generation/{id}`.", "schema": {"type": "string"}}}
    responses = {202: {"model": GenerationAccepted, "headers": location, "description": "Accepted; poll Location."},
                 200: {"model": GenerationResult, "description": "With `Prefer: wait=N`: the job ended within N s "
                       "(the body `GET /v1/generation/{id}` gives with `Accept: application/json`)."},
                 **_errors(400, 402, 409, 413, 415, 422, 429, 500, 503,
                           texts={409: "The first request with this `Idempotency-Key` is still being accepted.",
                                  503: "Queue, database or deployments unavailable, or too many queued jobs "
                                       "(`overloaded`, with `Retry-After`)."})}

    @api.post("/v1/generation/image-to-3d", status_code=202, responses=responses,
              openapi_extra=_post_doc(body_doc("image-to-3d", limits)), summary="Image → GLB (or views with return_3d=false)")
    async def image_to_3d(request: Request) -> Response:
        return await submit(request, "image-to-3d")

    @api.post("/v1/generation/text-to-3d", status_code=202, responses=responses,
              openapi_extra=_post_doc(body_doc("text-to-3d", limits)), summary="Prompt → SDXL image → GLB")
    async def text_to_3d(request: Request) -> Response:
        return await submit(request, "text-to-3d")

    @api.post("/v1/generation/multiview", status_code=202, responses=responses,
              openapi_extra=_post_doc(body_doc("multiview", limits)), summary="Image or prompt → ZIP of novel views")
    async def multiview(request: Request) -> Response:
        return await submit(request, "multiview")

    @api.post("/v1/generation/views-to-3d", status_code=202, responses=responses,
              openapi_extra=_post_doc(views_body_doc(service.views_limits.max_bytes)),
              summary="Posed views (ZIP with transforms.json) → NeRF fit → GLB")
    async def views_to_3d(request: Request) -> Response:
        try:
            caller = principal(request)
            views, params, options, webhook_url = await parse_views(request, service.views_limits.max_bytes)
            accepted = await asyncio.to_thread(service.submit_views, views, params, options, caller, webhook_url)
        except Lift3DError as exc:
            return error_response(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return await accepted_response(request, accepted.id, caller)

    @api.get("/v1/generation/{id}", summary="Status while running; the result when done",
             responses={200: {"model": GenerationResult, "description": "The GLB or ZIP; JSON with "
                              "`Accept: application/json`.", "content": {"model/gltf-binary": _BINARY,
                                                                         "application/zip": _BINARY}},
                        202: {"model": GenerationStatus, "description": "Queued or running."},
                        **_errors(404, 410, 422, 500, 503, failed=True)})
    async def get_generation(id: str, request: Request) -> Response:
        as_json = wants_json(request.headers.get("accept"))
        if not as_json:
            found = await asyncio.to_thread(service.content, id, principal(request))
            if found is not None:
                data, content_type = found
                filename = f"{id}.{_EXTENSIONS.get(content_type, 'bin')}"
                return Response(data, media_type=content_type,
                                headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        body = await asyncio.to_thread(service.status, id, True, principal(request))
        if isinstance(body, ErrorBody):
            return JSONResponse(body.model_dump(), status_code=body.http_status)
        code = 200 if isinstance(body, GenerationResult) else 202
        return JSONResponse(body.model_dump(), status_code=code)

    @api.get("/v1/generation/{id}/artifacts/{name:path}", summary="One artifact of a succeeded generation",
             responses={200: {"description": "The artifact's bytes, with its media type.",
                              "content": {t: _BINARY for t in _ARTIFACT_MEDIA_TYPES}},
                        **_errors(404, 500)})
    async def get_artifact(id: str, name: str, request: Request) -> Response:
        found = await asyncio.to_thread(service.artifact, id, name, principal(request))
        if isinstance(found, ErrorBody):
            return JSONResponse(found.model_dump(), status_code=found.http_status)
        data, content_type = found
        return Response(data, media_type=content_type, headers={"X-Content-Type-Options": "nosniff"})

    @api.delete("/v1/generation/{id}", summary="Cancel a generation",
                responses={200: {"model": ErrorBody, "description": "Canceled at once (it had not started): "
                                 "`generation_canceled`."},
                           202: {"model": GenerationStatus, "description": "Running; its worker stops it soon."},
                           **_errors(404, 409, 500)})
    async def cancel_generation(id: str, request: Request) -> Response:
        body = await asyncio.to_thread(service.cancel, id, principal(request))
        if isinstance(body, ErrorBody):
            code = 200 if body.name == "generation_canceled" else body.http_status
            return JSONResponse(body.model_dump(), status_code=code)
        return JSONResponse(body.model_dump(), status_code=202)

    @api.get("/healthz", summary="200 when every deployment is healthy, else 503",
             responses={200: {"description": "Healthy.", "content": {"application/json": {"schema": _HEALTHY}}},
                        **_errors(500, 503)})
    async def healthz() -> Response:
        if health is None:
            return JSONResponse({"status": "ok"})
        ok, details = await health()
        if ok:
            return JSONResponse({"status": "ok", "deployments": details})
        return error_response("service_unavailable", [f"{name}: {status}" for name, status in details.items()
                                              if status != "HEALTHY"] or ["not ready"])

    # POST /v1/generation/text-to-image[/regions|/pose] (synchronous)
    add_image_routes(api, images, limits)
    # GET /v1/generations, GET /v1/generation/{id}/artifacts (listings); the playground at /
    add_history_routes(api, service)
    add_playground(api)
    # GET /v1/generation/{id}/events (server-sent events)
    add_service_event_routes(api, service, poll_interval_s=config.events_poll_interval_s)
    if keys is not None:
        add_account_routes(api, keys, default_rate_limit_per_min=config.default_rate_limit_per_min,
                           default_max_concurrent_jobs=config.default_max_concurrent_jobs or None)
    if database is not None:  # rate limit → Idempotency-Key → job limits, inside authentication
        install_admission(api, database, config)
    api.openapi = lambda: _without_default_422(api, FastAPI.openapi(api))  # type: ignore[method-assign]
    install_auth(api, keys, enabled=keys is not None)  # last: outermost, so inner middleware sees the principal
    # (and its OpenAPI additions — security schemes, 401, X-Remaining-Credits — wrap the spec built above)
    return api


def _without_default_422(api: FastAPI, schema: dict) -> dict:
    """FastAPI documents a 422 ``HTTPValidationError`` for every route with a path parameter; ours are plain
    strings that cannot fail validation, and errors use :class:`ErrorBody`: drop those entries (cached)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            if response is not None and "HTTPValidationError" in json.dumps(response):
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    api.openapi_schema = schema
    return schema


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ARTIFACT_MEDIA_TYPES = ("model/gltf-binary", "image/png", "image/jpeg", "image/webp", "application/json",
                         "application/zip", "video/mp4", "application/octet-stream")
_HEALTHY = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok"]},
    "deployments": {"type": "object", "additionalProperties": {"type": "string"},
                    "description": "Status of each deployment (Ray Serve)."}}}
_ERROR_TEXT = {400: "Unreadable body (malformed JSON, form or base64).", 404: "No such generation (or artifact).",
               409: "The generation already finished.", 410: "The generation was canceled.",
               402: "The key's balance is below the request's estimated price (`insufficient_credits`).",
               413: "Body, image or ZIP over its size limit.", 415: "Unsupported Content-Type.",
               429: "Over the key's requests per minute or jobs at once (`rate_limited`, with `Retry-After`).",
               422: "Invalid parameters or input.", 500: "Internal error.", 503: "Queue or deployments unavailable."}


def _errors(*codes: int, failed: bool = False, texts: dict[int, str] | None = None) -> dict[int, dict]:
    """OpenAPI responses of ``codes``, each the error envelope; ``failed``: also a failed job's own error;
    ``texts``: descriptions that differ from :data:`_ERROR_TEXT` on this route."""
    prefix = "The generation failed, or: " if failed else ""
    texts = {**_ERROR_TEXT, **(texts or {})}
    return {code: {"model": ErrorBody, "description": (prefix if code in (422, 500, 503) else "") + texts[code]}
            for code in codes}


_PREFER = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
           "description": "`wait=N` (RFC 7240, N ≤ 60 s): hold the request until the job ends (then 200 with the "
                          "result) or N s pass (then 202). Answers carry `Preference-Applied`."}


def _post_doc(extra: dict) -> dict:
    """A job-creating POST's ``openapi_extra`` plus its ``Idempotency-Key`` and ``Prefer`` headers."""
    return {**extra, "parameters": [*extra.get("parameters", []), IDEMPOTENCY_KEY_PARAMETER, _PREFER]}


def _allowed_methods(api: FastAPI, request: Request) -> list[str]:
    """The methods served at the request's path (for ``Allow``), sorted. Routes with a literal path win over
    templates that also match it (``/v1/generation/text-to-3d`` is the POST route, not a generation id)."""
    literal: set[str] = set()
    templated: set[str] = set()
    for route in api.router.routes:
        methods = getattr(route, "methods", None)
        if methods and route.matches(request.scope)[0] != Match.NONE:
            (templated if "{" in getattr(route, "path", "") else literal).update(methods)
    return sorted(literal or templated)
