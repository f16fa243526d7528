"""The synchronous image endpoints: the answer is the image.

- ``POST /v1/generation/text-to-image`` — Stability's v1 body (:class:`~lift3d.params.images.TextToImageParams`) as
  JSON (``init_image``/``mask_image`` base64) or multipart (Stability's form: ``text_prompts[0][text]``,
  ``text_prompts[0][weight]``, … and ``init_image``/``mask_image`` files). ``Accept: application/json`` (default)
  → ``{"artifacts": [{"base64", "seed", "finishReason"}]}``; ``Accept: image/png`` → the PNG of the one sample,
  with ``Seed`` and ``Finish-Reason`` headers, as Stability answers.
- ``POST /v1/generation/text-to-image/regions`` — the MultiDiffusion region API body
  (:class:`~lift3d.params.images.RegionParams`; numbers may be strings); answers as text-to-image.
- ``POST /v1/generation/text-to-image/pose`` — Segmind's pose body (:class:`~lift3d.params.images.PoseParams`);
  ``base64: false`` → ``image/jpeg`` of the first sample, ``true`` → ``{"image", "artifacts"}``.

Errors use the envelope; a request is charged its price before generating and gets it back when generation fails.
Without an image service (:data:`~lift3d.service.api.deps.Images`: no SDXL deployment) the routes answer ``503``
once the body was read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lift3d.errors import InvalidInputError
from lift3d.io.image_calls import EncodedSample
from lift3d.io.images import ImageLimits
from lift3d.io.media_types import FORM_DATA, JPEG, JSON, PNG
from lift3d.params.images import PoseParams, RegionParams, TextToImageParams, parse_model
from lift3d.service.api.bodies import (FORM_MEDIA_TYPES, FORM_OVERHEAD_BYTES, field_types, form_values, json_values,
                                       media_type, parse_json_object, read_body, read_form)
from lift3d.service.api.deps import Caller, Images, Limits
from lift3d.service.api.negotiation import wants_png
from lift3d.service.api.openapi import BASE64_PATTERN, BINARY, inline_refs, not_null
from lift3d.service.jobs.image_service import ImageService
from lift3d.service.schemas import ErrorBody, ServiceUnavailableError, UnsupportedMediaTypeError, decode_image

__all__ = ["ImageArtifact", "ImageArtifacts", "PoseImages", "router"]

_T2I_TYPES = field_types(TextToImageParams.model_json_schema()["properties"])
_PROMPT_TYPES = {"text": "string", "weight": "number"}
_STABILITY_PROMPT_FIELD = re.compile(r"^text_prompts\[(\d{1,2})\]\[(text|weight)\]$")


class ImageArtifact(BaseModel):
    """One generated image (Stability's artifact)."""

    base64: str = Field(description="The PNG, base64-encoded.")
    seed: int = Field(description="Seed of this image: asking again with it (and samples=1) gives the same bytes.")
    finishReason: str = Field("SUCCESS", description="SUCCESS (lift3d has no content filter).")


class ImageArtifacts(BaseModel):
    """Stability's JSON answer."""

    artifacts: list[ImageArtifact]


class PoseImages(ImageArtifacts):
    """Segmind's ``base64: true`` answer (``image``) plus every sample (``artifacts``)."""

    image: str = Field(description="The first image, base64-encoded JPEG.")


def _artifacts(samples: list[EncodedSample]) -> list[dict[str, Any]]:
    return [ImageArtifact(base64=base64.b64encode(s.image.data).decode("ascii"), seed=s.seed,
                          finishReason=s.finish_reason).model_dump() for s in samples]


def _jpeg(sample: EncodedSample) -> bytes:
    buffer = io.BytesIO()
    sample.image.image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _image_response(request: Request, samples: list[EncodedSample]) -> Response:
    """Stability's answer for ``samples`` by the request's ``Accept``."""
    if not wants_png(request.headers.get("accept")):
        return JSONResponse(ImageArtifacts(artifacts=_artifacts(samples)).model_dump())
    if len(samples) != 1:
        raise InvalidInputError("samples: Accept: image/png answers one image; ask for samples=1 or "
                                "Accept: application/json")
    sample = samples[0]
    return Response(sample.image.data, media_type=PNG,
                    headers={"Seed": str(sample.seed), "Finish-Reason": sample.finish_reason})


async def _text_to_image_body(request: Request, limits: ImageLimits
                              ) -> tuple[TextToImageParams, bytes | None, bytes | None]:
    """Parameters and the init/mask image bytes of a JSON or multipart text-to-image body."""
    body_limit = 2 * (limits.max_bytes * 4 // 3) + FORM_OVERHEAD_BYTES
    too_large = "request body is larger than the two images it may carry"
    media = media_type(request)
    images: dict[str, bytes | None] = {"init_image": None, "mask_image": None}
    if media == JSON:
        fields = json_values(parse_json_object(await read_body(request, body_limit, too_large)), _T2I_TYPES)
        for name in images:
            if name not in fields:
                continue
            value = fields.pop(name)
            if not isinstance(value, str):
                raise InvalidInputError(f"{name}: a base64 string (omit the field for none)")
            images[name] = decode_image(value, limits.max_bytes) if value else None  # "": none, as in forms
    elif media in FORM_MEDIA_TYPES:
        form = await read_form(request, body_limit, too_large, max_files=2, max_fields=48)
        try:
            fields = await _stability_form(form, images, limits)
        finally:
            await form.close()
    else:
        raise UnsupportedMediaTypeError("send application/json, or multipart/form-data with init_image/mask_image "
                                        "files")
    return parse_model(TextToImageParams, fields), images["init_image"], images["mask_image"]


async def _stability_form(form, images: dict[str, bytes | None], limits: ImageLimits) -> dict[str, Any]:
    """Stability's multipart form as body fields: ``text_prompts[i][text|weight]`` → ``text_prompts``; files into
    ``images``; other fields as text (validated, and converted where numeric, by the model)."""
    fields: dict[str, Any] = {}
    prompts: dict[int, dict[str, str]] = {}
    for key, value in form.multi_items():
        if key in images:
            if isinstance(value, str):
                images[key] = decode_image(value, limits.max_bytes) if value else None
            else:
                data = await value.read()
                if len(data) > limits.max_bytes:
                    raise InvalidInputError(f"{key}: larger than {limits.max_bytes // (1024 * 1024)} MiB")
                images[key] = data
            continue
        if not isinstance(value, str):
            raise InvalidInputError(f"{key}: unexpected file; only init_image and mask_image are files")
        match = _STABILITY_PROMPT_FIELD.match(key)
        if match:
            prompts.setdefault(int(match[1]), {})[match[2]] = value
        elif key in fields:
            raise InvalidInputError(f"{key}: given more than once")
        else:
            fields[key] = value
    fields = form_values(fields, _T2I_TYPES)
    if prompts:
        fields["text_prompts"] = [form_values(prompts[i], _PROMPT_TYPES) for i in sorted(prompts)]
    return fields


async def _json_fields(request: Request, limit: int, model: type[BaseModel]) -> dict[str, Any]:
    if media_type(request) != JSON:
        raise UnsupportedMediaTypeError("send application/json")
    fields = parse_json_object(await read_body(request, limit, "request body is too large"))
    return json_values(fields, field_types(model.model_json_schema()["properties"]))


_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "Unreadable body (malformed JSON, form or base64).", 402: "The key's balance is below the price.",
    413: "Body or image over its size limit.", 415: "Unsupported Content-Type.",
    422: "Invalid parameters or images (each message names its field).", 429: "Over the key's requests per minute.",
    500: "Generation failed (the charge was returned).", 503: "The SDXL deployment is unavailable."}.items()}


