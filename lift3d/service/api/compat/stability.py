"""Stability's v2beta API (its API reference, "Stable Image" and "Results") on lift3d's SDXL stage and jobs.

- ``POST /v2beta/stable-image/generate/core`` — multipart ``prompt``, ``negative_prompt``, ``aspect_ratio``,
  ``seed``, ``style_preset``, ``output_format`` (png, jpeg, webp).
- ``POST /v2beta/stable-image/generate/sd3`` — the same plus ``mode`` (``text-to-image`` or ``image-to-image``),
  ``image`` and ``strength`` (image-to-image: 0 keeps the image, 1 ignores it), ``cfg_scale`` and ``model``.
  Both also take lift3d's own ``steps`` (denoising steps, default 30).
  lift3d serves no SD3: every accepted ``model`` — Stability's SD3 names (:data:`SD3_MODELS`) and lift3d's own ids
  (``sdxl``, the SDXL source) — is answered by the SDXL stage; any other value is refused (422, naming them).
- Both answer ``accept: image/*`` (the default, also for ``*/*``) with the image's bytes and the headers
  ``finish-reason`` and ``seed``, and ``accept: application/json`` with ``{"image", "seed", "finish_reason"}``.
- ``GET /v2beta/results/{id}`` — a lift3d 3D job (submitted by any route) as Stability's async results: ``202
  {"id", "status": "in-progress", "stage", "progress"}`` while it is queued or running; once it succeeded its result
  (the GLB, or the ZIP of views) as bytes with ``finish-reason`` and ``seed``, or with ``accept: application/json``
  ``{"id", "result", "content_type", "seed", "finish_reason"}``.

The generation routes map onto :meth:`~lift3d.service.jobs.image_service.ImageService.text_to_image` (which
validates, charges and generates): the prompt has weight 1, ``style_preset``'s words are a second positive prompt,
``negative_prompt`` has weight −1, ``aspect_ratio`` becomes a width and height (:func:`aspect_size`), ``strength``
becomes Stability v1's ``image_strength = 1 − strength``. Errors use the API's envelope ``{"id", "name", "errors"}``,
which is also Stability's v2beta error shape, with lift3d's statuses (422 for invalid fields).

Examples:
    >>> answer = httpx.post(url + "/v2beta/stable-image/generate/core", headers={"authorization": "Bearer sk-…",
    ...                     "accept": "image/*"}, files={"none": ""}, data={"prompt": "a lighthouse at dusk"})
    >>> answer.headers["finish-reason"], answer.headers["content-type"]
    ('SUCCESS', 'image/png')
    >>> aspect_size("16:9", 1024)
    (1344, 768)
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import FormData

from lift3d.errors import InvalidInputError
from lift3d.io.image_calls import EncodedSample
from lift3d.io.images import ImageLimits
from lift3d.io.media_types import FORM_DATA, GLB, JPEG, JSON, PNG, WEBP, ZIP
from lift3d.params.images import TextToImageParams, parse_model
from lift3d.service.api.bodies import FORM_MEDIA_TYPES, FORM_OVERHEAD_BYTES, field_types, form_fields, form_values, \
    media_type, read_form
from lift3d.service.api.compat.common import Caller, Config, Generations, Images, Limits
from lift3d.service.api.compat.openai import SDXL_SOURCES, encode_image, served_models
from lift3d.service.api.negotiation import wants_png
from lift3d.service.api.openapi import BINARY, error_responses, inline_refs, mib
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.image_service import ImageService
from lift3d.service.schemas import GenerationResult, ServiceUnavailableError, UnsupportedMediaTypeError

__all__ = ["ASPECT_RATIOS", "SD3_MODELS", "STYLE_PRESETS", "STYLE_WEIGHT", "ImageAnswer", "JobResult", "JobRunning",
           "aspect_size", "router", "styled_prompts"]

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
"""Stability's aspect ratios (width:height)."""
SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3-large", "sd3-large-turbo", "sd3-medium")
"""Stability's ``model`` values of ``generate/sd3``: accepted, and answered by the SDXL stage."""

