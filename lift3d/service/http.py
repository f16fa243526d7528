"""HTTP plumbing of the API: the error envelope, content negotiation, bounded request-body reading and parsing, and
the OpenAPI request bodies.

Used by the routes of :func:`lift3d.service.app.create_api`; every parse error is a
:class:`~lift3d.errors.Lift3DError` that the routes turn into the one error envelope (:class:`ErrorBody`).

Bodies are read from the request stream with a byte budget: a ``Content-Length`` over it is refused before anything
is read, and a body without one (chunked) is cut off as soon as it passes the budget, so an upload never costs the
service more than its limit. JSON bodies are checked for nesting depth (:data:`MAX_JSON_DEPTH`) before parsing.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from itertools import accumulate
from typing import Any, AsyncGenerator

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from lift3d.errors import InvalidInputError, Lift3DError, PayloadTooLargeError
from lift3d.io.images import ImageLimits
from lift3d.io.storage.retrying import is_unavailable_error
from lift3d.params import MAX_SEED, TEXTURE_SIZES, GenerationParams
from lift3d.params.images import ONE_POSITIVE
from lift3d.service.schemas import (
    BadRequestError,
    ErrorBody,
    GenerationKind,
    GenerationRequest,
    UnsupportedMediaTypeError,
)
from lift3d.service.schema_docs import form_scalars, inline_refs
from lift3d.service.uploads import ReconstructParams

__all__ = ["BASE64_PATTERN", "FORM_OVERHEAD_BYTES", "MAX_JSON_DEPTH", "PROMPT_PATTERN", "WEBHOOK_URL_PATTERN",
           "body_doc", "error_response", "invalid", "json_depth", "parse_generation", "parse_json_object", "parse_views",
           "read_body", "read_form", "views_body_doc", "wants_json"]

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a JSON body (a submission is one flat object)."""

FORM_OVERHEAD_BYTES = 64 * 1024
"""Bytes a body may carry beside its file: form fields and multipart framing."""

_MiB = 1024 * 1024


def _mib(size: int) -> str:
    return f"{size / _MiB:.4g} MiB"


def _messages(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
            for e in exc.errors()]


UNAVAILABLE_RETRY_AFTER_S = 5
"""``Retry-After`` (seconds) of a ``503`` that did not set its own: a backing service or deployment is down."""


