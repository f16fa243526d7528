"""What the compatible APIs (:mod:`lift3d.service.api.compat`) share: the caller and the services as dependencies,
an error's parts for a foreign error shape, and short-lived signed download URLs.

- Dependencies (re-exported from :mod:`lift3d.service.api.deps`): :data:`Caller` (401 without a key on a protected
  path), :data:`Generations`, :data:`Images`, :data:`FastAssets`, :data:`Keys`, :data:`Config`, :data:`Limits`.
- :func:`error_parts`: ``(status, name, messages, retry_after_s)`` of any exception a route meets — a
  :class:`~lift3d.errors.Lift3DError` as the rest of the API answers it, a pydantic ``ValidationError`` (the existing
  parameter models) as ``422 invalid_parameters`` with one message per field. Each adapter renders them in its own
  shape (Replicate/Cog ``{"detail"}``, OpenAI ``{"error": {...}}``); validation is never copied.
- Signed URLs: ``/download/{job_id}/{name}?expires=…&signature=…`` lets a client that does not forward its API key
  (Replicate's ``FileOutput``, a browser, ``curl``) fetch one artifact of one job until ``expires`` (epoch seconds).
  The signature is HMAC-SHA256 (RFC 2104) over ``"{job_id}\\n{name}\\n{expires}"`` with a key derived from the job
  owner's webhook secret (each API key has one, in the database, so every ingress replica verifies what another
  signed, and a URL of one key's job says nothing about another's). With authentication off there is no owner
  secret: the URL is the plain artifact path, which needs no key then. An S3 store's presigned URL is used as is.
  :mod:`lift3d.service.api.compat.files` serves the signed path.

Examples:
    >>> url = signed_download_path("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "0" * 32, "model.glb", 1_900_000_000)
    >>> url.startswith("/download/00000000000000000000000000000000/model.glb?expires=1900000000&signature=")
    True
    >>> check_download_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "0" * 32, "model.glb", 1_900_000_000,
    ...                          url.rsplit("=", 1)[1], now=1_800_000_000)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from pydantic import ValidationError

from lift3d.errors import InvalidInputError, Lift3DError
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.deps import (AppServices, Caller, Config, FastAssets, Generations, Images, Keys, Limits,
                                     get_caller, get_services)
from lift3d.service.jobs.artifacts import artifact_path
from lift3d.service.jobs.generation import GenerationService

__all__ = [
    "DOWNLOAD_PREFIX", "MAX_URL_TTL_S", "AppServices", "Caller", "Config", "ErrorParts", "FastAssets", "Generations",
    "Images", "InvalidSignature", "Keys", "Limits", "absolute_url", "check_download_signature", "download_url",
    "error_parts", "get_caller", "get_services", "owner_secret", "read_json_object", "sign_download",
    "signed_download_path",
]

DOWNLOAD_PREFIX = "/download/"
"""Path prefix of signed downloads (outside ``/v1/``: no API key needed, the signature is the credential)."""
MAX_URL_TTL_S = 3600
"""Longest lifetime of a signed URL, seconds (the config's ``url_expires_s`` may shorten it)."""
_KEY_LABEL = b"lift3d signed download v1"


# ------------------------------------------------------------------------------------------------ errors
@dataclass(frozen=True)
class ErrorParts:
    """An error as an adapter renders it. ``status``: HTTP status; ``name``: lift3d's error name
    (``invalid_parameters``, ``generation_not_found``, …); ``messages``: one line per problem;
    ``retry_after_s``: seconds for ``Retry-After`` or None."""

    status: int
    name: str
    messages: list[str]
    retry_after_s: int | None = None

    @property
    def message(self) -> str:
        """The messages joined by ``"; "``."""
        return "; ".join(self.messages)


def error_parts(exc: BaseException) -> ErrorParts:
    """The :class:`ErrorParts` of ``exc``: a :class:`~lift3d.errors.Lift3DError` by its name, status and messages; a
    pydantic ``ValidationError`` as ``422 invalid_parameters``, one ``field: message`` per error.

    Raises:
        BaseException: ``exc`` itself when it is neither (the app's handler answers 500/503, details logged).
    """
    if isinstance(exc, Lift3DError):
        return ErrorParts(exc.status_code, exc.name, list(exc.errors or [str(exc)]), exc.retry_after_s)
    if isinstance(exc, ValidationError):
        messages = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'input'}: {e.get('msg', 'invalid value')}"
                    for e in exc.errors(include_url=False)]
        return ErrorParts(422, "invalid_parameters", messages or ["invalid parameters"])
    raise exc