_BASE64 = {"type": "string", "format": "byte", "pattern": BASE64_PATTERN}
_MASK_NEEDS_INIT = {"mask_image": ["init_image"]}
"""Inpainting paints into an image: a mask alone is refused (:meth:`ImageService.text_to_image`)."""


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema, refs inlined, base64 image fields with their pattern, without examples."""
    schema = model.model_json_schema()
    schema = inline_refs(schema, schema.pop("$defs", {}))
    schema.pop("examples", None)
    for name, field in schema.get("properties", {}).items():
        if name in ("image", "masks", "pose_image"):
            if field.get("type") == "array":
                field["items"] = {**field.get("items", {}), **_BASE64, "minLength": 1}
            else:
                field.update(_BASE64)
    return schema


def _json_body(model: type[BaseModel], extra_properties: dict | None = None) -> dict:
    schema = _model_schema(model)
    schema["properties"].update(extra_properties or {})
    examples = (model.model_config.get("json_schema_extra") or {}).get("examples", [])
    content = {JSON: {"schema": schema,
                                    "examples": {f"example{i}": {"value": v} for i, v in enumerate(examples)}}}
    return {"requestBody": {"required": True, "content": content}}


def _stability_form_schema() -> dict[str, Any]:
    """Stability's multipart form: one weighted prompt field pair (``text_prompts[i][…]``, i < 10), the scalar
    parameters as text, and the two image files."""
    properties = _model_schema(TextToImageParams)["properties"]
    prompt = _model_schema(TextToImageParams)["properties"]["text_prompts"]["items"]["properties"]
    fields = {name: not_null(schema) if "anyOf" in schema else schema for name, schema in properties.items()
              if name != "text_prompts"}
    fields["sampler"]["enum"] = [name for name in fields["sampler"]["enum"] if name is not None]
    fields["text_prompts[0][text]"] = prompt["text"]
    fields["text_prompts[0][weight]"] = {**prompt["weight"], "exclusiveMinimum": 0, "description":
                                         "Weight of the first prompt (> 0); send text_prompts[1][…] and on for more."}
    for name in ("init_image", "mask_image"):
        fields[name] = {"type": "string", "format": "binary"}
    return {"type": "object", "required": ["text_prompts[0][text]"], "properties": fields,
            "additionalProperties": False, "dependentRequired": _MASK_NEEDS_INIT}


def _t2i_body() -> dict:
    """``openapi_extra`` of text-to-image: Stability's JSON body (images base64) and its multipart form."""
    image_fields = {"init_image": {**_BASE64, "description": "Image-to-image: base64 PNG/JPEG/WebP; "
                                   "`image_strength` keeps that much of it."},
                    "mask_image": {**_BASE64, "description": "Inpainting: base64 mask (see `mask_source`); needs "
                                   "`init_image`."}}
    body = _json_body(TextToImageParams, image_fields)
    body["requestBody"]["content"][JSON]["schema"]["dependentRequired"] = _MASK_NEEDS_INIT
    body["requestBody"]["content"][FORM_DATA] = {"schema": _stability_form_schema()}
    return body


