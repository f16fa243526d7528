"""The bodies of the Cog- and Replicate-compatible routes: the pydantic models their JSON is read with, and their
OpenAPI documents (a prediction's ``input`` is documented with the v1 body's schema of the same job kind, so both
APIs state one set of parameters, :func:`lift3d.service.api.openapi.body_doc`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lift3d.io.media_types import FORM_DATA, JSON
from lift3d.service.api.openapi import WEBHOOK_URL_PATTERN, body_doc
from lift3d.service.schemas import GenerationKind

__all__ = ["FILE_PATTERN", "CogError", "CogHealth", "CogPredictionBody", "Prediction", "PredictionBody", "Problem",
           "ReplicateFile", "cog_body_doc", "files_body_doc", "input_schema", "replicate_body_doc"]

FILE_PATTERN = r"^(data:[^,;]*;base64,[A-Za-z0-9+/=]+|[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f]+)$"
"""A file input: a base64 ``data:`` URI or an http(s) URL."""
Event = Literal["start", "output", "logs", "completed"]


class PredictionBody(BaseModel):
    """The body of a Replicate prediction (``POST /v1/models/lift3d/{name}/predictions``)."""

    model_config = ConfigDict(extra="forbid")

    input: dict[str, Any] = Field(description="The model's inputs (see each model).")
    webhook: str | None = Field(None, max_length=2048, pattern=WEBHOOK_URL_PATTERN,
                                description="http(s) URL that receives the job's webhooks (lift3d's events, "
                                "Standard Webhooks signatures with the key's secret).")
    webhook_events_filter: list[Event] | None = Field(
        None, description="Which webhooks: start (generation.started), output and logs (generation.progress), "
        "completed (generation.completed); default: all.")
    stream: bool | None = Field(None, description="Accepted for Replicate's client; lift3d always offers "
                                "`urls.stream` (its event stream).")


class CogPredictionBody(BaseModel):
    """The body of a Cog prediction (``POST /predictions``, ``PUT /predictions/{id}``)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                           description="The caller's id for the prediction (PUT: ignored, the path's is used).")
    input: dict[str, Any] = Field(description="The inputs: `image` (→ image-to-3d) or `prompt` (→ text-to-3d), "
                                  "and the generation parameters.")
    webhook: str | None = Field(None, max_length=2048, pattern=WEBHOOK_URL_PATTERN,
                                description="http(s) URL that receives the job's webhooks.")
    webhook_events_filter: list[Event] | None = Field(None, description="Which webhooks (as Replicate's).")


class Prediction(BaseModel):
    """A prediction, as Cog and Replicate answer it."""

    id: str
    model: str = Field(description="`lift3d/image-to-3d`, `lift3d/text-to-3d`, `lift3d/multiview` or "
                       "`lift3d/text-to-image`.")
    version: str
    status: Literal["starting", "processing", "succeeded", "failed", "canceled"]
    input: dict[str, Any]
    output: str | list[str] | None = Field(description="File URLs (Replicate: signed, short-lived) or data URIs "
                                           "(Cog; text-to-image): the 3D file, or the views; null until it ends.")
    logs: str
    error: str | None
    metrics: dict[str, Any] = Field(description="`predict_time` (seconds), `timings_s`, `cost_usd`.")
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    data_removed: bool = False
    urls: dict[str, str] | None = Field(None, description="Replicate: `get`, `cancel`, `stream`.")


class Problem(BaseModel):
    """A Replicate error (problem details)."""

    title: str
    detail: str
    status: int


class CogError(BaseModel):
    """A Cog error: a list of ``{loc, msg, type}`` for invalid inputs, else a message."""

    detail: str | list[dict[str, Any]]


class CogHealth(BaseModel):
    """Cog's readiness answer."""

    status: Literal["READY", "UNHEALTHY"]
    setup: dict[str, Any]


class ReplicateFile(BaseModel):
    """An uploaded file input (``POST /v1/files``); ``urls.get`` is the file as a data URI."""

    id: str
    name: str
    content_type: str
    size: int
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    expires_at: str | None
    urls: dict[str, str]


def input_schema(kind: GenerationKind) -> dict[str, Any]:
    """The JSON Schema of a prediction's ``input`` for a ``kind`` job: the v1 JSON body's, without ``webhook_url``
    (a prediction's webhook is beside its input), ``image`` a data URI or URL (:data:`FILE_PATTERN`)."""
    schema = copy.deepcopy(body_doc(kind)["requestBody"]["content"][JSON]["schema"])
    properties = schema["properties"]
    properties.pop("webhook_url", None)
    image = {"type": "string", "pattern": FILE_PATTERN,
             "description": "Input image (PNG/JPEG/WebP) as a base64 data URI or an http(s) URL on a public host."}
    if properties["image"].get("type") != "null":
        properties["image"] = image if kind == "image-to-3d" else {"anyOf": [image, {"type": "null"}]}
    for rule in schema.get("anyOf", []):  # multiview: image xor prompt
        if "image" in rule.get("properties", {}) and rule["properties"]["image"].get("type") == "string":
            rule["properties"]["image"] = {"type": "string", "pattern": FILE_PATTERN}
    return schema


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description,
                            "content": {JSON: {"schema": schema}}}}


def replicate_body_doc(kind: GenerationKind | None, text_to_image_inputs: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of one model's create route (``kind`` None: text-to-image, with those inputs)."""
    schema = PredictionBody.model_json_schema()
    schema.pop("title", None)
    schema["properties"]["input"] = input_schema(kind) if kind is not None else text_to_image_inputs
    schema["required"] = ["input"]
    return _body(schema, "The prediction: `input` (the model's inputs), `webhook`, `webhook_events_filter`.")


def cog_body_doc() -> dict[str, Any]:
    """``openapi_extra`` of Cog's create routes: an ``input`` for image-to-3d (with ``image``) or text-to-3d."""
    schema = CogPredictionBody.model_json_schema()
    schema.pop("title", None)
    schema["properties"]["input"] = {"anyOf": [input_schema("image-to-3d"), input_schema("text-to-3d")]}
    schema["required"] = ["input"]
    return _body(schema, "The prediction: `input`, optional `id`, `webhook`, `webhook_events_filter`.")


def files_body_doc(max_bytes: int) -> dict[str, Any]:
    """``openapi_extra`` of ``POST /v1/files``: one ``content`` file part (``metadata`` JSON text optional)."""
    return {"requestBody": {"required": True, "content": {FORM_DATA: {"schema": {
        "type": "object", "required": ["content"], "additionalProperties": False, "properties": {
            "content": {"type": "string", "format": "binary", "description": f"The file, at most {max_bytes} bytes."},
            "metadata": {"type": "string", "description": "JSON object text (kept in the answer only)."}}}}}}}