def error_response(name: str, errors: list[str], id: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The error envelope as a response, with the HTTP status of ``name``; ``id`` defaults to a request id. Every
    ``503`` carries ``Retry-After`` (:data:`UNAVAILABLE_RETRY_AFTER_S` unless ``headers`` set one)."""
    body = ErrorBody(id=id or uuid.uuid4().hex, name=name, errors=errors)
    if body.http_status == 503 and "Retry-After" not in (headers or {}):
        headers = {**(headers or {}), "Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
    return JSONResponse(body.model_dump(), status_code=body.http_status, headers=headers)


def unexpected_error_response(exc: BaseException) -> JSONResponse:
    """The envelope for an exception no route handled: ``503 service_unavailable`` (with ``Retry-After``) when a
    backing service could not be reached (:func:`~lift3d.io.storage.retrying.is_unavailable_error`: the database,
    the artifact store, the queue's broker), else ``500 internal_error``. Details stay in the server's log."""
    if is_unavailable_error(exc):
        return error_response("service_unavailable", ["a backing service (database, artifact store or job queue) "
                                                      "is unavailable; retry shortly"])
    return error_response("internal_error", ["internal error; the server logged the details"])


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


def invalid(exc: ValidationError) -> InvalidInputError:
    """A pydantic error as :class:`InvalidInputError`, one message per field (``.errors``)."""
    error = InvalidInputError("; ".join(_messages(exc)))
    error.errors = _messages(exc)  # type: ignore[attr-defined]
    return error


# ------------------------------------------------------------------------------------------------ OpenAPI bodies
BASE64_PATTERN = r"^(data:[^,]*;base64,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Padded standard base64, optionally as a ``data:`` URL (what :func:`~lift3d.service.schemas.decode_image` reads)."""

PROMPT_PATTERN = "[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A prompt must hold a character that is not whitespace (Python's ``str.isspace``, the SDXL stage's test)."""

WEBHOOK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\x00-\x20\x7f]+(?:[/?#][^\x00-\x20\x7f]*)?$"
"""An http(s) URL without credentials or control characters (the service also refuses hosts that do not resolve
to public addresses)."""

_RULE_TEXT = {
    "image-to-3d": "Needs `image` and no `prompt`.",
    "text-to-3d": "Needs `prompt` (in JSON, or `text_prompts` with a positive, non-blank prompt: the job's name) and "
                  "no `image`.",
    "multiview": "Needs exactly one of `image` and `prompt`; `return_3d` may only be false.",
}


def _param_properties(model: type, nullable: bool) -> dict[str, dict]:
    """The model's JSON Schema properties as the API reads them; form fields (``nullable=False``) cannot be null."""
    properties = {}
    full = model.model_json_schema()
    for name, schema in inline_refs(full["properties"], full.get("$defs", {})).items():
        schema = dict(schema)
        if not nullable and "anyOf" in schema:
            (schema_of_value,) = [s for s in schema.pop("anyOf") if s.get("type") != "null"]
            schema.update(schema_of_value)
            schema.pop("default", None)
        if name == "texture_size":
            schema["enum"] = list(TEXTURE_SIZES)
        patterns = {"prompt": PROMPT_PATTERN, "webhook_url": WEBHOOK_URL_PATTERN}
        for option in schema.get("anyOf", [schema]) if name in patterns else ():
            if option.get("type") == "string":
                option["pattern"] = patterns[name]
        properties[name] = schema
    return properties


def _not_null(schema: dict) -> dict:
    """``schema`` without its ``null`` alternative."""
    (value,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
    return {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")}, **value}


def body_doc(kind: GenerationKind, limits: ImageLimits = ImageLimits()) -> dict:
    """``openapi_extra`` of a submission route: its JSON and multipart bodies, each with the route's input rule
    (a JSON null counts as absent)."""
    about = f"Input image, PNG/JPEG/WebP, at most {_mib(limits.max_bytes)} and {limits.max_side} px a side"
    json_fields = {k: v for k, v in _param_properties(GenerationRequest, nullable=True).items() if k != "kind"}
    json_fields["image"] = {"anyOf": [{"type": "string", "format": "byte", "contentEncoding": "base64",
                                       "pattern": BASE64_PATTERN, "minLength": 1}, {"type": "null"}],
                            "description": about + ", base64-encoded (also as a `data:` URL)."}
    form_fields = form_scalars({k: v for k, v in _param_properties(GenerationRequest, nullable=False).items()
                                if k != "kind"})
    form_fields["image"] = {"type": "string", "format": "binary", "description": about + "."}
    json_rule: dict[str, Any] = {}
    form_rule: dict[str, Any] = {}
    if kind == "image-to-3d":
        json_fields["image"] = _not_null(json_fields["image"])
        json_fields["prompt"] = {"type": "null", "description": "Not taken: image-to-3d starts from the image."}
        del form_fields["prompt"]
        json_rule = form_rule = {"required": ["image"]}
    elif kind == "text-to-3d":
        json_fields["prompt"] = _not_null(json_fields["prompt"])
        json_fields["image"] = {"type": "null", "description": "Not taken: text-to-3d starts from the prompt."}
        del form_fields["image"]
        named = {"allOf": [ONE_POSITIVE["contains"], {"properties": {"text": {"pattern": PROMPT_PATTERN}}}]}
        json_rule = {"anyOf": [{"required": ["prompt"]}, {"required": ["text_prompts"], "properties": {
            "text_prompts": {"type": "array", "contains": named}}}]}
        form_rule = {"required": ["prompt"]}
    else:  # multiview: exactly one of them (in a form, present; in JSON, present and not null)
        for fields in (json_fields, form_fields):
            fields["return_3d"] = {**fields["return_3d"], "enum": [False], "default": False}
        pairs = (("image", "prompt"), ("prompt", "image"))
        json_rule = {"anyOf": [{"required": [given], "properties": {given: {"type": "string"}, other: {"type": "null"}}}
                               for given, other in pairs]}
        form_rule = {"anyOf": [{"required": [given], "properties": {other: False}} for given, other in pairs]}
    form: dict[str, Any] = {}
    if "image" in form_fields:
        form["encoding"] = {"image": {"contentType": "image/png, image/jpeg, image/webp"}}
    return {"requestBody": {"required": True, "description": _RULE_TEXT[kind], "content": {
        "application/json": {"schema": {"type": "object", "properties": json_fields, "additionalProperties": False,
                                        **json_rule}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_fields,
                                           "additionalProperties": False, **form_rule}, **form},
    }}}


def views_body_doc(max_bytes: int) -> dict:
    """``openapi_extra`` of ``views-to-3d``: a multipart body with a ZIP of at most ``max_bytes``."""
    properties = {
        "views": {"type": "string", "format": "binary",
                  "description": "ZIP of transforms.json (NeRF-synthetic) and its images, at the root or in one "
                                 f"top-level folder; at most {_mib(max_bytes)}."},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                 "description": "Seed of every random draw; random when omitted."},
        **_param_properties(ReconstructParams, nullable=False),
    }
    schema = {"type": "object", "required": ["views"], "additionalProperties": False, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": schema, "encoding": {"views": {"contentType": "application/zip"}}}}}}


# ------------------------------------------------------------------------------------------------ bounded reading
def _refuse_declared_length(request: Request, limit: int, message: str) -> None:
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(message)


async def _capped_stream(request: Request, limit: int, message: str) -> AsyncGenerator[bytes, None]:
    """The body's chunks as they arrive; raises PayloadTooLargeError once more than ``limit`` bytes came."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(message)
        yield chunk


async def read_body(request: Request, limit: int, message: str) -> bytes:
    """The whole body, at most ``limit`` bytes, read from the stream.

    Raises:
        PayloadTooLargeError(``message``): ``Content-Length`` over ``limit`` (nothing read), or more than ``limit``
            bytes arrived (reading stops there).
    """
    _refuse_declared_length(request, limit, message)
    return b"".join([chunk async for chunk in _capped_stream(request, limit, message)])


async def read_form(request: Request, limit: int, message: str, max_files: int, max_fields: int) -> FormData:
    """A ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body, parsed as it streams in, at most
    ``limit`` bytes in all (files spool to disk past 1 MiB; text fields stay in memory). The caller closes the
    result (``await form.close()``).

    Raises:
        PayloadTooLargeError(``message``): as :func:`read_body`. BadRequestError: malformed, or too many parts.
    """
    _refuse_declared_length(request, limit, message)
    stream = _capped_stream(request, limit, message)
    if _media_type(request) == "multipart/form-data":
        parser: MultiPartParser | FormParser = MultiPartParser(
            request.headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=limit)
    else:
        parser = FormParser(request.headers, stream, max_fields=max_fields, max_part_size=limit)
    try:
        return await parser.parse()
    except Lift3DError:  # PayloadTooLargeError from the capped stream
        raise
    except MultiPartException as exc:
        raise BadRequestError(f"malformed form body: {exc.message}") from None
    except (KeyError, ValueError, UnicodeDecodeError) as exc:  # header or charset trouble inside the parser
        raise BadRequestError(f"malformed form body: {type(exc).__name__}") from None
    finally:
        await stream.aclose()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# ------------------------------------------------------------------------------------------------ JSON
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEP = [1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256)]


def json_depth(data: bytes) -> int:
    """Deepest nesting of arrays and objects in the JSON text ``data`` (0 for a scalar), found without parsing:
    brackets inside strings do not count. Linear time and no recursion, whatever the input.

    Examples:
        >>> json_depth(b'{"a": [1, {"b": "]]"}]}')
        3
    """
    brackets = _JSON_STRING.sub(b'""', data).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_json_object(data: bytes) -> dict:
    """A JSON body that must be an object, nested at most :data:`MAX_JSON_DEPTH` deep (checked before parsing).

    Raises:
        BadRequestError: too deep, not valid JSON (UTF-8/16/32), or not an object.
    """
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise BadRequestError(f"JSON body is nested {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequestError("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequestError("JSON body must be an object")
    return value


# ------------------------------------------------------------------------------------------------ typed fields
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _field_types(properties: dict[str, dict]) -> dict[str, str]:
    """``{field: JSON Schema type}`` (the non-null type of nullable fields)."""
    types = {}
    for name, schema in properties.items():
        options = schema.get("anyOf", [schema])
        types[name] = next((s.get("type") for s in options if s.get("type") not in (None, "null")), "string")
    return types


_GENERATION_TYPES = _field_types(_param_properties(GenerationRequest, nullable=True))
_VIEWS_TYPES = {"seed": "integer", "webhook_url": "string",
                **_field_types(_param_properties(ReconstructParams, nullable=True))}


def _json_values(fields: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """JSON values as pydantic's strict mode reads them: an integral number (``8.0``) is a valid integer, as in JSON
    Schema."""
    return {name: int(value) if types.get(name) == "integer" and isinstance(value, float) and value.is_integer()
            else value for name, value in fields.items()}


def _form_values(fields: dict[str, str], types: dict[str, str]) -> dict[str, Any]:
    """Form text as the JSON value it spells for the field's type: a JSON number for integers and numbers,
    ``true``/``false`` for booleans; anything else stays text (and fails strict validation)."""
    values: dict[str, Any] = {}
    for name, text in fields.items():
        kind = types.get(name, "string")
        value: Any = text
        if kind in ("integer", "number") and _JSON_NUMBER.fullmatch(text):
            try:
                value = json.loads(text)
            except ValueError:  # more digits than Python converts
                value = text
        elif kind == "boolean" and text in ("true", "false"):
            value = text == "true"
        values[name] = value
    return _json_values(values, types)


# ------------------------------------------------------------------------------------------------ the routes' bodies
async def parse_generation(request: Request, kind: GenerationKind, limits: ImageLimits
                           ) -> tuple[GenerationRequest, bytes | None]:
    """A submission body: JSON (``image`` base64) or multipart (``image`` file + form fields), as a request and
    the uploaded bytes (None for JSON or prompt-only bodies). The body may be at most ``limits.max_bytes`` × 4/3
    (base64) + 64 KiB. Values must have their JSON Schema types: JSON ``8`` (not ``"8"``), form text ``8``,
    ``true``/``false``; an empty form field is an empty value (omit a field to take its default).

    Raises:
        PayloadTooLargeError, UnsupportedMediaTypeError, BadRequestError, InvalidInputError: the body is unusable.
    """
    body_limit = limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES
    too_large = f"request body is larger than {_mib(body_limit)}"
    content_type = _media_type(request)
    image: bytes | None = None
    if content_type == "application/json":
        data = await read_body(request, body_limit, too_large)
        fields = _json_values(await asyncio.to_thread(parse_json_object, data), _GENERATION_TYPES)
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await read_form(request, body_limit, too_large, max_files=1, max_fields=32)
        try:
            text, image = await _form_fields(form, "image", limits.max_bytes, "image")
        finally:
            await form.close()
        fields = _form_values(text, _GENERATION_TYPES)
    else:
        raise UnsupportedMediaTypeError("send multipart/form-data (image file + fields) or application/json")
    if "kind" in fields:
        raise InvalidInputError("kind: set by the route; remove this field")
    try:
        return GenerationRequest.model_validate({**fields, "kind": kind}, strict=True), image
    except ValidationError as exc:
        raise invalid(exc) from None


async def _form_fields(form: FormData, file_field: str, max_bytes: int, what: str
                       ) -> tuple[dict[str, str], bytes | None]:
    """The text fields, as sent (an empty field is an empty value, not an absent one), and the bytes of the one
    file field of a parsed form.

    Raises:
        InvalidInputError: a field given twice, or a file in a text field. PayloadTooLargeError: file over
            ``max_bytes``.
    """
    fields: dict[str, str] = {}
    data: bytes | None = None
    for key, value in form.multi_items():
        if key in fields or (key == file_field and data is not None):
            raise InvalidInputError(f"{key}: given more than once")
        if isinstance(value, str):
            fields[key] = value
        elif key != file_field:
            raise InvalidInputError(f"{key}: unexpected file; only {file_field!r} is a file")
        else:
            if (value.size or 0) > max_bytes:
                raise PayloadTooLargeError(f"{what} is larger than {_mib(max_bytes)}")
            data = await value.read()
    return fields, data


async def parse_views(request: Request, views_limit: int
                      ) -> tuple[bytes, GenerationParams, ReconstructParams, str | None]:
    """A ``views-to-3d`` body (multipart: ``views`` ZIP + ``seed`` + ``webhook_url`` + :class:`ReconstructParams`
    fields), at most ``views_limit`` + 64 KiB bytes; returns the ZIP, the seed, the options and the webhook URL.

    Raises:
        PayloadTooLargeError, UnsupportedMediaTypeError, BadRequestError, InvalidInputError: the body is unusable.
    """
    if _media_type(request) not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaTypeError("send multipart/form-data: a `views` ZIP file plus option fields")
    too_large = f"views: ZIP is larger than {_mib(views_limit)}"
    form = await read_form(request, views_limit + FORM_OVERHEAD_BYTES, too_large, max_files=1, max_fields=16)
    try:
        fields, views = await _form_fields(form, "views", views_limit, "views: ZIP")
    finally:
        await form.close()
    if views is None:
        raise InvalidInputError("views: required (a ZIP file field)")
    values = _form_values(fields, _VIEWS_TYPES)
    seed = values.pop("seed", None)
    webhook_url = values.pop("webhook_url", None)
    if webhook_url is not None and not 0 < len(webhook_url) <= 2048:
        raise InvalidInputError("webhook_url: an http(s) URL of at most 2048 characters")
    try:
        return (views, GenerationParams.model_validate({"seed": seed}, strict=True),
                ReconstructParams.model_validate(values, strict=True), webhook_url)
    except ValidationError as exc:
        raise invalid(exc) from None