STYLE_PRESETS: dict[str, tuple[str, str]] = {
    "3d-model": ("3D render, octane render, detailed, volumetric lighting", "photo, painting, blurry"),
    "analog-film": ("analog film photo, faded film, grain, vintage", "digital, 3d render, painting"),
    "anime": ("anime artwork, anime style, key visual, vibrant", "photo, realistic, 3d render"),
    "cinematic": ("cinematic film still, shallow depth of field, film grain", "cartoon, drawing, anime"),
    "comic-book": ("comic book panel, bold ink lines, graphic", "photo, realistic, 3d render"),
    "digital-art": ("digital artwork, concept art, detailed", "photo, film grain"),
    "enhance": ("highly detailed, sharp focus, vivid", "blurry, low quality, noisy"),
    "fantasy-art": ("fantasy painting, magical, epic, ethereal", "photo, modern, plain"),
    "isometric": ("isometric view, clean lines, 3d, centered", "perspective, photo, blurry"),
    "line-art": ("line art drawing, clean lines, monochrome, minimalist", "color, shading, photo"),
    "low-poly": ("low-poly 3d model, flat shaded polygons", "smooth, photo, detailed texture"),
    "modeling-compound": ("made of modeling clay, claymation, handmade", "photo, drawing, digital"),
    "neon-punk": ("neon-punk style, cyberpunk, neon lights, vibrant", "muted colours, daylight"),
    "origami": ("origami, folded paper, clean", "photo, painting, clutter"),
    "photographic": ("photograph, 50mm, natural light, detailed", "drawing, painting, cartoon"),
    "pixel-art": ("pixel art, 16-bit, retro game sprite", "smooth, photo, 3d render"),
    "tile-texture": ("seamless tiling texture, flat, top-down", "perspective, object, border"),
}
"""Stability's style presets as (style words, negative words): lift3d's own words for each style, in the manner of
the SDXL style prompts that Stability's apps publish. The style words join the prompt as a second positive prompt of
weight :data:`STYLE_WEIGHT` (Stability v1's weighted prompts), the negative words as a negative prompt."""
STYLE_WEIGHT = 0.6
"""Weight of a style's words beside the prompt's 1: the subject stays the prompt's."""

_OUTPUT_TYPES = {"png": PNG, "jpeg": JPEG, "webp": WEBP}


# ------------------------------------------------------------------------------------------------ bodies
class _CoreFields(BaseModel):
    """Stability's ``generate/core`` fields as lift3d reads them (ranges: TextToImageParams')."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What to generate.")
    negative_prompt: str | None = Field(None, description="What to keep out of the image.")
    aspect_ratio: Literal[ASPECT_RATIOS] = Field("1:1", description="Width:height of the image (about the model's "
                                                 "area: 1024² px for SDXL).")
    seed: int = Field(0, description="0: random; the answer's `seed` header says which was used.")
    style_preset: Literal[tuple(STYLE_PRESETS)] | None = Field(None, description="A style to add to the prompt.")
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of the image.")
    steps: int | None = Field(None, description="lift3d's own: denoising steps (omitted: 30).")


class _SD3Fields(_CoreFields):
    """Stability's ``generate/sd3`` fields."""

    output_format: Literal["png", "jpeg"] = Field("png", description="Encoding of the image.")
    mode: Literal["text-to-image", "image-to-image"] = Field("text-to-image", description="`image-to-image` needs "
                                                              "`image` and `strength`.")
    strength: float | None = Field(None, description="Image-to-image: how much to change the image (0: keep it, "
                                   "1: ignore it).")
    cfg_scale: float | None = Field(None, description="Classifier-free guidance scale; omitted: 7.")
    model: str | None = Field(None, description="Stability's SD3 names or lift3d's ids, all served by SDXL.")


_TYPES = field_types(_SD3Fields.model_json_schema()["properties"])


class ImageAnswer(BaseModel):
    """Stability's JSON answer (``accept: application/json``)."""

    image: str = Field(description="The image, base64.")
    seed: int
    finish_reason: Literal["SUCCESS"] = "SUCCESS"


