"""Request and response models of the HTTP API (v1) and of the Python handle API (the same models).

Parameters are :class:`~lift3d.params.GenerationParams`' (same names, ranges and defaults as the CLI); a request
adds the job kind and the input image as base64.

Errors are exceptions (:class:`~lift3d.errors.Lift3DError`: a ``name`` and an HTTP ``status_code``); the ones about
one generation (:class:`GenerationError`) carry its id. :meth:`ErrorBody.of` turns any of them into the error
envelope: the HTTP app does it in one handler (:mod:`lift3d.service.api.errors`), the Serve ingress at the edge of
its Python handle API.

Examples:
    >>> request = GenerationRequest.with_image(open("examples/dragon2_rgba.png", "rb").read(), seed=0)
    >>> request.kind, request.params().num_views
    ('image-to-3d', 8)
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.params import GenerationParams, check_one_input
from lift3d.params.images import named_prompt

__all__ = [
    "ERROR_STATUS",
    "UNAVAILABLE_RETRY_AFTER_S",
    "Artifact",
    "ArtifactNotFound",
    "BadRequestError",
    "ErrorBody",
    "GenerationAccepted",
    "GenerationCanceled",
    "GenerationError",
    "GenerationExpired",
    "GenerationFailed",
    "GenerationFinished",
    "GenerationKind",
    "GenerationNotFound",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStatus",
    "JobStatus",
    "Progress",
    "ServiceUnavailableError",
    "UnsupportedMediaTypeError",
    "decode_image",
]

GenerationKind = Literal["image-to-3d", "text-to-3d", "multiview", "views-to-3d"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "expired"]

ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "insufficient_credits": 402,
    "forbidden": 403,  # a signed download URL that is malformed, expired or not this job's (issue 24)
    "not_found": 404,  # no route at the path (issue 23)
    "generation_not_found": 404,
    "artifact_not_found": 404,
    "unknown_model": 404,  # a compatible API's model id that this server does not serve (issue 24)
    "method_not_allowed": 405,
    "idempotency_key_in_use": 409,
    "generation_finished": 409,
    "generation_canceled": 410,
    "generation_expired": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_parameters": 422,
    "idempotency_key_reused": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "model_not_found": 500,
    "service_unavailable": 503,
    "overloaded": 503,
}
"""HTTP status of each error ``name`` (unknown names map to 500). Each exception class states its own
(``status_code``); this table documents the envelope and answers for names stored with a failed job."""

UNAVAILABLE_RETRY_AFTER_S = 5
"""``Retry-After`` (seconds) of a ``503`` that did not set its own: a backing service or deployment is down."""


class BadRequestError(InvalidInputError):
    """The request cannot be parsed (malformed JSON, base64 or multipart body, unsupported content type)."""

    name = "bad_request"
    status_code = 400


class UnsupportedMediaTypeError(BadRequestError):
    """The body's ``Content-Type`` is not one the route reads (HTTP 415)."""

    name = "unsupported_media_type"
    status_code = 415


class ServiceUnavailableError(Lift3DError):
    """A backing service (database, artifact store, job queue, a deployment) cannot serve the request now (HTTP
    503, ``Retry-After`` :data:`UNAVAILABLE_RETRY_AFTER_S`)."""

    name = "service_unavailable"
    status_code = 503
    retry_after_s = UNAVAILABLE_RETRY_AFTER_S


class GenerationError(Lift3DError):
    """An answer about one generation other than its result; the envelope's ``id`` is ``job_id``.

    Args:
        job_id: the generation's id, as the caller gave it.
        message: what the caller is told (a default per class).
    """

    default_message = "the generation cannot be served"

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.job_id = job_id

    def __reduce__(self) -> tuple:  # picklable (crosses Ray handles) despite the two arguments
        return type(self), (self.job_id, str(self))


