"""The OpenAPI document's hand-written parts: request bodies the routes read themselves (documented inline with
``openapi_extra``, JSON and multipart, each with the route's input rule), the error responses, the POST headers, and
the clean-up of FastAPI's default 422 entries.

The body schemas come from the pydantic models (:class:`~lift3d.service.schemas.GenerationRequest`,
:class:`~lift3d.service.jobs.uploads.ReconstructParams`) with refs inlined; the strict body parser
(:mod:`lift3d.service.api.bodies`) reads field types from the same schemas, so the document and the parser agree.

Examples:
    >>> body_doc("text-to-3d")["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]
    ['prompt']
    >>> sorted(error_responses(404, 409))
    [404, 409]
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from lift3d.io.images import ImageLimits
from lift3d.io.media_types import FORM_DATA, JPEG, JSON, PNG, WEBP, ZIP
from lift3d.params import MAX_SEED, TEXTURE_SIZES
from lift3d.params.images import ONE_POSITIVE
from lift3d.service.api.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_KEY_PARAMETER
from lift3d.service.jobs.uploads import ReconstructParams
from lift3d.service.schemas import ErrorBody, GenerationKind, GenerationRequest

__all__ = ["BASE64_PATTERN", "BINARY", "PREFER_PARAMETER", "PROMPT_PATTERN", "WEBHOOK_URL_PATTERN", "body_doc",
           "drop_default_422", "error_responses", "form_scalars", "inline_refs", "mib", "not_null",
           "param_properties", "post_doc", "views_body_doc"]

BASE64_PATTERN = r"^(data:[^,]*;base64,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
"""Padded standard base64, optionally as a ``data:`` URL (what :func:`~lift3d.service.schemas.decode_image` reads)."""

PROMPT_PATTERN = "[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A prompt must hold a character that is not whitespace (Python's ``str.isspace``, the SDXL stage's test)."""

