"""Replicate's HTTP API over lift3d's jobs, so the unmodified ``replicate`` client (``Client(base_url=…)`` or
``REPLICATE_BASE_URL``) runs lift3d's models.

- ``POST /v1/models/lift3d/{name}/predictions`` (``image-to-3d``, ``text-to-3d``, ``multiview``, ``text-to-image``)
  with ``{"input": {...}, "webhook", "webhook_events_filter"}`` → ``201`` prediction; ``Prefer: wait`` (60 s) or
  ``wait=N`` holds the answer until the job ends or N s pass (then ``status: starting``, as Replicate answers, so its
  client polls).
- ``GET /v1/predictions/{id}`` → the prediction; ``POST /v1/predictions/{id}/cancel`` → it, canceling.
- ``POST /v1/files`` (multipart ``content``): the client uploads a file input here before it creates the
  prediction; the answer's ``urls.get`` is the file as a ``data:`` URI, which the prediction's input then carries
  (nothing is stored, so nothing outlives the request; ``GET /v1/files/{id}`` is not served).

A prediction is the job: ``id`` is the job id, ``status`` maps one to one (:mod:`.predictions`), ``logs`` are its
progress lines, ``metrics.predict_time`` its run time, ``output`` the GLB's URL (or the views' URLs), signed and
short-lived (:func:`~lift3d.service.api.compat.common.download_url`) so the client's ``FileOutput`` downloads them
without forwarding the key. ``urls.stream`` is lift3d's event stream (``GET /v1/generation/{id}/events``; its own
event names, not Replicate's ``output``/``logs``/``done``). Webhooks are lift3d's (Standard Webhooks, signed with the
key's secret, lift3d's event payloads), ``webhook_events_filter`` choosing which: ``start`` → ``generation.started``,
``output``/``logs`` → ``generation.progress``, ``completed`` → ``generation.completed``.

``text-to-image`` is synchronous in lift3d (no job): its prediction answers at once, ``succeeded``, with the images
as ``data:`` URIs, and is not stored (``GET`` answers 404).

Errors are Replicate's problem details, ``{"title", "detail", "status"}`` (what its client's ``ReplicateError``
reads), from the same exceptions the v1 API answers with its envelope.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lift3d.errors import InvalidInputError
from lift3d.io.images import ImageLimits
from lift3d.params.images import MAX_IMAGE_SIDE, MAX_SAMPLES, MAX_SEED, TextToImageParams
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.bodies import FORM_OVERHEAD_BYTES, field_types, form_fields, json_values, media_type, \
    parse_json_object, read_body, read_form
from lift3d.service.api.compat.common import (Caller, Config, Generations, Images, Limits, absolute_url,
                                              download_url, error_parts)
from lift3d.service.api.compat.docs import (Prediction, PredictionBody, Problem, ReplicateFile, files_body_doc,
                                            replicate_body_doc)
from lift3d.service.api.compat.predictions import (data_uri, generation_request, iso_time, output_names,
                                                   prediction_body, wait_until_done, webhook_filter)
from lift3d.service.jobs.events import MAX_WAIT_S, parse_prefer_wait
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.store import JobRecord
from lift3d.service.schemas import GenerationCanceled, GenerationFinished, GenerationKind, ServiceUnavailableError

__all__ = ["MODELS", "VERSION", "router"]

OWNER = "lift3d"
MODELS: dict[str, GenerationKind | None] = {"image-to-3d": "image-to-3d", "text-to-3d": "text-to-3d",
                                            "multiview": "multiview", "text-to-image": None}
"""Model names under ``lift3d/`` → the job kind (None: the synchronous text-to-image stage)."""
VERSION = "lift3d-v1"
"""The ``version`` of every prediction (lift3d serves one version of each model)."""
_ANSWER_MARGIN_S = 2.0
"""Seconds of a ``Prefer: wait`` kept for answering (Replicate's client gives up 0.5 s after the wait)."""
_T2I_INPUTS = {"prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "seed", "width", "height",
               "num_outputs"}


# ------------------------------------------------------------------------------------------------ errors
def problem(exc: BaseException) -> JSONResponse:
    """Replicate's error body for ``exc`` (problem details: ``title``, ``detail``, ``status``), with
    ``Retry-After`` when the error has one. Raises ``exc`` when it is not an input or service error."""
    parts = error_parts(exc)
    headers = {"Retry-After": str(parts.retry_after_s)} if parts.retry_after_s is not None else None
    return JSONResponse({"title": parts.name.replace("_", " "), "detail": parts.message, "status": parts.status},
                        status_code=parts.status, headers=headers)


def _model(owner: str, name: str) -> GenerationKind | None:
    if owner != OWNER or name not in MODELS:
        raise _UnknownModel(f"model {owner}/{name} does not exist; this server runs "
                            + ", ".join(f"{OWNER}/{n}" for n in MODELS))
    return MODELS[name]


class _UnknownModel(InvalidInputError):
    name = "unknown_model"
    status_code = 404


def _wait_seconds(request: Request) -> int | None:
    """``Prefer: wait`` (bare: :data:`MAX_WAIT_S`) or ``wait=N`` seconds; None without it."""
    values = request.headers.getlist("prefer")
    if any(part.split(";")[0].strip().lower() == "wait" for value in values for part in value.split(",")):
        return MAX_WAIT_S
    return parse_prefer_wait(values)


# ------------------------------------------------------------------------------------------------ bodies
def _urls(request: Request, job_id: str) -> dict[str, str]:
    return {"get": absolute_url(request, f"/v1/predictions/{job_id}"),
            "cancel": absolute_url(request, f"/v1/predictions/{job_id}/cancel"),
            "stream": absolute_url(request, f"/v1/generation/{job_id}/events")}


def _model_of(record: JobRecord) -> str:
    return f"{OWNER}/{record.kind}"


def _render(request: Request, service: GenerationService, caller: Principal, record: JobRecord,
            status: str | None = None) -> dict[str, Any]:
    """The prediction of ``record`` (blocking: signs the output URLs). ``status`` overrides a running job's."""
    names = output_names(record)
    if isinstance(names, str):
        output: Any = download_url(request, service, caller, record.id, names)
    elif names is not None:
        output = [download_url(request, service, caller, record.id, name) for name in names]
    else:
        output = None
    body = prediction_body(record, model=_model_of(record), version=VERSION, output=output,
                           urls=_urls(request, record.id))
    if status is not None and not record.terminal:
        body["status"] = status
    return body


# ------------------------------------------------------------------------------------------------ routes
async def create_prediction(owner: str, name: str, request: Request, caller: Caller, service: Generations,
                            images: Images, config: Config, limits: Limits) -> JSONResponse:
    try:
        kind = _model(owner, name)
        body = PredictionBody.model_validate(parse_json_object(await read_body(
            request, limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES, "the request body is too large")), strict=True)
        if kind is None:
            return await _text_to_image(request, body.input, caller, images)
        events = webhook_filter(body.webhook_events_filter)
        generation, image = await generation_request(kind, body.input, service, webhook_url=body.webhook)
        accepted = await asyncio.to_thread(service.submit, generation, image, caller, webhook_events=events)
    except Exception as exc:  # noqa: BLE001 - input and service errors in Replicate's shape; others re-raised
        return problem(exc)
    seconds = _wait_seconds(request)
    # answer within the wait: the client reads for `seconds` + 0.5 s, and rendering the answer takes a moment
    budget = max(0.0, (seconds or 0) - _ANSWER_MARGIN_S)
    record = await wait_until_done(lambda: service.record(accepted.id, caller), budget,
                                   config.events_poll_interval_s, request.is_disconnected)
    # Replicate's client treats any status but "starting" in a Prefer: wait answer as final: report a job that
    # has not ended as starting (GET /v1/predictions/{id} tells processing from starting).
    body = await asyncio.to_thread(_render, request, service, caller, record, "starting")
    headers = {"Location": body["urls"]["get"]}
    if seconds is not None:
        headers["Preference-Applied"] = f"wait={seconds}"
    return JSONResponse(body, status_code=201, headers=headers)


async def _text_to_image(request: Request, values: Any, caller: Principal, images: Any) -> JSONResponse:
    if not isinstance(values, dict):
        raise InvalidInputError("input: must be an object of the model's inputs")
    nulls = sorted(name for name, value in values.items() if value is None)
    if nulls:
        raise InvalidInputError(f"input: {', '.join(nulls)} must not be null (omit an input to take its default)")
    unknown = sorted(set(values) - _T2I_INPUTS)
    if unknown:
        raise InvalidInputError(f"input: {', '.join(unknown)} not inputs of {OWNER}/text-to-image "
                                f"(it takes {', '.join(sorted(_T2I_INPUTS))})")
    if images is None:
        raise ServiceUnavailableError("text-to-image is not configured on this server")
    if not isinstance(values.get("prompt"), str) or not re.search(r"\S", values["prompt"]):
        raise InvalidInputError("prompt: required, a string with a non-space character")
    values = json_values(values, _T2I_TYPES)  # an integral number (8.0) is an integer, as in JSON Schema
    prompts = [{"text": values["prompt"], "weight": 1.0}]
    if values.get("negative_prompt") is not None and not isinstance(values["negative_prompt"], str):
        raise InvalidInputError("negative_prompt: a string")
    if values.get("negative_prompt"):
        prompts.append({"text": values["negative_prompt"], "weight": -1.0})
    mapped = {"text_prompts": prompts, "cfg_scale": values.get("guidance_scale"),
              "steps": values.get("num_inference_steps"), "seed": values.get("seed"), "width": values.get("width"),
              "height": values.get("height"), "samples": values.get("num_outputs")}
    from pydantic import ValidationError

    from lift3d.service.api.bodies import invalid

    try:
        params = TextToImageParams.model_validate({k: v for k, v in mapped.items() if v is not None}, strict=True)
    except ValidationError as exc:
        raise invalid(exc) from None
    started = time.time()
    result = await asyncio.to_thread(images.text_to_image, params, caller=caller)
    finished = time.time()
    prediction_id = hashlib.sha256(result.request_id.encode()).hexdigest()[:32]
    body = {"id": prediction_id, "model": f"{OWNER}/text-to-image", "version": VERSION, "status": "succeeded",
            "input": values, "output": [data_uri(s.image.data, f"{i}.png") for i, s in enumerate(result.samples)],
            "logs": "".join(f"sample {i}: seed {s.seed}, {s.finish_reason}\n" for i, s in enumerate(result.samples)),
            "error": None, "created_at": iso_time(started), "started_at": iso_time(started),
            "completed_at": iso_time(finished), "metrics": {"predict_time": round(finished - started, 3)},
            "urls": {}}
    return JSONResponse(body, status_code=201)


async def get_prediction(id: str, request: Request, caller: Caller, service: Generations) -> JSONResponse:
    try:
        record = await asyncio.to_thread(service.record, id, caller)
    except Exception as exc:  # noqa: BLE001
        return problem(exc)
    return JSONResponse(await asyncio.to_thread(_render, request, service, caller, record))


async def cancel_prediction(id: str, request: Request, caller: Caller, service: Generations) -> JSONResponse:
    try:
        try:
            await asyncio.to_thread(service.cancel, id, caller)
        except (GenerationCanceled, GenerationFinished):  # canceled now, or it had ended: answer its state
            pass
        record = await asyncio.to_thread(service.record, id, caller)
    except Exception as exc:  # noqa: BLE001
        return problem(exc)
    return JSONResponse(await asyncio.to_thread(_render, request, service, caller, record))


async def create_file(request: Request, caller: Caller, limits: Limits) -> JSONResponse:
    try:
        if media_type(request) != "multipart/form-data":
            raise InvalidInputError("send multipart/form-data with the file in a `content` field")
        form = await read_form(request, limits.max_bytes + FORM_OVERHEAD_BYTES, "the file is too large",
                               max_files=1, max_fields=4)
        try:
            unknown = sorted(set(form.keys()) - {"content", "metadata"})
            if unknown:
                raise InvalidInputError(f"{', '.join(unknown)}: not fields of a file upload (content, metadata)")
            upload = form.get("content")
            filename = getattr(upload, "filename", None) or "file"
            content_type = getattr(upload, "content_type", None) or "application/octet-stream"
            _, data = await form_fields(form, "content", limits.max_bytes, "content")
        finally:
            await form.close()
        if data is None:
            raise InvalidInputError("content: required (the file)")
    except Exception as exc:  # noqa: BLE001
        return problem(exc)
    digest = hashlib.sha256(data).hexdigest()
    now = time.time()
    import base64

    return JSONResponse({
        "id": digest[:32], "name": filename, "content_type": content_type, "size": len(data), "etag": digest,
        "checksums": {"sha256": digest}, "metadata": {}, "created_at": iso_time(now), "expires_at": None,
        "urls": {"get": f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"},
    }, status_code=201)


_ERRORS = {code: {"model": Problem, "description": text} for code, text in {
    400: "Unreadable body.", 402: "The key's balance is below the job's estimated price.",
    404: "No such model, or no such prediction (another key's predictions do not exist for this one).",
    413: "Body or image over its size limit.",
    422: "Invalid input: the v1 API's own parameter checks, one message per field.",
    429: "Over the key's requests per minute or jobs at once (`Retry-After`).", 500: "Internal error.",
    503: "Queue, database or deployments unavailable."}.items()}
_T2I_SCHEMA = {"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": {
    "prompt": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": r"\S"},
    "negative_prompt": {"type": "string", "maxLength": 2000},
    "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50},
    "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 200},
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
    "width": {"type": "integer", "minimum": 64, "maximum": MAX_IMAGE_SIDE, "multipleOf": 64},
    "height": {"type": "integer", "minimum": 64, "maximum": MAX_IMAGE_SIDE, "multipleOf": 64},
    "num_outputs": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES}}}
_T2I_TYPES = field_types(_T2I_SCHEMA["properties"])


def router(limits: ImageLimits = ImageLimits()) -> APIRouter:
    """The Replicate-compatible routes (see the module docstring): one documented create route per model, an
    undocumented one answering 404 for any other model."""
    replicate = APIRouter(tags=["Replicate-compatible"])
    created = {201: {"model": Prediction, "description": "The prediction (with `Prefer: wait`, once it ended or the "
                     "wait ran out)."}}
    for name, kind in MODELS.items():
        replicate.add_api_route(f"/v1/models/{OWNER}/{name}/predictions", _for_model(name), methods=["POST"],
                                status_code=201, summary=f"Create a {OWNER}/{name} prediction (Replicate)",
                                openapi_extra=replicate_body_doc(kind, _T2I_SCHEMA), responses={**created, **{
                                    c: _ERRORS[c] for c in (400, 402, 413, 422, 429, 500, 503)}})
    replicate.add_api_route("/v1/models/{owner}/{name}/predictions", create_prediction, methods=["POST"],
                            include_in_schema=False)
    replicate.add_api_route("/v1/predictions/{id}", get_prediction, methods=["GET"], response_model=Prediction,
                            summary="Get a prediction (Replicate)", responses={c: _ERRORS[c] for c in (404, 500)})
    replicate.add_api_route("/v1/predictions/{id}/cancel", cancel_prediction, methods=["POST"],
                            response_model=Prediction, summary="Cancel a prediction (Replicate)",
                            responses={c: _ERRORS[c] for c in (404, 500)})
    replicate.add_api_route("/v1/files", create_file, methods=["POST"], status_code=201,
                            summary="Upload a file input (Replicate; answered as a data URI)",
                            openapi_extra=files_body_doc(limits.max_bytes),
                            responses={201: {"model": ReplicateFile, "description": "The file."},
                                       **{c: _ERRORS[c] for c in (400, 413, 422, 500)}})
    return replicate


def _for_model(name: str):
    """The create route of one model (its path names it)."""

    async def create(request: Request, caller: Caller, service: Generations, images: Images, config: Config,
                     limits: Limits) -> JSONResponse:
        return await create_prediction(OWNER, name, request, caller, service, images, config, limits)

    create.__name__ = f"create_{name.replace('-', '_')}_prediction"
    return create