class GenerationNotFound(GenerationError):
    """No generation with this id, or none the caller's key may see (HTTP 404)."""

    name = "generation_not_found"
    status_code = 404

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(job_id, message or f"no generation with id {job_id!r}")


class ArtifactNotFound(GenerationError):
    """The generation has no such artifact (yet, or any more) (HTTP 404)."""

    name = "artifact_not_found"
    status_code = 404


class GenerationFinished(GenerationError):
    """The generation already ended: it cannot be canceled (HTTP 409)."""

    name = "generation_finished"
    status_code = 409


class GenerationCanceled(GenerationError):
    """The generation was canceled (HTTP 410; a ``DELETE`` that cancels a job before it starts answers 200)."""

    name = "generation_canceled"
    status_code = 410
    default_message = "the generation was canceled"


class GenerationExpired(GenerationError):
    """The generation's results expired and were deleted (HTTP 410)."""

    name = "generation_expired"
    status_code = 410
    default_message = "the generation's results expired and were deleted"


class GenerationFailed(GenerationError):
    """The generation failed: its stored error name (the status follows from :data:`ERROR_STATUS`; no
    ``Retry-After``, since asking again cannot help) and message.

    Args:
        job_id: the generation's id.
        name: the error name stored with the job (``internal_error`` when none was).
        message: the stored message.
    """

    def __init__(self, job_id: str, name: str = "internal_error", message: str = "the generation failed") -> None:
        super().__init__(job_id, message)
        self.name = name
        self.status_code = ERROR_STATUS.get(name, 500)

    def __reduce__(self) -> tuple:
        return type(self), (self.job_id, self.name, str(self))