def _available(images: ImageService | None) -> ImageService:
    """Raises ServiceUnavailableError (503) without an image service."""
    if images is None:
        raise ServiceUnavailableError("image generation is not configured on this server")
    return images


_IMAGES_ANSWER = {200: {"model": ImageArtifacts, "description": "The images (`Accept: application/json`), or with "
                        "`Accept: image/png` the one PNG (headers `Seed`, `Finish-Reason`).",
                        "content": {PNG: BINARY}}, **_ERRORS}
_POSE_ANSWER = {200: {"model": PoseImages, "description": "`base64: true`: JSON; else the first image as "
                      "`image/jpeg` (header `Seed`).", "content": {JPEG: BINARY}}, **_ERRORS}

router = APIRouter()


@router.post("/v1/generation/text-to-image", summary="Text → image (Stability v1 body; img2img, inpainting)",
             responses=_IMAGES_ANSWER, openapi_extra=_t2i_body())
async def text_to_image(request: Request, caller: Caller, images: Images, limits: Limits) -> Response:
    params, init, mask = await _text_to_image_body(request, limits)
    result = await asyncio.to_thread(_available(images).text_to_image, params, init, mask, caller)
    return _image_response(request, result.samples)


@router.post("/v1/generation/text-to-image/regions", summary="Region prompts → image (MultiDiffusion)",
             responses=_IMAGES_ANSWER, openapi_extra=_json_body(RegionParams))
async def regions(request: Request, caller: Caller, images: Images, limits: Limits) -> Response:
    fields = await _json_fields(request, 8 * (limits.max_bytes * 4 // 3) + FORM_OVERHEAD_BYTES, RegionParams)
    result = await asyncio.to_thread(_available(images).regions, parse_model(RegionParams, fields), caller)
    return _image_response(request, result.samples)


@router.post("/v1/generation/text-to-image/pose", summary="Pose of a reference photo → image (OpenPose ControlNet)",
             responses=_POSE_ANSWER, openapi_extra=_json_body(PoseParams))
async def pose(request: Request, caller: Caller, images: Images, limits: Limits) -> Response:
    fields = await _json_fields(request, limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES, PoseParams)
    params = parse_model(PoseParams, fields)
    result = await asyncio.to_thread(_available(images).pose, params, caller)
    first = _jpeg(result.samples[0])
    if params.base64:
        encoded = base64.b64encode(first).decode("ascii")
        return JSONResponse(PoseImages(image=encoded, artifacts=_artifacts(result.samples)).model_dump())
    return Response(first, media_type=JPEG, headers={"Seed": str(result.samples[0].seed)})
