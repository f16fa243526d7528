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
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.params.images import PoseParams, RegionParams, TextToImageParams, parse_model
from lift3d.io.image_calls import EncodedSample
from lift3d.io.images import ImageLimits
from lift3d.service.auth import principal
from lift3d.service.http import (BASE64_PATTERN, FORM_OVERHEAD_BYTES, _field_types, _form_values, _json_values,
                                 _not_null, error_response, parse_json_object, read_body, read_form)
from lift3d.service.images import ImageService
from lift3d.service.schema_docs import inline_refs
from lift3d.service.schemas import ErrorBody, UnsupportedMediaTypeError, decode_image

__all__ = ["ImageArtifact", "ImageArtifacts", "PoseImages", "add_image_routes"]

_T2I_TYPES = _field_types(TextToImageParams.model_json_schema()["properties"])
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


def wants_png(accept: str | None) -> bool:
    """Whether ``Accept`` prefers ``image/png`` (or ``image/*``) to ``application/json``; JSON when absent."""
    best: dict[str, float] = {"json": 0.0, "png": 0.0}
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = next((float(p[2:]) for p in params if p.startswith("q=") and re.fullmatch(r"q=[01](\.\d+)?", p)), 1.0)
        if media == "application/json":
            best["json"] = max(best["json"], q)
        elif media in ("image/png", "image/*"):
            best["png"] = max(best["png"], q)
    return best["png"] > best["json"]


def _image_response(request: Request, samples: list[EncodedSample]) -> Response:
    """Stability's answer for ``samples`` by the request's ``Accept``."""
    if not wants_png(request.headers.get("accept")):
        return JSONResponse(ImageArtifacts(artifacts=_artifacts(samples)).model_dump())
    if len(samples) != 1:
        return error_response("invalid_parameters", ["samples: Accept: image/png answers one image; ask for "
                                                     "samples=1 or Accept: application/json"])
    sample = samples[0]
    return Response(sample.image.data, media_type="image/png",
                    headers={"Seed": str(sample.seed), "Finish-Reason": sample.finish_reason})


async def _text_to_image_body(request: Request, limits: ImageLimits
                              ) -> tuple[TextToImageParams, bytes | None, bytes | None]:
    """Parameters and the init/mask image bytes of a JSON or multipart text-to-image body."""
    body_limit = 2 * (limits.max_bytes * 4 // 3) + FORM_OVERHEAD_BYTES
    too_large = "request body is larger than the two images it may carry"
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    images: dict[str, bytes | None] = {"init_image": None, "mask_image": None}
    if media == "application/json":
        fields = _json_values(parse_json_object(await read_body(request, body_limit, too_large)), _T2I_TYPES)
        for name in images:
            if name not in fields:
                continue
            value = fields.pop(name)
            if not isinstance(value, str):
                raise InvalidInputError(f"{name}: a base64 string (omit the field for none)")
            images[name] = decode_image(value, limits.max_bytes) if value else None  # "": none, as in forms
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
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
    fields = _form_values(fields, _T2I_TYPES)
    if prompts:
        fields["text_prompts"] = [_form_values(prompts[i], _PROMPT_TYPES) for i in sorted(prompts)]
    return fields


async def _json_fields(request: Request, limit: int, model: type[BaseModel]) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaTypeError("send application/json")
    fields = parse_json_object(await read_body(request, limit, "request body is too large"))
    return _json_values(fields, _field_types(model.model_json_schema()["properties"]))


_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "Unreadable body (malformed JSON, form or base64).", 402: "The key's balance is below the price.",
    413: "Body or image over its size limit.", 415: "Unsupported Content-Type.",
    422: "Invalid parameters or images (each message names its field).", 429: "Over the key's requests per minute.",
    500: "Generation failed (the charge was returned).", 503: "The SDXL deployment is unavailable."}.items()}
_PNG = {"schema": {"type": "string", "format": "binary"}}


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
    content = {"application/json": {"schema": schema,
                                    "examples": {f"example{i}": {"value": v} for i, v in enumerate(examples)}}}
    return {"requestBody": {"required": True, "content": content}}


