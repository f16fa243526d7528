"""``GET /download/{id}/{name}?expires=…&signature=…``: one artifact of one job, for whoever holds the signed URL
(:func:`~lift3d.service.api.compat.common.download_url` makes them; the compatible APIs hand them out as file
outputs). Outside ``/v1/``: no API key is asked for; the signature, made with the job owner's secret and valid until
``expires``, is the credential. A bad or expired signature answers ``403`` and says nothing about the job.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request, Response

from lift3d.service.api.compat.common import (DOWNLOAD_PREFIX, Generations, InvalidSignature,
                                              check_download_signature, get_services, owner_secret)
from lift3d.service.api.openapi import BINARY, error_responses
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.store import ANY_OWNER, JobNotFound

__all__ = ["router"]


def _verified_artifact(request: Request, service: GenerationService, id: str, name: str, expires: int,
                       signature: str) -> tuple[bytes, str]:
    try:
        record = service.jobs.get(id, ANY_OWNER)
        secret = owner_secret(get_services(request), record.owner_id)
    except (JobNotFound, LookupError):
        raise InvalidSignature("this download URL's signature is not valid") from None
    if secret is None:
        raise InvalidSignature("this server signs no download URLs")
    check_download_signature(secret, id, name, expires, signature)
    return service.artifact(id, name, None)


async def download(id: str, name: str, request: Request, service: Generations,
                   expires: int = Query(..., description="Epoch seconds after which the URL is refused."),
                   signature: str = Query(..., max_length=64, description="HMAC-SHA256 of the job, name and "
                                          "expiry, URL-safe base64.")) -> Response:
    data, content_type = await asyncio.to_thread(_verified_artifact, request, service, id, name, expires, signature)
    filename = name.rsplit("/", 1)[-1]
    return Response(data, media_type=content_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Cache-Control": "private, max-age=60", "X-Content-Type-Options": "nosniff"})


router = APIRouter(tags=["Compatible APIs"])
router.add_api_route(DOWNLOAD_PREFIX + "{id}/{name:path}", download, methods=["GET"],
                     responses={200: {"description": "The artifact's bytes, with its media type.",
                                      "content": {"application/octet-stream": BINARY}},
                                **error_responses(403, 404, 422, 500,
                                                  texts={403: "Malformed, expired or foreign signature.",
                                                         422: "`expires` or `signature` missing or malformed."})},
                     summary="Download an artifact by a signed URL (no API key)")