WEBHOOK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@\x00-\x20\x7f]+(?:[/?#][^\x00-\x20\x7f]*)?$"
"""An http(s) URL without credentials or control characters (the service also refuses hosts that do not resolve
to public addresses)."""

BINARY = {"schema": {"type": "string", "format": "binary"}}
"""A response content whose body is bytes."""

_MiB = 1024 * 1024
_JSON_ONLY = ("text_prompts", "regions")
"""Lists and objects a form field cannot carry: JSON bodies only."""

_RULE_TEXT = {
    "image-to-3d": "Needs `image` and no `prompt`.",
    "text-to-3d": "Needs `prompt` (in JSON, or `text_prompts` with a positive, non-blank prompt: the job's name) and "
                  "no `image`.",
    "multiview": "Needs exactly one of `image` and `prompt`; `return_3d` may only be false.",
}


def mib(size: int) -> str:
    """``size`` bytes in MiB for messages and descriptions (``20 MiB``, ``1.5 MiB``)."""
    return f"{size / _MiB:.4g} MiB"


# ------------------------------------------------------------------------------------------------ schema helpers
def inline_refs(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with each ``{"$ref": "#/$defs/X"}`` replaced by X's schema (bodies are documented inline)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            return inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        return {key: inline_refs(value, defs) for key, value in schema.items()}
    if isinstance(schema, list):
        return [inline_refs(value, defs) for value in schema]
    return schema


def form_scalars(fields: dict[str, dict]) -> dict[str, dict]:
    """A multipart body's fields: without the JSON-only lists and objects, ``camera_path`` as its two names
    (keyframes travel in JSON bodies)."""
    fields = {name: schema for name, schema in fields.items() if name not in _JSON_ONLY}
    if "camera_path" in fields:
        fields["camera_path"] = {"type": "string", "enum": ["orbit", "spiral"], "default": "orbit",
                                 "description": "`orbit` or `spiral` (keyframes: in a JSON body)."}
    return fields


def param_properties(model: type, nullable: bool) -> dict[str, dict]:
    """The model's JSON Schema properties as the API reads them, refs inlined; form fields (``nullable=False``)
    cannot be null. ``texture_size`` lists its sizes; ``prompt`` and ``webhook_url`` carry their patterns."""
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


def not_null(schema: dict) -> dict:
    """``schema`` without its ``null`` alternative (and without its default)."""
    (value,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
    return {**{k: v for k, v in schema.items() if k not in ("anyOf", "default")}, **value}


# ------------------------------------------------------------------------------------------------ request bodies
def _input_rules(kind: GenerationKind, json_fields: dict, form_fields: dict) -> tuple[dict, dict]:
    """The JSON and multipart schemas' rule of ``kind`` (which of ``image`` and ``prompt``); adjusts the fields."""
    if kind == "image-to-3d":
        json_fields["image"] = not_null(json_fields["image"])
        json_fields["prompt"] = {"type": "null", "description": "Not taken: image-to-3d starts from the image."}
        del form_fields["prompt"]
        return {"required": ["image"]}, {"required": ["image"]}
    if kind == "text-to-3d":
        json_fields["prompt"] = not_null(json_fields["prompt"])
        json_fields["image"] = {"type": "null", "description": "Not taken: text-to-3d starts from the prompt."}
        del form_fields["image"]
        named = {"allOf": [ONE_POSITIVE["contains"], {"properties": {"text": {"pattern": PROMPT_PATTERN}}}]}
        return ({"anyOf": [{"required": ["prompt"]}, {"required": ["text_prompts"], "properties": {
            "text_prompts": {"type": "array", "contains": named}}}]}, {"required": ["prompt"]})
    # multiview: exactly one of them (in a form, present; in JSON, present and not null)
    for fields in (json_fields, form_fields):
        fields["return_3d"] = {**fields["return_3d"], "enum": [False], "default": False}
    pairs = (("image", "prompt"), ("prompt", "image"))
    return ({"anyOf": [{"required": [given], "properties": {given: {"type": "string"}, other: {"type": "null"}}}
                       for given, other in pairs]},
            {"anyOf": [{"required": [given], "properties": {other: False}} for given, other in pairs]})


def body_doc(kind: GenerationKind, limits: ImageLimits = ImageLimits()) -> dict:
    """``openapi_extra`` of a submission route: its JSON and multipart bodies, each with the route's input rule
    (a JSON null counts as absent)."""
    about = f"Input image, PNG/JPEG/WebP, at most {mib(limits.max_bytes)} and {limits.max_side} px a side"
    json_fields = {k: v for k, v in param_properties(GenerationRequest, nullable=True).items() if k != "kind"}
    json_fields["image"] = {"anyOf": [{"type": "string", "format": "byte", "contentEncoding": "base64",
                                       "pattern": BASE64_PATTERN, "minLength": 1}, {"type": "null"}],
                            "description": about + ", base64-encoded (also as a `data:` URL)."}
    form_fields = form_scalars({k: v for k, v in param_properties(GenerationRequest, nullable=False).items()
                                if k != "kind"})
    form_fields["image"] = {"type": "string", "format": "binary", "description": about + "."}
    json_rule, form_rule = _input_rules(kind, json_fields, form_fields)
    form: dict[str, Any] = {}
    if "image" in form_fields:
        form["encoding"] = {"image": {"contentType": f"{PNG}, {JPEG}, {WEBP}"}}
    return {"requestBody": {"required": True, "description": _RULE_TEXT[kind], "content": {
        JSON: {"schema": {"type": "object", "properties": json_fields, "additionalProperties": False,
                                        **json_rule}},
        FORM_DATA: {"schema": {"type": "object", "properties": form_fields,
                                           "additionalProperties": False, **form_rule}, **form},
    }}}


def views_body_doc(max_bytes: int) -> dict:
    """``openapi_extra`` of ``views-to-3d``: a multipart body with a ZIP of at most ``max_bytes``."""
    properties = {
        "views": {"type": "string", "format": "binary",
                  "description": "ZIP of transforms.json (NeRF-synthetic) and its images, at the root or in one "
                                 f"top-level folder; at most {mib(max_bytes)}."},
        "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED,
                 "description": "Seed of every random draw; random when omitted."},
        **param_properties(ReconstructParams, nullable=False),
    }
    schema = {"type": "object", "required": ["views"], "additionalProperties": False, "properties": properties}
    return {"requestBody": {"required": True, "content": {FORM_DATA: {
        "schema": schema, "encoding": {"views": {"contentType": ZIP}}}}}}


# ------------------------------------------------------------------------------------------------ responses, headers
_ERROR_TEXT = {400: "Unreadable body (malformed JSON, form or base64).", 404: "No such generation (or artifact).",
               409: "The generation already finished.", 410: "The generation was canceled.",
               402: "The key's balance is below the request's estimated price (`insufficient_credits`).",
               413: "Body, image or ZIP over its size limit.", 415: "Unsupported Content-Type.",
               429: "Over the key's requests per minute or jobs at once (`rate_limited`, with `Retry-After`).",
               422: "Invalid parameters or input.", 500: "Internal error.", 503: "Queue or deployments unavailable."}


def error_responses(*codes: int, failed: bool = False, texts: dict[int, str] | None = None) -> dict[int, dict]:
    """OpenAPI responses of ``codes``, each the error envelope; ``failed``: also a failed job's own error;
    ``texts``: descriptions that differ from the generation routes' usual ones on this route."""
    prefix = "The generation failed, or: " if failed else ""
    texts = {**_ERROR_TEXT, **(texts or {})}
    return {code: {"model": ErrorBody, "description": (prefix if code in (422, 500, 503) else "") + texts[code]}
            for code in codes}


PREFER_PARAMETER = {
    "name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "`wait=N` (RFC 7240, N ≤ 60 s): hold the request until the job ends (then 200 with the result) "
                   "or N s pass (then 202). Answers carry `Preference-Applied`."}
"""The ``Prefer: wait=N`` header of the job-creating POSTs."""


def post_doc(extra: dict) -> dict:
    """A job-creating POST's ``openapi_extra`` plus its ``Idempotency-Key`` and ``Prefer`` headers."""
    return {**extra, "parameters": [*extra.get("parameters", []), IDEMPOTENCY_KEY_PARAMETER, PREFER_PARAMETER]}


def drop_default_422(api: FastAPI) -> None:
    """Build ``api``'s document without FastAPI's default 422 ``HTTPValidationError`` entries (documented for every
    route with a path parameter; ours are plain strings that cannot fail validation, and errors use
    :class:`ErrorBody`). The document is built once and cached."""

    def openapi() -> dict:
        if api.openapi_schema:
            return api.openapi_schema
        schema = FastAPI.openapi(api)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422")
                if response is not None and "HTTPValidationError" in json.dumps(response):
                    del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
