"""OpenAI's image API on the SDXL stage, for clients that speak it (the ``openai`` package with ``base_url=``,
LiteLLM, Open WebUI).

- ``POST /v1/images/generations`` — JSON ``{prompt, model, n, size, response_format, output_format, …}`` →
  ``{"created", "data": [{"b64_json" | "url", "seed"}], "size", "output_format"}`` (OpenAI's ``ImagesResponse``;
  ``seed`` is lift3d's, so a sample can be asked for again).
- ``POST /v1/images/edits`` — multipart ``image`` (or ``image[]``: one file), optional ``mask`` and the same
  fields → the same answer. With a ``mask``, its fully transparent pixels (alpha 0) are repainted, as OpenAI's
  masks say (inpainting on the SDXL stage, :mod:`lift3d.stages.sdxl.image_edit`); without one, a transparent
  ``image``'s own transparent pixels are, and an opaque ``image`` is edited as a whole (image-to-image;
  ``image_strength``, lift3d's, says how much of it to keep).
- ``GET /v1/models`` — the served image models as OpenAI's ``models.list`` returns them: the SDXL stage answers to
  ``sdxl`` and to its own source id (``stabilityai/stable-diffusion-xl-base-1.0``; ``tiny`` for the tiny preset).
- ``GET /openai/images/{hour}/{owner}/{request}/{name}`` — the image behind a ``url`` answer, for an hour, without
  the API key (the URL's signature is the credential, :mod:`lift3d.service.api.compat.image_urls`).

Each request maps onto :meth:`~lift3d.service.jobs.image_service.ImageService.text_to_image` (Stability's
text-to-image parameters, :class:`~lift3d.params.images.TextToImageParams`), which validates, charges and generates:
``prompt`` is the positive prompt, ``n`` the samples, ``size`` (``WxH``, multiples of 64; ``auto``: the model's size,
or the image's for edits) the width and height. lift3d's own ``negative_prompt``, ``steps``, ``cfg_scale``,
``seed``, ``sampler`` and ``scheduler`` may ride along (``extra_body=`` in the ``openai`` client). OpenAI's
``quality``, ``style``, ``user``, ``moderation``, ``safety_identifier`` and ``background`` (``auto``/``opaque``) are
accepted and change nothing. ``response_format`` defaults to ``b64_json`` (as for OpenAI's GPT image models).

Errors come in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}`` (``code``: lift3d's error name;
``param``: the OpenAI field at fault), with OpenAI's statuses: invalid input ``400``, an unknown ``model`` ``404``
(``model_not_found``); the rest as elsewhere in the API (402, 413, 415, 500, 503). Authentication (401) and the rate
limit (429) answer before the route, in lift3d's envelope.

Examples:
    >>> client = openai.OpenAI(base_url=server + "/v1", api_key="sk-…")
    >>> answer = client.images.generate(model="sdxl", prompt="a wooden toy robot", size="1024x1024",
    ...                                 response_format="b64_json")
    >>> Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).size
    (1024, 1024)
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lift3d.errors import InvalidInputError, Lift3DError, PayloadTooLargeError
from lift3d.io.image_calls import EncodedSample
from lift3d.io.images import ImageLimits, load_image
from lift3d.io.encoded import png_bytes
from lift3d.io.media_types import FORM_DATA, JPEG, JSON, PNG, WEBP
from lift3d.params.images import MAX_IMAGE_SIDE, TextToImageParams, parse_model
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.bodies import (FORM_OVERHEAD_BYTES, field_types, form_values, json_values, media_type,
                                       parse_json_object, read_body, read_form)
from lift3d.service.api.compat.common import Caller, Config, Generations, Images, Limits, error_parts
from lift3d.service.api.compat.image_urls import FILES_PREFIX, read_image_file, store_images
from lift3d.service.api.openapi import BINARY, inline_refs
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.image_service import ImageService
from lift3d.service.schemas import ErrorBody, ServiceUnavailableError, UnsupportedMediaTypeError

__all__ = ["SDXL_ALIAS", "FILES_PREFIX", "ImagesResponse", "ModelList", "OpenAIError", "encode_image", "router",
           "served_models"]

SDXL_ALIAS = "sdxl"
"""The model id every server's SDXL stage answers to, besides its source id."""
SDXL_SOURCES = {"default": "stabilityai/stable-diffusion-xl-base-1.0", "tiny": "tiny"}
"""The SDXL source id of each preset: ``PRESETS[name].text_to_image``, copied (the HTTP front door may not import the
torch-backed presets; a test checks that they agree)."""
MODEL_CREATED = 1690329600
"""``created`` of the listed models: SDXL 1.0's release, 2023-07-26 UTC (epoch seconds)."""
_OUTPUT_FORMATS = {"png": PNG, "jpeg": JPEG, "webp": WEBP}
_PASSTHROUGH = ("steps", "cfg_scale", "seed", "sampler", "scheduler")
"""lift3d's own fields a request may add, validated by TextToImageParams."""
_SIDES = "|".join(str(side) for side in range(64, MAX_IMAGE_SIDE + 1, 64))
SIZE_PATTERN = f"^(?:auto|(?:{_SIDES})x(?:{_SIDES}))$"
"""``auto`` or ``WxH`` in pixels, each side a multiple of 64 in [64, 2048]."""