async def read_json_object(request: Request, max_bytes: int) -> dict:
    """The request's body as a JSON object, at most ``max_bytes`` bytes.

    Raises:
        InvalidInputError: not JSON, or not an object (422). PayloadTooLargeError: over ``max_bytes`` (413).
    """
    from lift3d.errors import PayloadTooLargeError

    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"the request body is larger than {max_bytes} bytes")
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise InvalidInputError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidInputError("the body must be a JSON object")
    return value


# ------------------------------------------------------------------------------------------------ signed URLs
class InvalidSignature(Lift3DError):
    """A signed download URL that is malformed, expired or signed with another key (403)."""

    name = "forbidden"
    status_code = 403


def _signature(secret: str, job_id: str, name: str, expires: int) -> str:
    key = hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()
    digest = hmac.new(key, f"{job_id}\n{name}\n{expires}".encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_download(secret: str, job_id: str, name: str, expires: int) -> str:
    """The signature (43 URL-safe base64 characters) of artifact ``name`` of job ``job_id`` until ``expires``
    (epoch seconds), keyed by ``secret`` (the owner's ``whsec_…`` webhook secret)."""
    return _signature(secret, job_id, name, int(expires))


def signed_download_path(secret: str, job_id: str, name: str, expires: int) -> str:
    """``/download/{job_id}/{name}?expires=…&signature=…`` (``name`` percent-encoded, ``/`` kept)."""
    return (f"{DOWNLOAD_PREFIX}{job_id}/{quote(name, safe='/')}?expires={int(expires)}"
            f"&signature={sign_download(secret, job_id, name, expires)}")


def check_download_signature(secret: str, job_id: str, name: str, expires: int, signature: str,
                             now: float | None = None) -> None:
    """Accept a signed download or raise.

    Raises:
        InvalidSignature: ``now`` (default: the clock) is past ``expires``, or ``signature`` is not the one
            :func:`sign_download` gives (compared in constant time).
    """
    now = time.time() if now is None else now
    if now > expires:
        raise InvalidSignature("this download URL has expired; fetch the prediction again for a fresh one")
    if not hmac.compare_digest(sign_download(secret, job_id, name, expires), signature):
        raise InvalidSignature("this download URL's signature is not valid")


def owner_secret(services: AppServices, owner_id: str | None) -> str | None:
    """The secret that signs the downloads of jobs of ``owner_id``: the key's webhook secret, or for jobs without an
    owner the service's ``webhook_secret``; None when there is none (authentication off, no ``webhook_secret``)."""
    if owner_id is not None and services.keys is not None:
        return services.keys.get(owner_id).webhook_secret
    return services.config.webhook_secret


def absolute_url(request: Request, path: str) -> str:
    """``path`` (starting with ``/``) as an absolute URL on the server the request reached (scheme and host as the
    request saw them; behind a proxy, run uvicorn with ``--proxy-headers``)."""
    return str(request.base_url).rstrip("/") + path


def download_url(request: Request, service: GenerationService, caller: Principal, job_id: str, name: str,
                 ttl_s: int | None = None, now: float | None = None) -> str:
    """An absolute URL that fetches artifact ``name`` of ``caller``'s job ``job_id`` without an API key, for
    ``ttl_s`` seconds (default and cap: the config's ``url_expires_s``, at most :data:`MAX_URL_TTL_S`): the store's
    presigned URL (S3), else a signed ``/download/…`` URL, else (no secret: authentication off) the artifact path.
    Blocking only when the caller has no secret in hand (a database read); call it in a worker thread."""
    services = get_services(request)
    presigned = service.artifact_urls(job_id, name)
    if presigned.startswith(("https://", "http://")):
        return presigned
    secret = caller.webhook_secret if caller.key_id is not None else owner_secret(services, None)
    if secret is None:
        return absolute_url(request, artifact_path(job_id, name))
    limit = min(MAX_URL_TTL_S, services.config.url_expires_s)
    ttl = limit if ttl_s is None else max(1, min(int(ttl_s), limit))
    expires = int((time.time() if now is None else now) + ttl)
    return absolute_url(request, signed_download_path(secret, job_id, name, expires))
