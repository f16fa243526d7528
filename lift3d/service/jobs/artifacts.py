"""Where a client downloads a job's artifacts: the one rule behind every artifact URL the service hands out (the
status result, the artifact listing, the terminal event and the ``generation.completed`` webhook).

1. The store's own URL when a client can fetch it: an ``https://`` or ``http://`` URL, i.e. a presigned S3 GET
   valid for ``expires_s`` seconds (:meth:`lift3d.io.storage.s3.S3Store.url`).
2. Else the API's path ``/v1/generation/{id}/artifacts/{name}``, relative to the server, with the name
   percent-encoded (``/`` kept): a server path (``file://``) never leaves the service.

Examples:
    >>> artifact_path("0" * 32, "views/000 az0.png")
    '/v1/generation/00000000000000000000000000000000/artifacts/views/000%20az0.png'
    >>> ArtifactUrls(S3Store("bucket"), expires_s=600)(job_id, "model.glb")  # doctest: +SKIP
    'https://bucket.s3.amazonaws.com/generations/…/model.glb?X-Amz-Algorithm=…&X-Amz-Expires=600…'
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from lift3d.io.storage.base import ArtifactStore

__all__ = ["ArtifactUrls", "artifact_path", "job_prefix"]


def job_prefix(job_id: str) -> str:
    """Store prefix of a job's artifacts and upload: ``generations/{id}/``."""
    return f"generations/{job_id}/"


def artifact_path(job_id: str, name: str) -> str:
    """The API path of an artifact, ``/v1/generation/{id}/artifacts/{name}`` with ``name`` percent-encoded
    (RFC 3986; ``/`` separates folders and stays)."""
    return f"/v1/generation/{job_id}/artifacts/{quote(name, safe='/')}"


@dataclass(frozen=True)
class ArtifactUrls:
    """``(job_id, name) → URL`` of an artifact, by the rule of this module.

    Attributes:
        store: the job store's artifact store; None: API paths only (no store to presign with).
        expires_s: lifetime in seconds of presigned URLs (> 0).
    """

    store: ArtifactStore | None = None
    expires_s: int = 3600

    def __call__(self, job_id: str, name: str) -> str:
        if self.store is not None:
            url = self.store.url(job_prefix(job_id) + name, self.expires_s)
            if url.startswith(("https://", "http://")):
                return url
        return artifact_path(job_id, name)
