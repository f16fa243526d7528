"""Cog's HTTP prediction API over lift3d's jobs, so code written for the Cog wrapper this recipe comes from runs
against lift3d unchanged (https://cog.run/http).

- ``POST /predictions`` with ``{"input": {...}, "id"?, "webhook"?, "webhook_events_filter"?}``: synchronous by
  default — the answer (``200``) comes when the job ends, with ``output`` — or, with ``Prefer: respond-async``,
  ``202`` at once with ``status: starting`` (the result then arrives by webhook). A synchronous request still
  running after :data:`SYNC_WAIT_S` seconds is answered ``202`` with its state.
- ``PUT /predictions/{id}``: the same, idempotent on the caller's ``id`` (the path's; an ``id`` in the body is
  ignored, as Cog does): a second PUT with an id already used answers that prediction's state (waiting for it when
  synchronous) and starts nothing; its body is still checked first (an invalid one answers 422, as Cog's). The id is
  bound to its job by a row of the ``Idempotency-Key`` table (:class:`~lift3d.service.api.idempotency
  .IdempotencyStore`, kept ``idempotency_ttl_s``): concurrent PUTs with one id start one job; a PUT that finds the
  id still being accepted waits up to :data:`PUT_WAIT_S` seconds, then answers 409.
- ``POST /predictions/{id}/cancel`` → ``200 {}``; ``404`` for an unknown id.
- ``GET /health-check`` → ``{"status": "READY" | "UNHEALTHY", "setup": {...}}`` (public, as Cog's).

Inputs are the Cog wrapper's (``image``, ``prompt``, ``num_views``, ``guidance_scale``, ``num_inference_steps``,
``num_multiview_steps``, ``num_3d_max_steps``, ``remove_background``, ``return_3d``) plus every other
:class:`~lift3d.params.GenerationParams` field; ``image`` a data URI or an http(s) URL (the webhook URL policy). An
``image`` makes an ``image-to-3d`` job, a ``prompt`` alone a ``text-to-3d`` job. ``output`` is what Cog returns
without an upload URL: files as ``data:`` URIs — the GLB (one string) or the novel views (a list). Cog's
``output_file_prefix`` (upload outputs to a URL) is refused. The ``/predictions`` paths need an API key like
``/v1/`` (same keys, credits and job limits); the caller's ids are its own (another key's id is another prediction).

Errors are Cog's (FastAPI's) ``{"detail": …}``: a list of ``{"loc", "msg", "type"}`` for invalid inputs (422),
else a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lift3d.errors import InvalidInputError
from lift3d.io.images import ImageLimits
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.bodies import FORM_OVERHEAD_BYTES, parse_json_object, read_body
from lift3d.service.api.compat.common import Caller, Config, Generations, Limits, error_parts, get_services
from lift3d.service.api.compat.docs import CogError, CogHealth, CogPredictionBody, Prediction, cog_body_doc
from lift3d.service.api.compat.predictions import (data_uri, generation_request, output_names, prediction_body,
                                                   wait_until_done, webhook_filter)
from lift3d.service.api.idempotency import LOCAL_OWNER, Claim, IdempotencyKeyInUse, IdempotencyStore, StoredResponse
from lift3d.service.db.models import IdempotencyRecord
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.store import JobRecord
from lift3d.service.schemas import GenerationCanceled, GenerationFinished, GenerationNotFound

__all__ = ["PUT_WAIT_S", "SYNC_WAIT_S", "router"]

SYNC_WAIT_S = 3600.0
"""Longest a synchronous prediction request is held; then it is answered 202 with the running state."""
VERSION = "lift3d-v1"
PUT_WAIT_S = 10.0
"""Longest a PUT waits for a concurrent PUT of the same id to finish accepting its prediction (then 409)."""


# ------------------------------------------------------------------------------------------------ errors
def cog_error(exc: BaseException) -> JSONResponse:
    """Cog's error body for ``exc``: ``{"detail": [{"loc", "msg", "type"}]}`` for invalid inputs (422), else
    ``{"detail": message}``; ``Retry-After`` when the error has one. Raises ``exc`` when it is not an input or
    service error."""
    parts = error_parts(exc)
    headers = {"Retry-After": str(parts.retry_after_s)} if parts.retry_after_s is not None else None
    if parts.status == 422:
        detail: Any = [{"loc": ["body", *_field_of(m)], "msg": m, "type": parts.name} for m in parts.messages]
    else:
        detail = parts.message
    return JSONResponse({"detail": detail}, status_code=parts.status, headers=headers)


def _field_of(message: str) -> list[str]:
    field, sep, _ = message.partition(": ")
    return ["input", *field.removeprefix("input.").split(".")] if sep and " " not in field else ["input"]


# ------------------------------------------------------------------------------------------------ ids
class _PredictionIds:
    """The caller's prediction ids (per API key) bound to jobs in the ``idempotency_records`` table: one row per id,
    claimed by the request that starts its job (the table's primary key makes the claim exclusive)."""

    def __init__(self, service: GenerationService, caller: Principal, prediction_id: str,
                 ttl_s: float = 86400.0) -> None:
        self.store, self.clock = IdempotencyStore(service.jobs.database, ttl_s), service.jobs.clock
        self.owner = caller.key_id or LOCAL_OWNER
        self.key = "cog-prediction:" + hashlib.sha256(prediction_id.encode("utf-8")).hexdigest()
        self.claim: Claim | None = None

    async def job(self) -> str | None:
        """The id's job, or None after claiming the id for a new job (then :meth:`bind` or :meth:`release`).

        Raises:
            IdempotencyKeyInUse: another request has been accepting this id for :data:`PUT_WAIT_S` seconds.
        """
        deadline = self.clock() + PUT_WAIT_S
        while True:
            claim = await asyncio.to_thread(self.store.claim, self.owner, self.key, self.clock())
            if claim.token is not None:
                self.claim = claim
                return None
            if claim.state == "done" and claim.response is not None:
                return claim.response.body.decode("ascii")
            if self.clock() >= deadline:
                raise IdempotencyKeyInUse("this prediction id is still being created; retry shortly")
            await asyncio.sleep(0.05)

    def bound(self) -> str | None:
        """The id's job when one is bound (takes no claim; blocking)."""
        with self.store.database.read() as session:
            row = session.get(IdempotencyRecord, (self.owner, self.key))
        if row is None or row.state != "done" or row.expires_at <= self.clock():
            return None
        return row.response_body

    async def bind(self, job_id: str) -> None:
        await asyncio.to_thread(self.store.complete, self.owner, self.key, self.claim, "cog-prediction",
                                StoredResponse(status=202, headers={}, body=job_id.encode("ascii")))

    async def release(self) -> None:
        if self.claim is not None:
            await asyncio.to_thread(self.store.release, self.owner, self.key, self.claim)


# ------------------------------------------------------------------------------------------------ answers
def _output(service: GenerationService, caller: Principal, record: JobRecord) -> Any:
    """The finished job's output as Cog returns files without an upload URL: data URIs (blocking: reads them)."""
    names = output_names(record)
    if names is None:
        return None
    if isinstance(names, str):
        return data_uri(service.artifact(record.id, names, caller)[0], names)
    return [data_uri(service.artifact(record.id, name, caller)[0], name) for name in names]


def _answer(service: GenerationService, caller: Principal, record: JobRecord, prediction_id: str) -> JSONResponse:
    body = prediction_body(record, model=f"lift3d/{record.kind}", version=VERSION,
                           output=_output(service, caller, record) if record.terminal else None)
    body["id"] = prediction_id
    return JSONResponse(body, status_code=200 if record.terminal else 202)


def _respond_async(request: Request) -> bool:
    return any(part.split(";")[0].strip().lower() == "respond-async"
               for value in request.headers.getlist("prefer") for part in value.split(","))


# ------------------------------------------------------------------------------------------------ routes
async def _predict(request: Request, caller: Principal, service: GenerationService, poll_interval_s: float,
                   max_body: int, path_id: str | None, ttl_s: float) -> JSONResponse:
    try:
        fields = parse_json_object(await read_body(request, max_body, "the request body is too large"))
        if "output_file_prefix" in fields:
            raise InvalidInputError("output_file_prefix: not supported; outputs come back as data URIs")
        body = CogPredictionBody.model_validate(fields, strict=True)
        prediction_id = path_id or body.id
        ids = None if prediction_id is None else _PredictionIds(service, caller, prediction_id, ttl_s)
        job_id = None if ids is None else await ids.job()
        kind = "image-to-3d" if body.input.get("image") is not None else "text-to-3d"
        events = webhook_filter(body.webhook_events_filter)
        if job_id is not None:  # an id already used: a valid body answers that prediction (as Cog: body first)
            await generation_request(kind, body.input, service, webhook_url=body.webhook, fetch=False)
        else:
            try:
                generation, image = await generation_request(kind, body.input, service, webhook_url=body.webhook)
                accepted = await asyncio.to_thread(service.submit, generation, image, caller, webhook_events=events)
            except BaseException:
                if ids is not None:
                    await ids.release()  # nothing started: the id is free again
                raise
            job_id = accepted.id
            if ids is not None:
                await ids.bind(job_id)
    except Exception as exc:  # noqa: BLE001 - input and service errors in Cog's shape; others re-raised
        return cog_error(exc)
    wait_s = 0.0 if _respond_async(request) else SYNC_WAIT_S
    record = await wait_until_done(lambda: service.record(job_id, caller), wait_s, poll_interval_s,
                                   request.is_disconnected)
    try:
        return await asyncio.to_thread(_answer, service, caller, record, prediction_id or job_id)
    except Exception as exc:  # noqa: BLE001 - e.g. the result expired meanwhile
        return cog_error(exc)


async def create_prediction(request: Request, caller: Caller, service: Generations, config: Config,
                            limits: Limits) -> JSONResponse:
    return await _predict(request, caller, service, config.events_poll_interval_s,
                          limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES, None, config.idempotency_ttl_s)


async def put_prediction(id: str, request: Request, caller: Caller, service: Generations, config: Config,
                         limits: Limits) -> JSONResponse:
    return await _predict(request, caller, service, config.events_poll_interval_s,
                          limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES, id, config.idempotency_ttl_s)


async def cancel_prediction(id: str, caller: Caller, service: Generations) -> JSONResponse:
    try:
        job_id = await asyncio.to_thread(_PredictionIds(service, caller, id).bound) or id
        try:
            await asyncio.to_thread(service.cancel, job_id, caller)
        except (GenerationCanceled, GenerationFinished):
            pass
    except GenerationNotFound:
        return JSONResponse({"detail": "Not found"}, status_code=404)
    except Exception as exc:  # noqa: BLE001
        return cog_error(exc)
    return JSONResponse({})


async def health_check(request: Request) -> JSONResponse:
    health = get_services(request).health
    ok, details = (True, {}) if health is None else await health()
    return JSONResponse({"status": "READY" if ok else "UNHEALTHY",
                         "setup": {"status": "succeeded" if ok else "failed", "logs": json.dumps(details)}})


_ERRORS = {code: {"model": CogError, "description": text} for code, text in {
    400: "Unreadable body.", 402: "The key's balance is below the job's estimated price.",
    404: "No such prediction (ids are per key).", 413: "Body or image over its size limit.",
    422: "Invalid input: `detail` lists `{loc, msg, type}` per field (the v1 API's own checks).",
    429: "Over the key's requests per minute or jobs at once (`Retry-After`).", 500: "Internal error.",
    503: "Queue, database or deployments unavailable."}.items()}
_PREFER = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
           "description": "`respond-async`: answer 202 at once; otherwise the request is held until the job ends."}


