"""Short-lived, keyless download URLs for images that belong to no job (OpenAI's ``response_format: url``).

:func:`store_images` puts a request's images in the artifact store under ``openai-images/{hour}/{owner}/{request}/``
and returns a URL per image: the store's own presigned URL where it has one (S3), else
``{FILES_PREFIX}{hour}/{owner}/{request}/{i}.{ext}?expires=…&signature=…``, signed as the compatible APIs sign job
downloads (:func:`lift3d.service.api.compat.common.sign_download`: HMAC-SHA256 keyed by the owner's webhook secret,
with ``{hour}/{owner}/{request}`` in the place of the job id); unsigned when authentication is off (no secret, and
no key needed anyway). URLs last :data:`URL_TTL_S`; each call deletes the images stored more than two hours before,
so nothing piles up without a sweeper. :func:`read_image_file` checks a URL and returns its image.

Examples:
    >>> [url] = store_images(request, service, caller, [(png, "png")])
    >>> httpx.get(url).headers["content-type"]  # no API key
    'image/png'
"""

from __future__ import annotations

import re
import time
import uuid

from fastapi import Request

from lift3d.errors import Lift3DError
from lift3d.io.media_types import JPEG, PNG, WEBP
from lift3d.io.storage.base import StoredObjectNotFound
from lift3d.service.accounts.keys import KeyNotFound
from lift3d.service.accounts.principal import Principal
from lift3d.service.api.compat.common import (InvalidSignature, absolute_url, check_download_signature, get_services,
                                              owner_secret, sign_download)
from lift3d.service.jobs.generation import GenerationService

__all__ = ["FILES_PREFIX", "URL_TTL_S", "ImageFileNotFound", "read_image_file", "store_images"]

FILES_PREFIX = "/openai/images/"
"""Path prefix of the image URLs (outside ``/v1/``: the signature is the credential)."""
URL_TTL_S = 3600
"""Lifetime of an image URL, seconds (OpenAI's last an hour); the stored image is deleted within three."""
MEDIA_TYPES = {"png": PNG, "jpeg": JPEG, "webp": WEBP}
_STORE_PREFIX = "openai-images/"
_PARTS = {"folder": r"[0-9]{10}", "owner": r"[\w.-]{1,64}", "request_id": r"[0-9a-f]{32}",
          "name": r"[0-9]{1,2}\.(?:png|jpeg|webp)"}


class ImageFileNotFound(Lift3DError):
    """No such image, or no longer stored (404)."""

    name = "not_found"
    status_code = 404


def _hour(now: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(now))


def store_images(request: Request, service: GenerationService, caller: Principal,
                 images: list[tuple[bytes, str]]) -> list[str]:
    """Store ``images`` (``(bytes, extension)``: png, jpeg or webp) in ``service``'s artifact store and return an
    absolute URL per image, valid for :data:`URL_TTL_S` without an API key. Blocking (store and database)."""
    store, now = service.jobs.store, time.time()
    stale = {key.split("/")[1] for key in store.list(_STORE_PREFIX)} - {_hour(now - h * 3600) for h in (0, 1, 2)}
    for hour in stale:
        store.delete_prefix(f"{_STORE_PREFIX}{hour}/")
    secret = caller.webhook_secret if caller.key_id is not None else owner_secret(get_services(request), None)
    folder, expires = f"{_hour(now)}/{caller.key_id or 'local'}/{uuid.uuid4().hex}", int(now + URL_TTL_S)
    urls = []
    for index, (data, extension) in enumerate(images):
        name = f"{index}.{extension}"
        store.put(f"{_STORE_PREFIX}{folder}/{name}", data, MEDIA_TYPES[extension])
        url = store.url(f"{_STORE_PREFIX}{folder}/{name}", URL_TTL_S)
        if not url.startswith(("https://", "http://")):
            url = absolute_url(request, f"{FILES_PREFIX}{folder}/{name}")
            if secret is not None:
                url += f"?expires={expires}&signature={sign_download(secret, folder, name, expires)}"
        urls.append(url)
    return urls


def read_image_file(request: Request, service: GenerationService, folder: str, owner: str, request_id: str,
                    name: str) -> tuple[bytes, str]:
    """``(bytes, media type)`` of the image a :func:`store_images` URL names, its signature checked (unless
    authentication is off). Blocking.

    Raises:
        InvalidSignature: unsigned, expired or wrongly signed (403). ImageFileNotFound: no such image (404).
    """
    values = {"folder": folder, "owner": owner, "request_id": request_id, "name": name}
    if not all(re.fullmatch(pattern, values[part]) for part, pattern in _PARTS.items()):
        raise ImageFileNotFound("no such image")
    services, key = get_services(request), f"{folder}/{owner}/{request_id}"
    if services.keys is not None:
        expires, signature = request.query_params.get("expires", ""), request.query_params.get("signature", "")
        try:
            secret = owner_secret(services, owner) if expires.isdigit() else None
        except KeyNotFound:
            secret = None
        if secret is None:
            raise InvalidSignature("this image URL is not signed by its owner")
        check_download_signature(secret, key, name, int(expires), signature)
    try:
        return service.jobs.store.get(f"{_STORE_PREFIX}{key}/{name}"), MEDIA_TYPES[name.rsplit(".", 1)[1]]
    except StoredObjectNotFound:
        raise ImageFileNotFound("this image is no longer stored (URLs last an hour)") from None