# ------------------------------------------------------------------------------------------------ bodies
class _ImageFields(BaseModel):
    """OpenAI's image request fields as lift3d reads them (ranges and prompt rules: TextToImageParams')."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="The prompt (at most 2000 characters; compel's weighting syntax works).")
    model: str | None = Field(None, description="A served model id (`GET /v1/models`); omitted: `sdxl`.")
    n: int = Field(1, description="Images to generate.")
    size: str = Field("auto", pattern=r"^(?:auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$", description="`WIDTHxHEIGHT` in "
                      "pixels, multiples of 64 (SDXL takes 256-2048 a side); `auto`: the model's size (1024² for "
                      "SDXL), or the image's for edits.")
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="`b64_json`: the image in the answer; `url`: a link valid for an hour that needs no "
        "API key.")
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of the images.")
    output_compression: int = Field(100, ge=0, le=100, description="JPEG/WebP quality, 0-100 (100: best); PNG "
                                    "ignores it.")
    negative_prompt: str | None = Field(None, description="lift3d: what to steer away from.")
    quality: str | None = Field(None, description="Accepted for compatibility; no effect (use `steps`).")
    style: str | None = Field(None, description="Accepted for compatibility; no effect.")
    user: str | None = Field(None, description="Accepted for compatibility; no effect.")
    safety_identifier: str | None = Field(None, description="Accepted for compatibility; no effect.")
    moderation: str | None = Field(None, description="Accepted for compatibility; no effect.")
    background: Literal["auto", "opaque"] | None = Field(None, description="`auto` or `opaque` (lift3d makes "
                                                         "opaque images); `transparent` is refused.")


class _EditFields(_ImageFields):
    image_strength: float | None = Field(None, description="lift3d, for an opaque image without a mask: how much of "
                                         "it to keep (0-1, default 0.35).")
    input_fidelity: str | None = Field(None, description="Accepted for compatibility; no effect.")


_FIELD_TYPES = {**field_types(_EditFields.model_json_schema()["properties"]),
                **field_types(TextToImageParams.model_json_schema()["properties"])}
_PARAM_NAMES = {"samples": "n", "width": "size (width)", "height": "size (height)", "text_prompts.0.text": "prompt",
                "text_prompts.1.text": "negative_prompt", "init_image": "image", "mask_image": "mask"}
"""TextToImageParams' and ImageService's field names → OpenAI's, for error messages."""