class JobRunning(BaseModel):
    """A job still queued or running (``202``)."""

    id: str
    status: Literal["in-progress"] = "in-progress"
    stage: str | None = Field(None, description="lift3d: the step now running.")
    progress: float | None = Field(None, description="lift3d: fraction done, 0-1.")


class JobResult(BaseModel):
    """A finished job's result as JSON (``accept: application/json``)."""

    id: str
    result: str = Field(description="The GLB (or ZIP of views), base64.")
    content_type: str
    seed: int
    finish_reason: Literal["SUCCESS"] = "SUCCESS"


# ------------------------------------------------------------------------------------------------ mapping
def aspect_size(aspect_ratio: str, side: int) -> tuple[int, int]:
    """(width, height) in multiples of 64 px (at least 64) of ``aspect_ratio`` (``"W:H"``) with about the area of a
    ``side``² image: ``side·√r`` × ``side/√r`` rounded to 64. For SDXL (1024) these are SDXL's training buckets
    (``16:9`` → 1344×768, ``21:9`` → 1536×640, ``4:5`` → 896×1152).

    Examples:
        >>> aspect_size("1:1", 1024), aspect_size("9:21", 1024), aspect_size("21:9", 64)
        ((1024, 1024), (640, 1536), (128, 64))
    """
    width, height = (int(part) for part in aspect_ratio.split(":"))
    root = math.sqrt(width / height)
    return (max(64, round(side * root / 64) * 64), max(64, round(side / root / 64) * 64))


def styled_prompts(prompt: str, negative_prompt: str | None, style_preset: str | None) -> list[dict[str, Any]]:
    """Stability v1's weighted prompts: the prompt (weight 1) and the style's words (:data:`STYLE_WEIGHT`), then the
    negative prompt and the style's negative words (weight −1 each); an empty negative prompt is none."""
    style, style_negative = STYLE_PRESETS[style_preset] if style_preset is not None else (None, None)
    prompts = [{"text": prompt, "weight": 1.0}]
    prompts += [{"text": style, "weight": STYLE_WEIGHT}] if style else []
    return prompts + [{"text": text, "weight": -1.0} for text in (negative_prompt, style_negative) if text]


def _model_side(config: ServiceConfig) -> int:
    """The served SDXL's side in pixels: 64 for the tiny preset's model, else SDXL's 1024."""
    return 64 if SDXL_SOURCES.get(config.preset) == "tiny" else 1024


def _check_model(model: str | None, config: ServiceConfig) -> None:
    accepted = (*SD3_MODELS, *served_models(config))
    if model is not None and model not in accepted:
        raise InvalidInputError(f"model: {model[:200]!r} is not served here; one of {', '.join(accepted)} (all "
                                "answered by this server's SDXL)")


def _params(fields: _CoreFields, config: ServiceConfig, image: bytes | None) -> TextToImageParams:
    values: dict[str, Any] = {"text_prompts": styled_prompts(fields.prompt, fields.negative_prompt,
                                                             fields.style_preset), "seed": fields.seed}
    if fields.steps is not None:
        values["steps"] = fields.steps
    if isinstance(fields, _SD3Fields):
        _check_model(fields.model, config)
        if fields.cfg_scale is not None:
            values["cfg_scale"] = fields.cfg_scale
        if fields.mode == "image-to-image":
            if image is None or fields.strength is None:
                raise InvalidInputError("mode: image-to-image needs an `image` file and a `strength`")
            values["image_strength"] = 1.0 - fields.strength
        elif image is not None or fields.strength is not None:
            raise InvalidInputError("mode: `image` and `strength` go with mode=image-to-image")
    if image is None:
        values["width"], values["height"] = aspect_size(fields.aspect_ratio, _model_side(config))
    try:
        return parse_model(TextToImageParams, values)
    except InvalidInputError as error:  # the style's words are valid: a prompt at fault is the prompt or the negative
        messages = [re.sub(r"^text_prompts\.(\d+)\.text:", lambda m: "prompt:" if m[1] == "0" else "negative_prompt:",
                           message) for message in (error.errors or [str(error)])]
        renamed = InvalidInputError("; ".join(messages))
        renamed.errors = messages
        raise renamed from None


