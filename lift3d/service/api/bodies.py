"""Request bodies: bounded reading, JSON and form parsing, and field typing, for the routes that read their bodies
themselves (the submissions and the image endpoints take JSON or multipart, with files).

Bodies are read from the request stream with a byte budget: a ``Content-Length`` over it is refused before anything
is read, and a body without one (chunked) is cut off as soon as it passes the budget, so an upload never costs the
service more than its limit. JSON bodies are checked for nesting depth (:data:`MAX_JSON_DEPTH`) before parsing.
Values are validated strictly against the models' JSON Schema types (:func:`field_types`): JSON ``8`` for an
integer, not ``"8"``; form text ``8``, ``true``/``false``. Every error is a :class:`~lift3d.errors.Lift3DError`
(400, 413, 415, 422) that the API's handler answers with the envelope.

Examples:
    >>> json_depth(b'{"a": [1, {"b": "]]"}]}')
    3
    >>> form_values({"steps": "8", "fast": "true", "name": "x"}, {"steps": "integer", "fast": "boolean"})
    {'steps': 8, 'fast': True, 'name': 'x'}
"""

from __future__ import annotations

import asyncio
import json
import re
from itertools import accumulate
from typing import IO, Any, AsyncGenerator

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from lift3d.errors import InvalidInputError, Lift3DError, PayloadTooLargeError
from lift3d.io.images import ImageLimits
from lift3d.io.media_types import FORM_DATA, FORM_URLENCODED, JSON
from lift3d.params import GenerationParams
from lift3d.service.api.openapi import mib, param_properties
from lift3d.service.jobs.uploads import ReconstructParams
from lift3d.service.schemas import BadRequestError, GenerationKind, GenerationRequest, UnsupportedMediaTypeError

__all__ = ["FORM_MEDIA_TYPES", "FORM_OVERHEAD_BYTES", "MAX_JSON_DEPTH", "field_types", "form_fields", "form_values",
           "invalid", "json_depth", "json_values", "media_type", "parse_generation", "parse_json_object",
           "parse_views", "read_body", "read_form"]

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a JSON body (a submission is one flat object)."""

FORM_OVERHEAD_BYTES = 64 * 1024
"""Bytes a body may carry beside its file: form fields and multipart framing."""

FORM_MEDIA_TYPES = (FORM_DATA, FORM_URLENCODED)
"""The form bodies a route reads (both parsed by :func:`read_form`)."""


def media_type(request: Request) -> str:
    """The request body's media type: ``Content-Type`` without parameters, lower case (``""`` when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def invalid(exc: ValidationError) -> InvalidInputError:
    """A pydantic error as :class:`InvalidInputError`, one message per field (``.errors``)."""
    messages = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid value')}"
                for e in exc.errors()]
    error = InvalidInputError("; ".join(messages))
    error.errors = messages
    return error


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
    if media_type(request) == FORM_DATA:
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


async def form_fields(form: FormData, file_field: str, max_bytes: int, what: str, as_file: bool = False
                      ) -> tuple[dict[str, str], Any]:
    """The text fields, as sent (an empty field is an empty value, not an absent one), and the bytes of the one
    file field of a parsed form (``as_file``: its spooled file instead, at its start; it closes with the form).

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
                raise PayloadTooLargeError(f"{what} is larger than {mib(max_bytes)}")
            if as_file:
                await value.seek(0)
                data = value.file
            else:
                data = await value.read()
    return fields, data


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


def field_types(properties: dict[str, dict]) -> dict[str, str]:
    """``{field: JSON Schema type}`` of a schema's properties (the non-null type of nullable fields; ``string``
    when a field names none)."""
    types = {}
    for name, schema in properties.items():
        options = schema.get("anyOf", [schema])
        types[name] = next((s.get("type") for s in options if s.get("type") not in (None, "null")), "string")
    return types


_GENERATION_TYPES = field_types(param_properties(GenerationRequest, nullable=True))
_VIEWS_TYPES = {"seed": "integer", "webhook_url": "string",
                **field_types(param_properties(ReconstructParams, nullable=True))}


def json_values(fields: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    """JSON values as pydantic's strict mode reads them: an integral number (``8.0``) is a valid integer, as in JSON
    Schema."""
    return {name: int(value) if types.get(name) == "integer" and isinstance(value, float) and value.is_integer()
            else value for name, value in fields.items()}


def form_values(fields: dict[str, str], types: dict[str, str]) -> dict[str, Any]:
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
    return json_values(values, types)


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
    too_large = f"request body is larger than {mib(body_limit)}"
    content_type = media_type(request)
    image: bytes | None = None
    if content_type == JSON:
        data = await read_body(request, body_limit, too_large)
        fields = json_values(await asyncio.to_thread(parse_json_object, data), _GENERATION_TYPES)
    elif content_type in FORM_MEDIA_TYPES:
        form = await read_form(request, body_limit, too_large, max_files=1, max_fields=32)
        try:
            text, image = await form_fields(form, "image", limits.max_bytes, "image")
        finally:
            await form.close()
        fields = form_values(text, _GENERATION_TYPES)
    else:
        raise UnsupportedMediaTypeError("send multipart/form-data (image file + fields) or application/json")
    if "kind" in fields:
        raise InvalidInputError("kind: set by the route; remove this field")
    try:
        return GenerationRequest.model_validate({**fields, "kind": kind}, strict=True), image
    except ValidationError as exc:
        raise invalid(exc) from None


async def parse_views(request: Request, views_limit: int
                      ) -> tuple[IO[bytes], GenerationParams, ReconstructParams, str | None]:
    """A ``views-to-3d`` body (multipart: ``views`` ZIP + ``seed`` + ``webhook_url`` + :class:`ReconstructParams`
    fields), at most ``views_limit`` + 64 KiB bytes; returns the ZIP, the seed, the options and the webhook URL.

    The ZIP is streamed to a spooled temporary file (in memory up to 1 MiB, then on disk: an upload never costs its
    size in memory) and returned as that file, at its start; the caller closes it (it is closed here on any error).

    Raises:
        PayloadTooLargeError, UnsupportedMediaTypeError, BadRequestError, InvalidInputError: the body is unusable.
    """
    if media_type(request) not in FORM_MEDIA_TYPES:
        raise UnsupportedMediaTypeError("send multipart/form-data: a `views` ZIP file plus option fields")
    too_large = f"views: ZIP is larger than {mib(views_limit)}"
    form = await read_form(request, views_limit + FORM_OVERHEAD_BYTES, too_large, max_files=1, max_fields=16)
    try:  # the form's one file is the ZIP: kept open for the caller, everything else is text
        fields, views = await form_fields(form, "views", views_limit, "views: ZIP", as_file=True)
        if views is None:
            raise InvalidInputError("views: required (a ZIP file field)")
        return (views, *_views_values(fields))
    except BaseException:
        await form.close()
        raise


def _views_values(fields: dict[str, str]) -> tuple[GenerationParams, ReconstructParams, str | None]:
    values = form_values(fields, _VIEWS_TYPES)
    seed = values.pop("seed", None)
    webhook_url = values.pop("webhook_url", None)
    if webhook_url is not None and not 0 < len(webhook_url) <= 2048:
        raise InvalidInputError("webhook_url: an http(s) URL of at most 2048 characters")
    try:
        return (GenerationParams.model_validate({"seed": seed}, strict=True),
                ReconstructParams.model_validate(values, strict=True), webhook_url)
    except ValidationError as exc:
        raise invalid(exc) from None