class ImageData(BaseModel):
    """One image (OpenAI's ``Image``) and lift3d's seed of it."""

    b64_json: str | None = Field(None, description="The image, base64 (`response_format: b64_json`).")
    url: str | None = Field(None, description="Where to download it for an hour, no key needed "
                            "(`response_format: url`).")
    seed: int = Field(description="lift3d: the seed; send it with n=1 to get this image again.")


class ImagesResponse(BaseModel):
    """OpenAI's ``ImagesResponse``."""

    created: int = Field(description="Epoch seconds.")
    data: list[ImageData]
    size: str = Field(description="`WIDTHxHEIGHT` of the images.")
    output_format: Literal["png", "jpeg", "webp"]


class ModelInfo(BaseModel):
    """OpenAI's ``Model``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """OpenAI's model list (``models.list``)."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="`invalid_request_error`, `insufficient_quota`, `server_error`…")
    param: str | None = Field(description="The request field at fault, or null.")
    code: str | None = Field(description="lift3d's error name, e.g. `invalid_parameters`, `model_not_found`.")


class OpenAIError(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class _UnknownModel(InvalidInputError):
    name = "unknown_model"  # answered to OpenAI clients with OpenAI's code, model_not_found
    status_code = 404


OPENAI_CODES = {"unknown_model": "model_not_found"}
"""lift3d error names OpenAI spells otherwise (lift3d's ``model_not_found`` is a 500: a model's weights are missing)."""


# ------------------------------------------------------------------------------------------------ helpers
def served_models(config: ServiceConfig) -> list[str]:
    """The model ids the SDXL stage answers to: :data:`SDXL_ALIAS` and the preset's SDXL source."""
    source = SDXL_SOURCES.get(config.preset)
    return [SDXL_ALIAS] if source in (None, SDXL_ALIAS) else [SDXL_ALIAS, source]


def _openai_error(exc: BaseException) -> JSONResponse:
    """``exc`` in OpenAI's shape (unknown exceptions propagate to the app's handler: 500/503, details logged)."""
    parts = error_parts(exc)
    status = 400 if parts.status == 422 else parts.status
    messages, params = [], []
    for message in parts.messages:
        field, sep, text = message.partition(": ")
        name = _PARAM_NAMES.get(field, field) if sep and " " not in field else None
        messages.append(f"{name}: {text}" if name else message)
        if name:
            params.append(name.split(" ")[0])
    kind = ("invalid_request_error" if status < 500 and status not in (402, 429) else
            "insufficient_quota" if status == 402 else "rate_limit_error" if status == 429 else "server_error")
    body = OpenAIError(error=ErrorDetail(message="; ".join(messages), type=kind,
                                         param=params[0] if params else None,
                                         code=OPENAI_CODES.get(parts.name, parts.name)))
    headers = {"Retry-After": str(parts.retry_after_s)} if parts.retry_after_s is not None else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _check_model(model: str | None, config: ServiceConfig) -> None:
    served = served_models(config)
    if model is not None and model not in served:
        raise _UnknownModel(f"model: the model {model[:200]!r} does not exist here; served: {', '.join(served)}")


def _available(images: ImageService | None) -> ImageService:
    if images is None:
        raise ServiceUnavailableError("image generation is not configured on this server")
    return images


def _params(fields: _ImageFields, extra: dict[str, Any], update: dict[str, Any] | None = None) -> TextToImageParams:
    """TextToImageParams of an OpenAI request (its validation, OpenAI's field names in the errors)."""
    prompts = [{"text": fields.prompt, "weight": 1.0}]
    if fields.negative_prompt:
        prompts.append({"text": fields.negative_prompt, "weight": -1.0})
    values = {"text_prompts": prompts, "samples": fields.n, **extra, **(update or {})}
    if fields.size != "auto":
        values["width"], values["height"] = (int(side) for side in fields.size.split("x"))
    return parse_model(TextToImageParams, values)


def _split(values: dict[str, Any], model: type[_ImageFields]) -> tuple[_ImageFields, dict[str, Any]]:
    """OpenAI's fields (typed) and lift3d's passthrough fields of a body."""
    extra = {name: values.pop(name) for name in _PASSTHROUGH if name in values}
    return parse_model(model, values), extra


def encode_image(sample: EncodedSample, output_format: str, quality: int = 100) -> bytes:
    """The sample's image as ``output_format`` (``png`` as generated; ``jpeg``/``webp`` at ``quality`` 0-100)."""
    if output_format == "png":
        return sample.image.data
    buffer = io.BytesIO()
    sample.image.image.convert("RGB").save(buffer, format=output_format.upper(), quality=max(1, quality))
    return buffer.getvalue()


def _encode_all(samples: list[EncodedSample], fields: _ImageFields) -> tuple[list[bytes], str]:
    """The samples in the asked-for format, and their ``WxH`` (blocking: decodes and encodes)."""
    width, height = samples[0].image.image.size
    return [encode_image(s, fields.output_format, fields.output_compression) for s in samples], f"{width}x{height}"


async def _answer(request: Request, samples: list[EncodedSample], fields: _ImageFields, caller: Principal,
                  service: GenerationService) -> JSONResponse:
    encoded, size = await asyncio.to_thread(_encode_all, samples, fields)
    if fields.response_format == "url":
        urls = await asyncio.to_thread(store_images, request, service, caller,
                                       [(e, fields.output_format) for e in encoded])
        data = [ImageData(url=url, seed=s.seed) for url, s in zip(urls, samples)]
    else:
        data = [ImageData(b64_json=base64.b64encode(e).decode("ascii"), seed=s.seed) for e, s in zip(encoded, samples)]
    body = ImagesResponse(created=int(time.time()), data=data, size=size, output_format=fields.output_format)
    return JSONResponse(body.model_dump(exclude_none=True))


async def _edit_form(request: Request, limits: ImageLimits) -> tuple[dict[str, Any], bytes, bytes | None]:
    """The text fields (typed as the schema says), the image's and the mask's bytes of an edit's multipart body."""
    if media_type(request) != FORM_DATA:
        raise UnsupportedMediaTypeError("send multipart/form-data: an `image` file, an optional `mask` file and "
                                        "the fields")
    form = await read_form(request, 2 * limits.max_bytes + FORM_OVERHEAD_BYTES, "request body is larger than the "
                           "two images it may carry", max_files=2, max_fields=32)
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        for key, value in form.multi_items():
            name = "image" if key == "image[]" else key
            if name in fields or name in files:
                raise InvalidInputError(f"{name}: given more than once (lift3d edits one image)")
            if isinstance(value, str):
                if name in ("image", "mask"):
                    raise InvalidInputError(f"{name}: send a file part (PNG, JPEG or WebP), not text")
                fields[name] = value
            elif name not in ("image", "mask"):
                raise InvalidInputError(f"{name}: unexpected file; only image and mask are files")
            else:
                if (value.size or 0) > limits.max_bytes:
                    raise PayloadTooLargeError(f"{name}: larger than {limits.max_bytes // (1024 * 1024)} MiB")
                files[name] = await value.read()
    finally:
        await form.close()
    if "image" not in files:
        raise InvalidInputError("image: required (a PNG, JPEG or WebP file part)")
    return form_values(fields, _FIELD_TYPES), files["image"], files.get("mask")


def _repaint_mask(image: bytes, mask: bytes | None, limits: ImageLimits) -> tuple[bytes | None, dict[str, Any]]:
    """lift3d's inpainting inputs for OpenAI's mask rule: ``(mask_image, TextToImageParams fields)``.

    A mask's alpha-0 pixels become white (repaint) in an ``L`` mask; without a mask, a transparent image's alpha is
    the mask (``INIT_IMAGE_ALPHA``) and an opaque one is edited whole (image-to-image, no mask).

    Raises:
        InvalidInputError: a mask without an alpha channel (OpenAI's rule: transparent = edit).
    """
    if mask is None:
        try:
            has_alpha = "A" in load_image(image, limits).getbands()
        except InvalidInputError as error:
            raise type(error)(f"image: {error}") from None
        return None, ({"mask_source": "INIT_IMAGE_ALPHA"} if has_alpha else {})
    try:
        decoded = load_image(mask, limits)
    except InvalidInputError as error:
        raise type(error)(f"mask: {error}") from None
    if "A" not in decoded.getbands():
        raise InvalidInputError("mask: needs an alpha channel (a PNG whose fully transparent pixels mark what to "
                                "edit)")
    repaint = decoded.getchannel("A").point(lambda alpha: 255 if alpha == 0 else 0)
    return png_bytes(repaint), {"mask_source": "MASK_IMAGE_WHITE"}


# ------------------------------------------------------------------------------------------------ routes
async def generations(request: Request, caller: Caller, images: Images, config: Config, limits: Limits,
                      service: Generations) -> Response:
    try:
        values = json_values(parse_json_object(await read_body(request, 64 * 1024, "request body is too large")),
                             _FIELD_TYPES) if media_type(request) == JSON else None
        if values is None:
            raise UnsupportedMediaTypeError("send application/json")
        fields, extra = _split(values, _ImageFields)
        _check_model(fields.model, config)
        params = _params(fields, extra)
        result = await asyncio.to_thread(_available(images).text_to_image, params, None, None, caller)
        return await _answer(request, result.samples, fields, caller, service)
    except Lift3DError as exc:
        return _openai_error(exc)


async def edits(request: Request, caller: Caller, images: Images, config: Config, limits: Limits,
                service: Generations) -> Response:
    try:
        values, image, mask = await _edit_form(request, limits)
        fields, extra = _split(values, _EditFields)
        _check_model(fields.model, config)
        repaint, mode = await asyncio.to_thread(_repaint_mask, image, mask, limits)
        if fields.image_strength is not None:
            mode["image_strength"] = fields.image_strength
        params = _params(fields, extra, mode)
        result = await asyncio.to_thread(_available(images).text_to_image, params, image, repaint, caller)
        return await _answer(request, result.samples, fields, caller, service)
    except Lift3DError as exc:
        return _openai_error(exc)


async def models(caller: Caller, images: Images, config: Config) -> ModelList:
    ids = served_models(config) if images is not None else []
    return ModelList(data=[ModelInfo(id=i, created=MODEL_CREATED, owned_by="lift3d") for i in ids])


async def image_file(folder: str, owner: str, request_id: str, name: str, request: Request,
                     service: Generations) -> Response:
    try:
        data, media = await asyncio.to_thread(read_image_file, request, service, folder, owner, request_id, name)
    except Lift3DError as exc:
        return _openai_error(exc)
    return Response(data, media_type=media)


# ------------------------------------------------------------------------------------------------ OpenAPI
def _documented_fields(model: type[BaseModel], served: list[str], nullable: bool) -> dict[str, Any]:
    """A body model's properties for the OpenAPI document, with TextToImageParams' ranges for ``n``, ``prompt``
    and lift3d's passthrough fields, and the served model ids; form fields (``nullable=False``) cannot be null."""
    source = TextToImageParams.model_json_schema()
    t2i = inline_refs(source["properties"], source.get("$defs", {}))
    properties = {name: dict(schema) for name, schema in model.model_json_schema()["properties"].items()}
    text = t2i["text_prompts"]["items"]["properties"]["text"]
    properties["prompt"].update(minLength=text["minLength"], maxLength=text["maxLength"])
    properties["n"].update({k: v for k, v in t2i["samples"].items() if k in ("minimum", "maximum")})
    properties["size"]["pattern"] = SIZE_PATTERN
    for name in _PASSTHROUGH:
        properties[name] = {k: v for k, v in t2i[name].items() if k != "title"}
    for name, schema in properties.items():
        options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null" and s.get("enum") != [None]]
        if name in ("model", "negative_prompt", "image_strength"):  # rules of the value, not of null
            options[0].update({"model": {"enum": served}, "negative_prompt": {"maxLength": text["maxLength"]},
                               "image_strength": {"minimum": 0, "maximum": 1}}[name])
        if not nullable and "anyOf" in schema:
            schema.pop("anyOf")
            schema.pop("default", None)
            schema.update(options[0])
        if not nullable and None in schema.get("enum", ()):
            schema["enum"] = [value for value in schema["enum"] if value is not None]
        schema.pop("title", None)
    return properties


def _generation_doc(served: list[str]) -> dict:
    schema = {"type": "object", "required": ["prompt"], "additionalProperties": False,
              "properties": _documented_fields(_ImageFields, served, nullable=True)}
    example = {"model": SDXL_ALIAS, "prompt": "a wooden toy robot, studio lighting", "n": 1, "size": "1024x1024",
               "response_format": "b64_json"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema, "example": example}}}}