def router(limits: ImageLimits = ImageLimits()) -> APIRouter:
    """The Cog-compatible routes (see the module docstring)."""
    cog = APIRouter(tags=["Cog-compatible"])
    answers = {200: {"model": Prediction, "description": "The finished prediction (synchronous)."},
               202: {"model": Prediction, "description": "Accepted (`respond-async`), or still running after "
                     f"{SYNC_WAIT_S:.0f} s."},
               **{c: _ERRORS[c] for c in (400, 402, 413, 422, 429, 500, 503)}}
    create_doc = {**cog_body_doc(), "parameters": [_PREFER]}
    cog.add_api_route("/predictions", create_prediction, methods=["POST"], responses=answers,
                      openapi_extra=create_doc, response_model=None,
                      summary="Run a prediction (Cog; synchronous unless Prefer: respond-async)")
    cog.add_api_route("/predictions/{id}", put_prediction, methods=["PUT"], responses=answers,
                      openapi_extra=create_doc, response_model=None,
                      summary="Run a prediction with the caller's id, idempotently (Cog)")
    cog.add_api_route("/predictions/{id}/cancel", cancel_prediction, methods=["POST"],
                      responses={200: {"description": "Canceled (or it had ended).",
                                       "content": {"application/json": {"schema": {"type": "object"}}}},
                                 **{c: _ERRORS[c] for c in (404, 500)}},
                      summary="Cancel a prediction (Cog)")
    cog.add_api_route("/health-check", health_check, methods=["GET"], response_model=CogHealth,
                      summary="Readiness (Cog)")
    return cog