class GenerationRequest(GenerationParams):
    """One generation: the parameters, the kind of job and the input image.

    ``image-to-3d`` needs ``image``; ``text-to-3d`` needs ``prompt`` or ``text_prompts`` (then the first positive
    text becomes the job's ``prompt``, its name); ``multiview`` takes either and always returns views only
    (``return_3d`` must not be set true).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: GenerationKind = Field("image-to-3d", description="What to generate.")
    image: str | None = Field(
        None, description="Input image, PNG/JPEG/WebP, base64-encoded (a `data:image/...;base64,` prefix is "
        "accepted); at most 20 MiB decoded and 4096 px a side."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives generation.started, generation.progress and "
        "generation.completed webhooks, signed per the Standard Webhooks spec with the API key's webhook secret. "
        "Private, loopback and link-local addresses are refused unless the service allows them."
    )

    @model_validator(mode="before")
    @classmethod
    def _named_by_text_prompts(cls, values: Any) -> Any:
        # Stability's clients send text_prompts alone; a text-to-3d job still needs a prompt to be a prompt job.
        if isinstance(values, dict) and values.get("kind") == "text-to-3d" and "prompt" not in values:
            name = named_prompt(values.get("text_prompts"))
            if name is not None:
                values = {**values, "prompt": name}
        return values

    @classmethod
    def with_image(cls, data: bytes, kind: GenerationKind = "image-to-3d", **params: Any) -> "GenerationRequest":
        """A request for the encoded image ``data`` (bytes of a PNG/JPEG/WebP file)."""
        return cls(kind=kind, image=base64.b64encode(data).decode("ascii"), **params)

    def params(self) -> GenerationParams:
        """The generation parameters alone (views-only for ``multiview``)."""
        values = self.model_dump(exclude={"kind", "image", "webhook_url"})
        if self.kind == "multiview":
            values["return_3d"] = False
        return GenerationParams(**values)

    def check(self) -> None:
        """Raises InvalidInputError when the inputs do not fit the kind, or the prompt is only whitespace."""
        if self.prompt is not None and not self.prompt.strip():
            raise InvalidInputError("prompt: must contain a non-space character, e.g. 'a wooden toy robot'")
        if self.kind == "image-to-3d" and (self.image is None or self.prompt is not None):
            raise InvalidInputError("image-to-3d needs an image and no prompt")
        if self.kind == "text-to-3d" and (self.prompt is None or self.image is not None):
            raise InvalidInputError("text-to-3d needs a prompt (or text_prompts with a positive one) and no image")
        if self.kind == "views-to-3d":
            raise InvalidInputError("views-to-3d takes a views ZIP: POST /v1/generation/views-to-3d (multipart)")
        if self.kind == "multiview":
            check_one_input(self.image is not None, self.prompt is not None)
            if "return_3d" in self.model_fields_set and self.return_3d:
                raise InvalidInputError("return_3d: multiview returns views only; leave return_3d unset or false")


def decode_image(value: str, max_bytes: int) -> bytes:
    """Bytes of a base64 image field (optionally a ``data:`` URL).

    Raises:
        PayloadTooLargeError: decoded size over ``max_bytes`` (checked before decoding).
        BadRequestError: not valid base64.
    """
    from lift3d.errors import PayloadTooLargeError

    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLargeError(f"image is larger than {max_bytes // (1024 * 1024)} MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("image: not valid base64") from None


class GenerationAccepted(BaseModel):
    """``202`` answer to a submission."""

    id: str = Field(description="Generation id; poll `GET /v1/generation/{id}`.")


class Progress(BaseModel):
    """Progress within the current stage."""

    step: int = Field(ge=0)
    total: int = Field(ge=0)


class GenerationStatus(BaseModel):
    """``202`` answer while a generation is queued or running."""

    id: str
    status: Literal["queued", "running"]
    stage: str | None = Field(None, description="text_to_image, background_removal, novel_views, sds_training, "
                              "mesh_export, turntable, or queued/starting/retrying.")
    progress: Progress | None = None
    eta_s: float | None = Field(None, description="Estimated seconds to completion, when known.")


class Artifact(BaseModel):
    """One stored artifact."""

    name: str = Field(description="Path under the generation, e.g. `model.glb`, `views/000_az000_el0.png`.")
    url: str = Field(description="Where to download it: a presigned URL (S3 store), or the API path "
                     "`/v1/generation/{id}/artifacts/{name}` (relative to the API's base URL; local store).")


class GenerationResult(BaseModel):
    """``200`` JSON answer (``Accept: application/json``) for a succeeded generation."""

    id: str
    status: Literal["succeeded"] = "succeeded"
    finish_reason: Literal["SUCCESS"] = "SUCCESS"
    seed: int
    content_type: str = Field(description="`model/gltf-binary`, or `application/zip` of PNG views.")
    content: str = Field(description="The GLB (or ZIP of views), base64-encoded.")
    timings_s: dict[str, float] = Field(description="Wall seconds per stage.")
    gpu_seconds: dict[str, float] = Field(description="Busy seconds × GPU fraction per stage.")
    cost_usd: float = Field(description="Σ GPU-seconds × price per GPU-hour / 3600.")
    artifacts: list[Artifact]
    random_weights: bool = Field(description="True when models had random weights (tiny preset).")


class ErrorBody(BaseModel):
    """The one error envelope of the API. ``id`` is the generation id, or a request id for submissions."""

    id: str
    name: str = Field(description="What went wrong; the HTTP status follows from it: "
                      + ", ".join(f"`{name}` ({status})" for name, status in ERROR_STATUS.items()) + ".")
    errors: list[str]

    @property
    def http_status(self) -> int:
        return ERROR_STATUS.get(self.name, 500)

    @classmethod
    def of(cls, exc: Lift3DError, id: str | None = None) -> "ErrorBody":
        """The envelope of ``exc``: its ``name``, its ``errors`` (else its message), and ``id``, else the
        generation's id (:class:`GenerationError`), else a fresh request id (32 hex digits)."""
        if id is None:
            id = exc.job_id if isinstance(exc, GenerationError) else uuid.uuid4().hex
        return cls(id=id, name=exc.name, errors=list(exc.errors or [str(exc)]))