def _edit_doc(served: list[str], limits: ImageLimits) -> dict:
    properties = _documented_fields(_EditFields, served, nullable=False)
    files = {"image": "The image to edit, PNG/JPEG/WebP", "mask": "PNG with an alpha channel: its fully "
             "transparent pixels are repainted"}
    for name, text in files.items():
        properties[name] = {"type": "string", "format": "binary",
                            "description": f"{text}; at most {limits.max_bytes // (1024 * 1024)} MiB."}
    schema = {"type": "object", "required": ["image", "prompt"], "additionalProperties": False,
              "properties": properties}
    return {"requestBody": {"required": True, "content": {FORM_DATA: {"schema": schema}}}}


def _errors(*codes: int) -> dict[int, dict]:
    texts = {400: "Invalid or unreadable request (`param` names the field).", 402: "The key's balance is below the "
             "price.", 404: "Unknown `model` (`model_not_found`).", 413: "Body or image over its size limit.",
             415: "Unsupported Content-Type.", 500: "Generation failed (the charge was returned).",
             503: "No SDXL deployment on this server."}
    return {code: {"model": OpenAIError, "description": texts[code]} for code in codes}


_IMAGES_ANSWER = {200: {"model": ImagesResponse, "description": "The images."},
                  **_errors(400, 402, 404, 413, 415, 500, 503),
                  429: {"model": ErrorBody, "description": "Over the key's requests per minute (lift3d's envelope, "
                        "`Retry-After`)."}}