def _stability_form_schema() -> dict[str, Any]:
    """Stability's multipart form: one weighted prompt field pair (``text_prompts[i][…]``, i < 10), the scalar
    parameters as text, and the two image files."""
    properties = _model_schema(TextToImageParams)["properties"]
    prompt = _model_schema(TextToImageParams)["properties"]["text_prompts"]["items"]["properties"]
    fields = {name: _not_null(schema) if "anyOf" in schema else schema for name, schema in properties.items()
              if name != "text_prompts"}
    fields["sampler"]["enum"] = [name for name in fields["sampler"]["enum"] if name is not None]
    fields["text_prompts[0][text]"] = prompt["text"]
    fields["text_prompts[0][weight]"] = {**prompt["weight"], "exclusiveMinimum": 0, "description":
                                         "Weight of the first prompt (> 0); send text_prompts[1][…] and on for more."}
    for name in ("init_image", "mask_image"):
        fields[name] = {"type": "string", "format": "binary"}
    return {"type": "object", "required": ["text_prompts[0][text]"], "properties": fields,
            "additionalProperties": False, "dependentRequired": _MASK_NEEDS_INIT}


def add_image_routes(api: FastAPI, images: ImageService | None, limits: ImageLimits) -> None:
    """Add the three image routes to ``api``. Without ``images`` (no SDXL deployment) they answer 503."""

    async def run(method: str, *args) -> Any:
        if images is None:
            raise _NotConfigured()
        return await asyncio.to_thread(getattr(images, method), *args)

    async def answer(call) -> Response:
        try:
            return await call()
        except _NotConfigured:
            return error_response("service_unavailable", ["image generation is not configured on this server"])
        except Lift3DError as exc:
            return error_response(exc.name, getattr(exc, "errors", None) or [str(exc)])

    image_fields = {"init_image": {**_BASE64, "description": "Image-to-image: base64 PNG/JPEG/WebP; "
                                   "`image_strength` keeps that much of it."},
                    "mask_image": {**_BASE64, "description": "Inpainting: base64 mask (see `mask_source`); needs "
                                   "`init_image`."}}
    t2i_body = _json_body(TextToImageParams, image_fields)
    t2i_body["requestBody"]["content"]["application/json"]["schema"]["dependentRequired"] = _MASK_NEEDS_INIT
    t2i_body["requestBody"]["content"]["multipart/form-data"] = {"schema": _stability_form_schema()}
    images_answer = {200: {"model": ImageArtifacts, "description": "The images (`Accept: application/json`), or "
                           "with `Accept: image/png` the one PNG (headers `Seed`, `Finish-Reason`).",
                           "content": {"image/png": _PNG}}, **_ERRORS}

    @api.post("/v1/generation/text-to-image", summary="Text → image (Stability v1 body; img2img, inpainting)",
              responses=images_answer, openapi_extra=t2i_body)
    async def text_to_image(request: Request) -> Response:
        async def call():
            params, init, mask = await _text_to_image_body(request, limits)
            result = await run("text_to_image", params, init, mask, principal(request))
            return _image_response(request, result.samples)
        return await answer(call)

    @api.post("/v1/generation/text-to-image/regions", summary="Region prompts → image (MultiDiffusion)",
              responses=images_answer, openapi_extra=_json_body(RegionParams))
    async def regions(request: Request) -> Response:
        async def call():
            fields = await _json_fields(request, 8 * (limits.max_bytes * 4 // 3) + FORM_OVERHEAD_BYTES, RegionParams)
            result = await run("regions", parse_model(RegionParams, fields), principal(request))
            return _image_response(request, result.samples)
        return await answer(call)

    @api.post("/v1/generation/text-to-image/pose", summary="Pose of a reference photo → image (OpenPose ControlNet)",
              responses={200: {"model": PoseImages, "description": "`base64: true`: JSON; else the first image "
                               "as `image/jpeg` (header `Seed`).", "content": {"image/jpeg": _PNG}}, **_ERRORS},
              openapi_extra=_json_body(PoseParams))
    async def pose(request: Request) -> Response:
        async def call():
            fields = await _json_fields(request, limits.max_bytes * 4 // 3 + FORM_OVERHEAD_BYTES, PoseParams)
            params = parse_model(PoseParams, fields)
            result = await run("pose", params, principal(request))
            if params.base64:
                first = base64.b64encode(_jpeg(result.samples[0])).decode("ascii")
                return JSONResponse(PoseImages(image=first, artifacts=_artifacts(result.samples)).model_dump())
            return Response(_jpeg(result.samples[0]), media_type="image/jpeg",
                            headers={"Seed": str(result.samples[0].seed)})
        return await answer(call)


class _NotConfigured(Exception):
    """No image service behind the routes."""
