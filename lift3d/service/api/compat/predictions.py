"""Predictions as Cog and Replicate see them, over lift3d's jobs: the translation both adapters share.

A prediction *is* a lift3d job (same id, same record, same keys, credits and webhooks): :func:`generation_request`
turns a prediction's ``input`` (the Cog wrapper's names — ``image``, ``prompt``, ``num_views``, ``guidance_scale``,
``num_inference_steps``, ``num_multiview_steps``, ``num_3d_max_steps``, ``remove_background``, ``return_3d`` — and
every other :class:`~lift3d.params.GenerationParams` field, which already carries those names) into the
:class:`~lift3d.service.schemas.GenerationRequest` the v1 routes submit, so validation is the v1 API's; and
:func:`prediction_body` turns the job record back into a prediction.

States, one to one: ``queued`` → ``starting``, ``running`` → ``processing``, ``succeeded``, ``failed``,
``canceled``; an ``expired`` job (its result deleted after ``result_ttl_s``) reads as ``succeeded`` with no output,
as Replicate reports a prediction whose files it has removed.

File inputs (:func:`resolve_file`): a ``data:`` URI, or an ``http(s)`` URL fetched under the webhook URL policy
(:func:`lift3d.service.webhooks.urls.check_webhook_url`: public addresses only unless the service allows private
ones; no redirects; the connection goes to the address checked).

Examples:
    >>> request, image = await generation_request("image-to-3d", {"image": "data:image/png;base64,iVBO…",
    ...                                           "num_3d_max_steps": 20}, service)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime, timezone
from typing import Any, Callable

from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.io.media_types import media_type_of
from lift3d.service.api.bodies import field_types, json_values
from lift3d.service.api.compat.docs import FILE_PATTERN
from lift3d.service.api.openapi import param_properties
from lift3d.service.jobs.generation import GenerationService, WebhookPolicy
from lift3d.service.jobs.store import JobRecord
from lift3d.service.schemas import GenerationKind, GenerationRequest, decode_image
from lift3d.service.webhooks.urls import WebhookUrlError, check_webhook_url

__all__ = [
    "STATUS", "TERMINAL_STATUS", "WEBHOOK_EVENTS", "generation_request", "iso_time", "logs_of", "output_names",
    "prediction_body", "resolve_file", "wait_until_done",
]

STATUS: dict[str, str] = {"queued": "starting", "running": "processing", "succeeded": "succeeded",
                          "failed": "failed", "canceled": "canceled", "expired": "succeeded"}
"""A job's status → the prediction's."""
TERMINAL_STATUS = frozenset({"succeeded", "failed", "canceled"})
WEBHOOK_EVENTS: dict[str, str] = {"start": "generation.started", "output": "generation.progress",
                                  "logs": "generation.progress", "completed": "generation.completed"}
"""Replicate's ``webhook_events_filter`` names → lift3d's webhook event types."""

_TYPES = field_types(param_properties(GenerationRequest, nullable=True))
_VIEW = re.compile(r"^views/\d{3}_[A-Za-z0-9_.-]{1,64}\.png$")
_FETCH_TIMEOUT_S = 20.0


# ------------------------------------------------------------------------------------------------ input
async def generation_request(kind: GenerationKind, values: Any, service: GenerationService, *,
                             webhook_url: str | None = None, fetch: bool = True
                             ) -> tuple[GenerationRequest, bytes | None]:
    """The v1 request for a prediction's ``input`` object, and the image's bytes (None without one).

    ``image`` is a data URI or URL (:func:`resolve_file`); every other key must be a
    :class:`~lift3d.params.GenerationParams` field with its JSON type (as the v1 JSON body: ``8``, not ``"8"``).
    ``fetch`` False only checks the inputs (the image's form, not its bytes: no download) and returns no image
    (Cog's idempotent PUT of an id already used validates the body, then answers that prediction).

    Raises:
        InvalidInputError: ``input`` is not an object, an unknown field, a value out of range (one message per
            field), an unusable image URL. PayloadTooLargeError: the image is over the upload limit.
    """
    if not isinstance(values, dict):
        raise InvalidInputError("input: must be an object of the model's inputs")
    fields = dict(values)
    for reserved in ("kind", "webhook_url"):
        if reserved in fields:
            raise InvalidInputError(f"input.{reserved}: not an input of this model")
    image: bytes | None = None
    source = fields.pop("image", None)
    if source is not None:
        if not isinstance(source, str):
            raise InvalidInputError("input.image: a data URI or an http(s) URL")
        if fetch:
            image = await resolve_file(source, "input.image", service.limits.max_bytes, service.webhooks)
        else:
            check_file_form(source, "input.image", service.limits.max_bytes)
    from pydantic import ValidationError

    from lift3d.service.api.bodies import invalid

    try:
        request = GenerationRequest.model_validate(
            {**json_values(fields, _TYPES), "kind": kind, "webhook_url": webhook_url}, strict=True)
    except ValidationError as exc:
        raise invalid(exc) from None
    if not fetch:  # what submit checks next, the image standing in by its (checked) form
        request.model_copy(update={"image": ""} if source is not None else {}).check()
    return request, image


async def resolve_file(value: str, field: str, max_bytes: int, policy: WebhookPolicy = WebhookPolicy()) -> bytes:
    """The bytes of a file input: a ``data:`` URI (base64), or an ``http(s)`` URL fetched by :func:`fetch_url` under
    ``policy`` (the service's webhook URL policy: addresses and ports).

    Raises:
        InvalidInputError: neither form, a refused or unreachable URL, a non-2xx answer.
        PayloadTooLargeError: more than ``max_bytes`` bytes.
    """
    check_file_form(value, field, max_bytes)
    if value.startswith("data:"):
        return decode_image(value, max_bytes)
    if value.lower().startswith(("http://", "https://")):
        return await asyncio.to_thread(fetch_url, value, field, max_bytes, policy)
    raise InvalidInputError(f"{field}: a data URI (data:image/png;base64,…) or an http(s) URL")


def check_file_form(value: str, field: str, max_bytes: int) -> None:
    """Check that a file input has the documented form (:data:`FILE_PATTERN`: a base64 ``data:`` URI or an
    http(s) URL), without decoding or fetching it.

    Raises:
        InvalidInputError: neither form. PayloadTooLargeError: longer than ``max_bytes`` bytes could encode.
    """
    if len(value) > max_bytes * 4 // 3 + 1024:
        raise PayloadTooLargeError(f"{field}: larger than {max_bytes} bytes")
    if not re.fullmatch(FILE_PATTERN, value):  # before any DNS lookup: the documented form only
        raise InvalidInputError(f"{field}: a base64 data URI (data:image/png;base64,…) or an http(s) URL without "
                                "spaces or control characters")
    if value.startswith("data:") and not value.partition(",")[0].endswith(";base64"):
        raise InvalidInputError(f"{field}: a data URI must be base64-encoded (data:<type>;base64,<data>)")


def fetch_url(url: str, field: str, max_bytes: int, policy: WebhookPolicy = WebhookPolicy()) -> bytes:
    """GET ``url`` under the webhook URL policy (the SSRF guard), following no redirects, connecting to the address
    checked (Host and TLS name from the URL), at most ``max_bytes`` bytes and :data:`_FETCH_TIMEOUT_S` seconds per
    phase. Blocking.

    Raises:
        InvalidInputError: the policy refuses the URL, the server cannot be reached or answers non-2xx.
        PayloadTooLargeError: the body is longer than ``max_bytes``.
    """
    import httpx

    try:
        checked = check_webhook_url(url, policy.allow_private, policy.allowed_ports)
    except WebhookUrlError as exc:
        raise InvalidInputError(f"{field}: {str(exc).removeprefix('webhook_url: ')}") from None
    target = httpx.URL(checked.url)
    headers, extensions = {"Host": target.netloc.decode("ascii")}, {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    address = checked.addresses[0]
    pinned = target.copy_with(host=address)
    body = bytearray()
    try:
        with httpx.Client(timeout=_FETCH_TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                if not 200 <= response.status_code < 300:
                    raise InvalidInputError(f"{field}: {checked.host} answered HTTP {response.status_code}")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise PayloadTooLargeError(f"{field}: larger than {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise InvalidInputError(f"{field}: could not fetch the URL ({type(exc).__name__})") from None
    return bytes(body)


def webhook_filter(values: Any) -> list[str] | None:
    """lift3d event types of a ``webhook_events_filter`` (None: every event).

    Raises:
        InvalidInputError: not a list of ``start``, ``output``, ``logs``, ``completed``.
    """
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) and v in WEBHOOK_EVENTS for v in values):
        raise InvalidInputError(f"webhook_events_filter: a list of {', '.join(WEBHOOK_EVENTS)}")
    return sorted({WEBHOOK_EVENTS[v] for v in values})


# ------------------------------------------------------------------------------------------------ output
def iso_time(epoch_s: float | None) -> str | None:
    """RFC 3339 UTC time with microseconds and ``Z`` (Replicate's form), or None."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def output_names(record: JobRecord) -> list[str] | str | None:
    """What a finished job outputs, as artifact names: the 3D file (a name) when it made one, else its novel views
    (a list, in view order); None while it runs or when it did not succeed."""
    if record.status != "succeeded" or record.outcome is None:
        return None
    outcome = record.outcome
    if outcome.main_key != "views.zip":
        return outcome.main_key
    return sorted(name for name in outcome.artifacts if _VIEW.fullmatch(name))


def logs_of(record: JobRecord) -> str:
    """The progress lines of a job: one per fact the record holds (attempt, stage, progress as a tqdm-style bar
    that Replicate's client parses into ``prediction.progress``, the error)."""
    lines = [f"job {record.id}: {record.kind}, seed {record.params.seed}"]
    if record.attempts:
        lines.append(f"attempt {record.attempts} of {record.max_attempts}")
    if record.stage:
        lines.append(f"stage: {record.stage}")
    progress = record.progress
    if progress is not None and progress.total > 0:
        done = min(progress.step, progress.total)
        percent = int(100 * done / progress.total)
        bar = "#" * (percent // 10) + " " * (10 - percent // 10)
        lines.append(f"{percent:3d}%|{bar}| {done}/{progress.total}")
    if record.status == "succeeded":
        lines.append("done")
    elif record.error is not None:
        lines.append(f"error: {record.error.name}: {record.error.message}")
    return "\n".join(lines) + "\n"


def prediction_body(record: JobRecord, *, model: str, version: str, output: Any,
                    urls: dict[str, str] | None = None) -> dict[str, Any]:
    """A Replicate/Cog prediction object for ``record``; ``output`` already rendered (URLs or data URIs).

    ``input`` echoes the job's parameters that differ from their defaults, and the seed (the image is not echoed); ``metrics.predict_time`` is the
    seconds from the start of the last attempt to the end; ``error`` is the job's error message."""
    status = STATUS[record.status]
    params = record.params
    body: dict[str, Any] = {
        "id": record.id, "model": model, "version": version, "status": status,
        "input": {**params.model_dump(mode="json", exclude_defaults=True), "seed": params.seed}, "output": output,
        "logs": logs_of(record), "data_removed": record.status == "expired",
        "error": None if record.error is None or status != "failed" else record.error.message,
        "created_at": iso_time(record.created_at), "started_at": iso_time(record.started_at),
        "completed_at": iso_time(record.finished_at if status in TERMINAL_STATUS else None),
        "metrics": {},
    }
    if record.started_at is not None and record.finished_at is not None and status in TERMINAL_STATUS:
        body["metrics"]["predict_time"] = round(record.finished_at - record.started_at, 3)
    if record.outcome is not None and record.status == "succeeded":
        body["metrics"]["timings_s"] = record.outcome.timings_s
        body["metrics"]["cost_usd"] = record.outcome.cost_usd
    if urls is not None:
        body["urls"] = urls
    return body


def data_uri(data: bytes, name: str) -> str:
    """``data:<media type of name>;base64,…``: how Cog returns a file when it has no upload URL."""
    return f"data:{media_type_of(name)};base64,{base64.b64encode(data).decode('ascii')}"


async def wait_until_done(get_record: Callable[[], JobRecord], seconds: float, poll_interval_s: float,
                          disconnected: Callable[[], Any] | None = None) -> JobRecord:
    """Poll ``get_record()`` (blocking, in a worker thread) until the job ends, ``seconds`` pass or (with
    ``disconnected``, an async ``() → bool``) the client goes away; returns the last record read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, seconds)
    while True:
        record = await asyncio.to_thread(get_record)
        if record.terminal or loop.time() >= deadline:
            return record
        if disconnected is not None and await disconnected():
            return record
        await asyncio.sleep(min(poll_interval_s, max(0.0, deadline - loop.time())))
