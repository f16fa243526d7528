"""HTTP plumbing of the API: the error envelope, content negotiation, request-body parsing and OpenAPI bodies.

Used by the routes of :func:`lift3d.service.app.create_api`; every parse error is a
:class:`~lift3d.errors.Lift3DError` that the routes turn into the one error envelope (:class:`ErrorBody`).
"""

from __future__ import annotations

import asyncio
import json
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.io.images import ImageLimits
from lift3d.params import GenerationParams
from lift3d.service.schemas import BadRequestError, ErrorBody, GenerationKind, GenerationRequest
from lift3d.service.uploads import ReconstructParams

__all__ = ["BODY_DOC", "VIEWS_BODY_DOC", "error_response", "invalid", "parse_generation", "parse_views",
           "wants_json"]


def _messages(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
            for e in exc.errors()]


def error_response(name: str, errors: list[str], id: str | None = None) -> JSONResponse:
    """The error envelope as a response, with the HTTP status of ``name``; ``id`` defaults to a request id."""
    body = ErrorBody(id=id or uuid.uuid4().hex, name=name, errors=errors)
    return JSONResponse(body.model_dump(), status_code=body.http_status)


def wants_json(accept: str | None) -> bool:
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


BODY_DOC = {
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


VIEWS_BODY_DOC = {
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


def invalid(exc: ValidationError) -> InvalidInputError:
    """A pydantic error as :class:`InvalidInputError`, one message per field (``.errors``)."""
    error = InvalidInputError("; ".join(_messages(exc)))
    error.errors = _messages(exc)  # type: ignore[attr-defined]
    return error


async def parse_generation(request: Request, kind: GenerationKind, limits: ImageLimits
                           ) -> tuple[GenerationRequest, bytes | None]:
    """A submission body: JSON (``image`` base64) or multipart (``image`` file + form fields), as a request and
    the uploaded bytes (None for JSON or prompt-only bodies).

    Raises:
        PayloadTooLargeError, BadRequestError, InvalidInputError: the body is unusable.
    """
    body_limit = limits.max_bytes * 4 // 3 + 64 * 1024  # base64 overhead and form fields
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
        raise invalid(exc) from None


async def parse_views(request: Request, views_limit: int) -> tuple[bytes, GenerationParams, ReconstructParams]:
    """A ``views-to-3d`` body (multipart: ``views`` ZIP + ``seed`` + :class:`ReconstructParams` fields).

    Raises:
        PayloadTooLargeError, BadRequestError, InvalidInputError: the body is unusable.
    """
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
        raise invalid(exc) from None
