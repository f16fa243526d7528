"""The FastAPI app of the v1 generation API (OpenAPI at ``/docs``), over a :class:`GenerationService`.

Routes are thin: parse (:mod:`lift3d.service.http`), call one service method in a worker thread, shape the
response. Nothing long runs inside a request, so a client disconnect cancels nothing.

- ``POST /v1/generation/image-to-3d`` | ``text-to-3d`` | ``multiview`` → ``202 {"id"}``; multipart (``image`` file
  + form fields) or JSON (``image`` base64) with :class:`~lift3d.params.GenerationParams`' fields.
- ``POST /v1/generation/views-to-3d`` → ``202 {"id"}``; multipart: ``views`` (ZIP of ``transforms.json`` + images)
  + ``seed`` and :class:`~lift3d.service.uploads.ReconstructParams`' fields.
- ``GET /v1/generation/{id}`` → ``202`` status while queued/running; ``200`` GLB (``model/gltf-binary``) or ZIP of
  views, or with ``Accept: application/json`` a :class:`~lift3d.service.schemas.GenerationResult`.
- ``DELETE /v1/generation/{id}`` → cancel. ``GET /healthz`` → 200 when every deployment is healthy, else 503.

Examples:
    >>> client = TestClient(create_api(GenerationService(jobs, queue.append), ServiceMetrics()))
    >>> client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}).status_code
    202
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Callable, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lift3d.errors import Lift3DError
from lift3d.io.images import ImageLimits
from lift3d.service.generation import GenerationService
from lift3d.service.http import BODY_DOC, VIEWS_BODY_DOC, error_response, parse_generation, parse_views, wants_json
from lift3d.service.schemas import ErrorBody, GenerationAccepted, GenerationKind, GenerationResult, GenerationStatus

logger = logging.getLogger(__name__)

__all__ = ["RequestMetrics", "create_api"]

_EXTENSIONS = {"model/gltf-binary": "glb", "application/zip": "zip"}


class RequestMetrics(Protocol):
    """Counts requests (Prometheus in-process, or Ray Serve metrics in the graph)."""

    def count_request(self, route: str, method: str, status: int) -> None: ...


def create_api(service: GenerationService, metrics: RequestMetrics,
               health: Callable[[], Any] | None = None, limits: ImageLimits = ImageLimits()) -> FastAPI:
    """The FastAPI app over ``service``. ``health`` (async) returns ``(ok, details)``."""
    api = FastAPI(title="lift3d", version="1.0",
                  description="Image or prompt → novel views → NeRF with SDS → GLB. Submit, poll, download.")

    @api.middleware("http")
    async def count_and_contain(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - logged here; the client gets the envelope, never a traceback
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
            response = error_response("internal_error", ["internal error; the server logged the details"])
        route = request.scope.get("route")
        metrics.count_request(getattr(route, "path", "unmatched"), request.method, response.status_code)
        return response

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        name = "generation_not_found" if exc.status_code == 404 else "bad_request"
        return JSONResponse(ErrorBody(id=uuid.uuid4().hex, name=name, errors=[str(exc.detail)]).model_dump(),
                            status_code=exc.status_code)

    async def submit(request: Request, kind: GenerationKind) -> Response:
        try:
            parsed, image = await parse_generation(request, kind, limits)
            accepted = await asyncio.to_thread(service.submit, parsed, image)
        except Lift3DError as exc:
            return error_response(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return JSONResponse(accepted.model_dump(), status_code=202,
                            headers={"Location": f"/v1/generation/{accepted.id}"})

    responses = {202: {"model": GenerationAccepted}, 400: {"model": ErrorBody}, 413: {"model": ErrorBody},
                 422: {"model": ErrorBody}, 500: {"model": ErrorBody}}

    @api.post("/v1/generation/image-to-3d", status_code=202, responses=responses, openapi_extra=BODY_DOC,
              summary="Image → GLB (or views with return_3d=false)")
    async def image_to_3d(request: Request) -> Response:
        return await submit(request, "image-to-3d")

    @api.post("/v1/generation/text-to-3d", status_code=202, responses=responses, openapi_extra=BODY_DOC,
              summary="Prompt → SDXL image → GLB")
    async def text_to_3d(request: Request) -> Response:
        return await submit(request, "text-to-3d")

    @api.post("/v1/generation/multiview", status_code=202, responses=responses, openapi_extra=BODY_DOC,
              summary="Image or prompt → ZIP of novel views")
    async def multiview(request: Request) -> Response:
        return await submit(request, "multiview")

    @api.post("/v1/generation/views-to-3d", status_code=202, responses=responses, openapi_extra=VIEWS_BODY_DOC,
              summary="Posed views (ZIP with transforms.json) → NeRF fit → GLB")
    async def views_to_3d(request: Request) -> Response:
        try:
            views, params, options = await parse_views(request, service.views_limits.max_bytes)
            accepted = await asyncio.to_thread(service.submit_views, views, params, options)
        except Lift3DError as exc:
            return error_response(exc.name, getattr(exc, "errors", None) or [str(exc)])
        return JSONResponse(accepted.model_dump(), status_code=202,
                            headers={"Location": f"/v1/generation/{accepted.id}"})

    @api.get("/v1/generation/{id}", summary="Status while running; the result when done",
             responses={200: {"model": GenerationResult,
                              "content": {"model/gltf-binary": {}, "application/zip": {}}},
                        202: {"model": GenerationStatus}, 404: {"model": ErrorBody}, 410: {"model": ErrorBody},
                        422: {"model": ErrorBody}, 500: {"model": ErrorBody}})
    async def get_generation(id: str, request: Request) -> Response:
        as_json = wants_json(request.headers.get("accept"))
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
        return error_response("service_unavailable", [f"{name}: {status}" for name, status in details.items()
                                              if status != "HEALTHY"] or ["not ready"])

    return api
