"""The synchronous fast 3D endpoint: one image in, its GLB out, in seconds.

``POST /v2beta/3d/stable-fast-3d`` — Stability's Stable Fast 3D API (its API reference, "Stable Fast 3D"):
multipart ``image`` (PNG/JPEG/WebP, required) and the text fields of
:class:`~lift3d.params.fast3d.FastAssetParams` (``texture_resolution`` 512|1024|2048, ``foreground_ratio`` 0.1–1,
``remesh`` none|triangle — ``quad`` is refused with 422 naming those two —, ``vertex_count`` −1 or 100–20000),
numbers as text. Answers ``200 model/gltf-binary`` with the GLB (``Content-Disposition`` names it after the
request's ledger id); errors use the envelope. Authentication, ``X-Remaining-Credits``, the rate limit and
``Idempotency-Key`` apply as on ``/v1/`` (a retry with the same key and body replays the GLB, charged once). The
request is charged its price before the model runs and gets it back when the model fails or times out. Without a
fast model (:data:`~lift3d.service.api.deps.FastAssets` None) the route answers ``503`` once the body was read.

Examples:
    >>> answer = httpx.post(url + "/v2beta/3d/stable-fast-3d", files={"image": open("chair.png", "rb")},
    ...                     data={"texture_resolution": "512"}, headers={"Authorization": "Bearer sk-…"})
    >>> answer.headers["content-type"]
    'model/gltf-binary'
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from lift3d.errors import InvalidInputError
from lift3d.io.images import ImageLimits
from lift3d.io.media_types import FORM_DATA, GLB, JPEG, PNG, WEBP
from lift3d.params.fast3d import FAST_TEXTURE_RESOLUTIONS, SUPPORTED_REMESH, VERTEX_COUNT_RANGE, FastAssetParams
from lift3d.params.images import parse_model
from lift3d.service.api.bodies import FORM_MEDIA_TYPES, FORM_OVERHEAD_BYTES, field_types, form_fields, form_values, media_type, read_form
from lift3d.service.api.deps import Caller, FastAssets, Limits
from lift3d.service.api.idempotency import OPENAPI_PARAMETER as IDEMPOTENCY_KEY_PARAMETER
from lift3d.service.api.openapi import BINARY, error_responses, mib, param_properties
from lift3d.service.jobs.fast_asset_service import FastAssetService
from lift3d.service.schemas import ServiceUnavailableError, UnsupportedMediaTypeError

__all__ = ["PATH", "router"]

PATH = "/v2beta/3d/stable-fast-3d"
"""The route's path, as Stability names it."""

_TYPES = field_types(FastAssetParams.model_json_schema()["properties"])


async def _fast_asset_body(request: Request, limits: ImageLimits) -> tuple[FastAssetParams, bytes]:
    """The parameters and the image bytes of a multipart body of at most one image plus 64 KiB.

    Raises:
        UnsupportedMediaTypeError, PayloadTooLargeError, BadRequestError, InvalidInputError: the body is unusable
            (no ``image`` file, a field of the wrong type or out of range, an unknown field).
    """
    if media_type(request) not in FORM_MEDIA_TYPES:  # a URL-encoded form has no file: "image: required"
        raise UnsupportedMediaTypeError("send multipart/form-data: an `image` file plus option fields")
    body_limit = limits.max_bytes + FORM_OVERHEAD_BYTES
    form = await read_form(request, body_limit, f"request body is larger than {mib(body_limit)}", max_files=1,
                           max_fields=16)
    try:
        fields, image = await form_fields(form, "image", limits.max_bytes, "image")
    finally:
        await form.close()
    if "image" in fields:
        raise InvalidInputError("image: send the image as a file part (PNG, JPEG or WebP), not as text")
    if image is None:
        raise InvalidInputError("image: required (a PNG, JPEG or WebP file part named 'image')")
    return parse_model(FastAssetParams, form_values(fields, _TYPES)), image


def _available(fast_assets: FastAssetService | None) -> FastAssetService:
    """Raises ServiceUnavailableError (503) without a fast model."""
    if fast_assets is None:
        raise ServiceUnavailableError("fast 3D generation is not configured on this server (no feed-forward model)")
    return fast_assets


def _form_schema(limits: ImageLimits) -> dict[str, Any]:
    """The multipart body as documented: FastAssetParams' fields as the route accepts them, and the image."""
    fields = param_properties(FastAssetParams, nullable=False)
    fields["texture_resolution"]["enum"] = list(FAST_TEXTURE_RESOLUTIONS)
    fields["remesh"].update(enum=list(SUPPORTED_REMESH), description="`none`: marching cubes' triangles; "
                            "`triangle`: near-regular triangles (isotropic remeshing). Stability's `quad` is not "
                            "supported: 422.")
    low, high = VERTEX_COUNT_RANGE
    fields["vertex_count"]["anyOf"] = [{"const": -1}, {"minimum": low, "maximum": high}]
    fields["image"] = {"type": "string", "format": "binary", "description": "The object's image, PNG/JPEG/WebP, "
                       f"at most {mib(limits.max_bytes)} and {limits.max_side} px a side; its background is removed "
                       "unless its alpha channel already separates the object."}
    schema = {"type": "object", "required": ["image"], "additionalProperties": False, "properties": fields}
    return {"parameters": [IDEMPOTENCY_KEY_PARAMETER], "requestBody": {"required": True, "content": {FORM_DATA: {
        "schema": schema, "encoding": {"image": {"contentType": f"{PNG}, {JPEG}, {WEBP}"}}}}}}


_ANSWERS = {
    200: {"description": "The asset: a binary glTF 2.0 with a UV-unwrapped, baked albedo texture.",
          "content": {GLB: BINARY},
          "headers": {"Content-Disposition": {"schema": {"type": "string"},
                                              "description": '`attachment; filename="<request id>.glb"`.'}}},
    **error_responses(400, 402, 409, 413, 415, 422, 429, 500, 503, texts={
        409: "The first request with this `Idempotency-Key` is still running.",
        413: "Body or image over its size limit.",
        429: "Over the key's requests per minute (`rate_limited`, with `Retry-After`).",
        422: "Invalid parameters or image (each message names its field).",
        500: "Making the asset failed (the charge was returned).",
        503: "No fast 3D model on this server, or it did not answer in time (the charge was returned)."})}


def router(limits: ImageLimits = ImageLimits()) -> APIRouter:
    """The route, its body documented with ``limits`` (the app's :data:`~lift3d.service.api.deps.Limits`)."""
    routes = APIRouter()

    async def stable_fast_3d(request: Request, caller: Caller, fast_assets: FastAssets, limits: Limits) -> Response:
        params, image = await _fast_asset_body(request, limits)
        result = await asyncio.to_thread(_available(fast_assets).generate, image, params, caller)
        return Response(result.glb, media_type=GLB,
                        headers={"Content-Disposition": f'attachment; filename="{result.request_id}.glb"'})

    routes.add_api_route(PATH, stable_fast_3d, methods=["POST"], response_class=Response, responses=_ANSWERS,
                         openapi_extra=_form_schema(limits),
                         summary="Image → GLB in seconds (Stability's Stable Fast 3D API; feed-forward model)")
    return routes
