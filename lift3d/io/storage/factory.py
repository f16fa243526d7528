"""Build an artifact store from a URL (service configuration, environment variables).

- ``/var/lib/lift3d``, ``./out`` or ``file:///var/lib/lift3d`` → :class:`LocalStore`
- ``s3://bucket/prefix?endpoint_url=http://minio:9000&region=eu-west-1`` → :class:`S3Store` (credentials from
  boto3's standard chain; ``create_bucket=true`` creates a missing bucket)

Examples:
    >>> make_store("file:///tmp/lift3d")
    <lift3d.io.storage.local.LocalStore ...>
    >>> make_store("s3://assets/lift3d?endpoint_url=http://127.0.0.1:9000")
    S3Store(s3://assets/lift3d at http://127.0.0.1:9000)
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from lift3d.io.storage.base import ArtifactStore
from lift3d.io.storage.local import LocalStore

__all__ = ["make_store"]

_S3_OPTIONS = {"endpoint_url", "region", "create_bucket"}


def make_store(url: str) -> ArtifactStore:
    """The artifact store that ``url`` names.

    Raises:
        ValueError: empty URL, unknown scheme, S3 URL without a bucket or with unknown query options.
    """
    if not url:
        raise ValueError("artifact store URL is empty; use a directory, file:///dir or s3://bucket/prefix")
    parts = urlsplit(url)
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and url[1:3] in (":\\", ":/")):  # C:\ paths
        path = unquote(parts.path) if parts.scheme == "file" else url
        return LocalStore(path)
    if parts.scheme == "s3":
        from lift3d.io.storage.s3 import S3Store

        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _S3_OPTIONS
        if unknown:
            raise ValueError(f"unknown S3 store option(s) {sorted(unknown)}; known: {sorted(_S3_OPTIONS)}")
        if not parts.netloc:
            raise ValueError(f"S3 store URL {url!r} has no bucket; use s3://bucket/prefix")
        return S3Store(
            parts.netloc,
            prefix=unquote(parts.path).strip("/"),
            endpoint_url=query.get("endpoint_url"),
            region_name=query.get("region"),
            create_bucket=query.get("create_bucket", "false").lower() in ("1", "true", "yes"),
        )
    raise ValueError(f"unsupported artifact store URL scheme {parts.scheme!r}; use a directory, file:// or s3://")
