"""The artifact-store interface shared by the local-directory and S3 backends."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lift3d.io.media_types import OCTET_STREAM


class StoredObjectNotFound(KeyError):
    """No object under the requested key."""


@runtime_checkable
class ArtifactStore(Protocol):
    """A flat key → bytes store. Keys use ``/`` separators, e.g. ``generations/{id}/model.glb``.

    Writes are atomic: a reader sees the old object or the new one, never a partial write.
    """

    def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        """Store ``data`` under ``key``, replacing any previous object."""

    def get(self, key: str) -> bytes:
        """The object's bytes. Raises StoredObjectNotFound."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A URL a client can fetch the object from (presigned for S3, ``file://`` locally)."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (non-empty); returns how many were deleted."""