def _wants_json(accept: str | None) -> bool:
    """Whether ``accept`` asks for JSON: it names ``application/json`` (with q > 0) and ranks no image type above
    it (Stability answers ``image/*`` by default, ``*/*`` included)."""
    for part in (accept or "").split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        if media == JSON and q.replace(".", "", 1).isdigit() and float(q) > 0:
            return not wants_png(accept)
    return False


def _available(images: ImageService | None) -> ImageService:
    if images is None:
        raise ServiceUnavailableError("image generation is not configured on this server")
    return images


async def _form(request: Request, limits: ImageLimits, model: type[_CoreFields]) -> tuple[_CoreFields, bytes | None]:
    """The typed fields and the image of a form body. An empty part named ``none`` is skipped: Stability's own
    examples add ``files={"none": ""}`` to make ``requests`` send multipart."""
    if media_type(request) not in FORM_MEDIA_TYPES:
        raise UnsupportedMediaTypeError("send multipart/form-data (Stability's v2beta bodies are forms)")
    form = await read_form(request, limits.max_bytes + FORM_OVERHEAD_BYTES, "request body is larger than "
                           f"{mib(limits.max_bytes + FORM_OVERHEAD_BYTES)}", max_files=2, max_fields=16)
    try:
        parts = [(key, value) for key, value in form.multi_items()
                 if not (key == "none" and (value == "" or getattr(value, "size", None) == 0))]
        fields, image = await form_fields(FormData(parts), "image", limits.max_bytes, "image")
    finally:
        await form.close()
    if "image" in fields:
        raise InvalidInputError("image: send the image as a file part (PNG, JPEG or WebP), not as text")
    if image is not None and model is _CoreFields:
        raise InvalidInputError("image: generate/core takes no image")
    return parse_model(model, form_values(fields, _TYPES)), image


def _answer(request: Request, sample: EncodedSample, output_format: str) -> Response:
    data = encode_image(sample, output_format, 95)
    if _wants_json(request.headers.get("accept")):
        return JSONResponse(ImageAnswer(image=base64.b64encode(data).decode("ascii"), seed=sample.seed,
                                        finish_reason=sample.finish_reason).model_dump())
    return Response(data, media_type=_OUTPUT_TYPES[output_format],
                    headers={"finish-reason": sample.finish_reason, "seed": str(sample.seed)})


# ------------------------------------------------------------------------------------------------ routes
async def _generate(request: Request, caller, images, config, limits, model: type[_CoreFields]) -> Response:
    fields, image = await _form(request, limits, model)
    params = _params(fields, config, image)
    result = await asyncio.to_thread(_available(images).text_to_image, params, image, None, caller)
    sample = result.samples[0]
    return await asyncio.to_thread(_answer, request, sample, fields.output_format)


async def core(request: Request, caller: Caller, images: Images, config: Config, limits: Limits) -> Response:
    return await _generate(request, caller, images, config, limits, _CoreFields)


async def sd3(request: Request, caller: Caller, images: Images, config: Config, limits: Limits) -> Response:
    return await _generate(request, caller, images, config, limits, _SD3Fields)


async def results(id: str, request: Request, caller: Caller, service: Generations) -> Response:
    status = await asyncio.to_thread(service.status, id, False, caller)
    if not isinstance(status, GenerationResult):
        body = JobRunning(id=id, stage=status.stage, progress=status.progress)
        return JSONResponse(body.model_dump(), status_code=202)
    found = await asyncio.to_thread(service.content, id, caller)
    data, content_type = found if found is not None else (b"", status.content_type)
    seed = status.seed if status.seed is not None else 0
    if _wants_json(request.headers.get("accept")):
        return JSONResponse(JobResult(id=id, result=base64.b64encode(data).decode("ascii"),
                                      content_type=content_type, seed=seed).model_dump())
    return Response(data, media_type=content_type, headers={"finish-reason": "SUCCESS", "seed": str(seed)})


