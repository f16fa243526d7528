"""The job routes: submit a generation, poll it, download its result or one artifact, cancel it.

- ``POST /v1/generation/image-to-3d`` | ``text-to-3d`` | ``multiview`` → ``202 {"id"}``; multipart (``image`` file
  + form fields) or JSON (``image`` base64) with :class:`~lift3d.params.GenerationParams`' fields.
- ``POST /v1/generation/views-to-3d`` → ``202 {"id"}``; multipart: ``views`` (ZIP of ``transforms.json`` + images)
  + ``seed`` and :class:`~lift3d.service.jobs.uploads.ReconstructParams`' fields.
- The four POSTs honour ``Prefer: wait=N`` (RFC 7240): held until the job ends (then 200 with the result) or N s
  pass (then the 202).
- ``GET /v1/generation/{id}`` → ``202`` status while queued/running; ``200`` GLB (``model/gltf-binary``) or ZIP of
  views, or with ``Accept: application/json`` a :class:`~lift3d.service.schemas.GenerationResult`;
  ``?format=usdz`` (``glb``, ``usdz``, ``obj``, ``stl``, ``ply``, ``3mf``; omitted: the job's ``output_format``) the
  3D result in that format (:mod:`lift3d.service.jobs.downloads`, docs/formats.md).
- ``GET /v1/generation/{id}/artifacts/{name}`` → one artifact of a succeeded generation (``name`` as listed in the
  result's ``artifacts``, e.g. ``views/000_az000_el0.png``), with its media type.
- ``DELETE /v1/generation/{id}`` → ``202`` while a running job stops; ``200`` with the envelope
  ``generation_canceled`` when it had not started; 409 once finished.

Each route parses (:mod:`lift3d.service.api.bodies`), calls one :class:`~lift3d.service.jobs.generation
.GenerationService` method in a worker thread and shapes the answer; errors are raised and answered by the app's
handler (:mod:`lift3d.service.api.errors`). The request bodies are documented per app, with its upload limits, so
:func:`router` builds the router.

Examples:
    >>> api.include_router(router(service.limits, service.views_limits))
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from lift3d.errors import Lift3DError
from lift3d.io.images import ImageLimits
from lift3d.io.formats import FORMATS
from lift3d.io.media_types import ARTIFACT_MEDIA_TYPES, GLB, ZIP
from lift3d.params import OutputFormat
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.bodies import parse_generation, parse_views
from lift3d.service.api.deps import Caller, Config, Generations, Limits
from lift3d.service.api.errors import error_response
from lift3d.service.api.negotiation import wants_json
from lift3d.service.api.openapi import BINARY, body_doc, error_responses, post_doc, views_body_doc
from lift3d.service.api.routes.events import apply_prefer_wait
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.generation import GenerationService, visible_to
from lift3d.service.jobs.downloads import result_download
from lift3d.service.jobs.uploads import ViewsZipLimits
from lift3d.service.schemas import (ErrorBody, GenerationAccepted, GenerationCanceled, GenerationKind,
                                    GenerationResult, GenerationStatus)

__all__ = ["router"]


# ------------------------------------------------------------------------------------------------ submit
async def _accepted(request: Request, service: GenerationService, job_id: str, caller: Principal,
                    config: ServiceConfig) -> Response:
    """202 with ``Location``; with ``Prefer: wait=N`` (RFC 7240) held until the job ends or N s pass."""
    accepted = JSONResponse(GenerationAccepted(id=job_id).model_dump(), status_code=202,
                            headers={"Location": f"/v1/generation/{job_id}"})

    def result() -> Response:  # the job ended: what GET with Accept: application/json answers
        try:
            return _status_response(service.status(job_id, caller=caller))
        except Lift3DError as exc:
            return error_response(exc)

    return await apply_prefer_wait(request, accepted, job_id=job_id,
                                   get_record=lambda j: service.jobs.get(j, visible_to(caller)),
                                   result=result, poll_interval_s=config.events_poll_interval_s)


async def _submit(request: Request, kind: GenerationKind, caller: Principal, service: GenerationService,
                  config: ServiceConfig, limits: ImageLimits) -> Response:
    await asyncio.to_thread(service.check_funds, caller)  # a key with nothing left: 402 before the body is read
    parsed, image = await parse_generation(request, kind, limits)
    accepted = await asyncio.to_thread(service.submit, parsed, image, caller)
    return await _accepted(request, service, accepted.id, caller, config)


async def image_to_3d(request: Request, caller: Caller, service: Generations, config: Config,
                      limits: Limits) -> Response:
    return await _submit(request, "image-to-3d", caller, service, config, limits)


async def text_to_3d(request: Request, caller: Caller, service: Generations, config: Config,
                     limits: Limits) -> Response:
    return await _submit(request, "text-to-3d", caller, service, config, limits)


async def multiview(request: Request, caller: Caller, service: Generations, config: Config,
                    limits: Limits) -> Response:
    return await _submit(request, "multiview", caller, service, config, limits)


async def views_to_3d(request: Request, caller: Caller, service: Generations, config: Config) -> Response:
    await asyncio.to_thread(service.check_funds, caller)  # a key with nothing left: 402 before the upload is read
    views, params, options, webhook_url = await parse_views(request, service.views_limits.max_bytes)
    try:  # views: the spooled upload file
        accepted = await asyncio.to_thread(service.submit_views, views, params, options, caller, webhook_url)
    finally:
        views.close()
    return await _accepted(request, service, accepted.id, caller, config)


# ------------------------------------------------------------------------------------------------ read, cancel
DownloadFormat = Annotated[OutputFormat | None, Query(
    alias="format", description="The result in this format (docs/formats.md): `glb` as written, or converted on "
    "the first download and kept: `usdz`, `obj` (ZIP of OBJ + MTL + PNG), `stl`, `ply`, `3mf`. Omitted: the job's "
    "`output_format`. With a format the file is answered whatever `Accept` says.")]


def _status_response(body: GenerationStatus | GenerationResult) -> JSONResponse:
    return JSONResponse(body.model_dump(), status_code=200 if isinstance(body, GenerationResult) else 202)


async def get_generation(id: str, request: Request, caller: Caller, service: Generations,
                         output_format: DownloadFormat = None) -> Response:
    if output_format is not None or not wants_json(request.headers.get("accept")):
        found = await asyncio.to_thread(result_download, service, id, output_format, caller)
        if found is not None:
            return Response(found.data, media_type=found.media_type,
                            headers={"Content-Disposition": f'attachment; filename="{found.filename}"'})
    polled = service.poll(id, caller)  # queued or running, from a local database: here, without a thread hop
    if polled is not None:
        return _status_response(polled)
    return _status_response(await asyncio.to_thread(service.status, id, True, caller))


async def get_artifact(id: str, name: str, caller: Caller, service: Generations) -> Response:
    data, content_type = await asyncio.to_thread(service.artifact, id, name, caller)
    return Response(data, media_type=content_type, headers={"X-Content-Type-Options": "nosniff"})


async def cancel_generation(id: str, caller: Caller, service: Generations) -> Response:
    try:
        stopping = await asyncio.to_thread(service.cancel, id, caller)
    except GenerationCanceled as exc:  # it had not started: canceled now, which is this request's success
        return error_response(exc, status_code=200)
    return JSONResponse(stopping.model_dump(), status_code=202)


# ------------------------------------------------------------------------------------------------ the router
_LOCATION = {"Location": {"description": "Where to poll: `/v1/generation/{id}`.", "schema": {"type": "string"}}}
_SUBMIT_RESPONSES = {
    202: {"model": GenerationAccepted, "headers": _LOCATION, "description": "Accepted; poll Location."},
    200: {"model": GenerationResult, "description": "With `Prefer: wait=N`: the job ended within N s "
          "(the body `GET /v1/generation/{id}` gives with `Accept: application/json`)."},
    **error_responses(400, 402, 409, 413, 415, 422, 429, 500, 503,
                      texts={409: "The first request with this `Idempotency-Key` is still being accepted.",
                             503: "Queue, database or deployments unavailable, or too many queued jobs "
                                  "(`overloaded`, with `Retry-After`)."})}
_GET_RESPONSES = {
    200: {"model": GenerationResult, "description": "The GLB or ZIP, or the `format` asked for; JSON with `Accept: "
          "application/json` and no `format`.",
          "content": {GLB: BINARY, ZIP: BINARY, **{spec.media_type: BINARY for spec in FORMATS.values()}}},
    202: {"model": GenerationStatus, "description": "Queued or running."},
    **error_responses(404, 410, 422, 500, 503, failed=True)}
_ARTIFACT_RESPONSES = {200: {"description": "The artifact's bytes, with its media type.",
                             "content": {media_type: BINARY for media_type in ARTIFACT_MEDIA_TYPES}},
                       **error_responses(404, 500)}
_CANCEL_RESPONSES = {
    200: {"model": ErrorBody, "description": "Canceled at once (it had not started): `generation_canceled`."},
    202: {"model": GenerationStatus, "description": "Running; its worker stops it soon."},
    **error_responses(404, 409, 500)}


def router(limits: ImageLimits = ImageLimits(), views_limits: ViewsZipLimits = ViewsZipLimits()) -> APIRouter:
    """The job routes, their bodies documented with ``limits`` (the input image) and ``views_limits`` (the views
    ZIP): pass the limits the routes enforce, the app's :data:`~lift3d.service.api.deps.Limits` and the service's
    ``views_limits``."""
    jobs = APIRouter()
    for path, endpoint, kind, summary in (
            ("image-to-3d", image_to_3d, "image-to-3d", "Image → GLB (or views with return_3d=false)"),
            ("text-to-3d", text_to_3d, "text-to-3d", "Prompt → SDXL image → GLB"),
            ("multiview", multiview, "multiview", "Image or prompt → ZIP of novel views")):
        jobs.add_api_route(f"/v1/generation/{path}", endpoint, methods=["POST"], status_code=202,
                           responses=_SUBMIT_RESPONSES, openapi_extra=post_doc(body_doc(kind, limits)),
                           summary=summary)
    jobs.add_api_route("/v1/generation/views-to-3d", views_to_3d, methods=["POST"], status_code=202,
                       responses=_SUBMIT_RESPONSES, openapi_extra=post_doc(views_body_doc(views_limits.max_bytes)),
                       summary="Posed views (ZIP with transforms.json) → NeRF fit → GLB")
    jobs.add_api_route("/v1/generation/{id}", get_generation, methods=["GET"], responses=_GET_RESPONSES,
                       summary="Status while running; the result when done")
    jobs.add_api_route("/v1/generation/{id}/artifacts/{name:path}", get_artifact, methods=["GET"],
                       responses=_ARTIFACT_RESPONSES, summary="One artifact of a succeeded generation")
    jobs.add_api_route("/v1/generation/{id}", cancel_generation, methods=["DELETE"], responses=_CANCEL_RESPONSES,
                       summary="Cancel a generation")
    return jobs