def router(config: ServiceConfig = ServiceConfig(), limits: ImageLimits = ImageLimits()) -> APIRouter:
    """The routes, the model ids documented for ``config``'s preset and the uploads for ``limits`` (the app's)."""
    served = served_models(config)
    routes = APIRouter()
    routes.add_api_route("/v1/images/generations", generations, methods=["POST"], response_class=Response,
                         responses=_IMAGES_ANSWER, openapi_extra=_generation_doc(served),
                         summary="Prompt → images (OpenAI's images.generate, on SDXL)")
    routes.add_api_route("/v1/images/edits", edits, methods=["POST"], response_class=Response,
                         responses=_IMAGES_ANSWER, openapi_extra=_edit_doc(served, limits),
                         summary="Image + mask + prompt → edited images (OpenAI's images.edit: SDXL inpainting)")
    routes.add_api_route("/v1/models", models, methods=["GET"], response_model=ModelList,
                         summary="The served image models (OpenAI's models.list)")
    routes.add_api_route(FILES_PREFIX + "{folder}/{owner}/{request_id}/{name}", image_file, methods=["GET"],
                         response_class=Response, summary="An image of a `url` answer (signed; no API key)",
                         responses={200: {"description": "The image.", "content": {PNG: BINARY, JPEG: BINARY,
                                                                                  WEBP: BINARY}},
                                    403: {"model": OpenAIError, "description": "Expired or invalid signature."},
                                    404: {"model": OpenAIError, "description": "No such image (any more)."}})
    return routes