# ------------------------------------------------------------------------------------------------ OpenAPI
def _form_doc(model: type[_CoreFields], config: ServiceConfig, limits: ImageLimits) -> dict:
    """The multipart body as documented: the fields' types, with TextToImageParams' ranges where they decide."""
    source = TextToImageParams.model_json_schema()
    t2i = inline_refs(source["properties"], source.get("$defs", {}))
    text = t2i["text_prompts"]["items"]["properties"]["text"]
    properties = {}
    for name, schema in model.model_json_schema()["properties"].items():
        schema = dict(schema)
        if "anyOf" in schema:
            (value,) = [s for s in schema.pop("anyOf") if s.get("type") != "null"]
            schema.update(value)
            schema.pop("default", None)
        schema.pop("title", None)
        properties[name] = schema
    properties["prompt"].update(minLength=text["minLength"], maxLength=text["maxLength"])
    properties["negative_prompt"].update(maxLength=text["maxLength"])
    for name in ("seed", "steps"):
        properties[name].update(minimum=t2i[name]["minimum"], maximum=t2i[name]["maximum"])
    rules: dict[str, Any] = {}
    if model is _SD3Fields:
        properties["cfg_scale"].update(minimum=t2i["cfg_scale"]["minimum"], maximum=t2i["cfg_scale"]["maximum"])
        properties["strength"].update(minimum=0, maximum=1)
        properties["model"]["enum"] = [*SD3_MODELS, *served_models(config)]
        properties["image"] = {"type": "string", "format": "binary", "description": "Image-to-image: the start "
                               f"image, PNG/JPEG/WebP, at most {mib(limits.max_bytes)}."}
        rules = {"if": {"required": ["mode"], "properties": {"mode": {"const": "image-to-image"}}},
                 "then": {"required": ["image", "strength"]},
                 "else": {"not": {"anyOf": [{"required": ["image"]}, {"required": ["strength"]}]}}}
    schema = {"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": properties,
              **rules}
    return {"requestBody": {"required": True, "content": {FORM_DATA: {"schema": schema}}}}


_IMAGE_ANSWER = {
    200: {"model": ImageAnswer, "description": "`accept: image/*` (default): the image, with headers "
          "`finish-reason` and `seed`; `accept: application/json`: JSON.",
          "content": {PNG: BINARY, JPEG: BINARY, WEBP: BINARY},
          "headers": {"finish-reason": {"schema": {"type": "string"}, "description": "`SUCCESS`."},
                      "seed": {"schema": {"type": "string"}, "description": "The seed used."}}},
    **error_responses(400, 402, 413, 415, 422, 500, 503, texts={
        422: "Invalid fields or image (each message names its field), or an unknown `model`.",
        500: "Generation failed (the charge was returned).", 503: "No SDXL deployment on this server."})}
_RESULT_ANSWER = {
    200: {"model": JobResult, "description": "The result: the GLB or ZIP (headers `finish-reason`, `seed`), or "
          "with `accept: application/json` JSON.", "content": {GLB: BINARY, ZIP: BINARY}},
    202: {"model": JobRunning, "description": "Still queued or running; ask again."},
    **error_responses(404, 410, 422, 500, 503, failed=True)}


def router(config: ServiceConfig = ServiceConfig(), limits: ImageLimits = ImageLimits()) -> APIRouter:
    """The routes, documented for ``config``'s models and ``limits``' uploads (the app's)."""
    routes = APIRouter()
    routes.add_api_route("/v2beta/stable-image/generate/core", core, methods=["POST"], response_class=Response,
                         responses=_IMAGE_ANSWER, openapi_extra=_form_doc(_CoreFields, config, limits),
                         summary="Prompt → image (Stability's Stable Image Core API, on SDXL)")
    routes.add_api_route("/v2beta/stable-image/generate/sd3", sd3, methods=["POST"], response_class=Response,
                         responses=_IMAGE_ANSWER, openapi_extra=_form_doc(_SD3Fields, config, limits),
                         summary="Prompt (or image + prompt) → image (Stability's SD3 API, answered by SDXL)")
    routes.add_api_route("/v2beta/results/{id}", results, methods=["GET"], response_class=Response,
                         responses=_RESULT_ANSWER, summary="A 3D job as Stability's async result (202 while running)")
    return routes
