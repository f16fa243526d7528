"""Where a batch reads and writes: local paths, ``file://`` and ``s3://bucket/key`` URIs, through the artifact
stores of :mod:`lift3d.io.storage` (S3 through boto3; credentials from boto3's standard chain).

Examples:
    >>> resolve("cat.png", "s3://bucket/jobs/manifest.jsonl")
    's3://bucket/jobs/cat.png'
    >>> resolve("cat.png", "/data/manifest.jsonl")
    '/data/cat.png'
"""

from __future__ import annotations

import posixpath
import threading
from pathlib import Path
from urllib.parse import urlsplit

from lift3d.errors import InvalidInputError
from lift3d.io.storage import ArtifactStore, LocalStore, S3Store, StoredObjectNotFound

__all__ = ["Reader", "is_s3", "open_output", "resolve"]


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return uri.startswith("s3://")


def _local_path(uri: str) -> Path:
    return Path(urlsplit(uri).path) if uri.startswith("file://") else Path(uri)


def resolve(reference: str, base: str) -> str:
    """``reference`` (a path or URI from a manifest row) made absolute against the manifest at ``base``: relative
    references are relative to the manifest's folder (or S3 prefix); absolute paths and URIs stay as they are."""
    if "://" in reference or Path(reference).is_absolute():
        return reference
    if is_s3(base):
        parts = urlsplit(base)
        key = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path.lstrip("/")), reference))
        return f"s3://{parts.netloc}/{key}"
    return str(_local_path(base).resolve().parent / reference)


class Reader:
    """Reads local files and S3 objects (one boto3 client per bucket, shared by threads: boto3 clients are
    thread-safe).

    Args:
        endpoint_url: S3-protocol endpoint of every ``s3://`` URI (None: boto3's default).
    """

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._buckets: dict[str, S3Store] = {}
        self._lock = threading.Lock()

    def _bucket(self, name: str) -> S3Store:
        with self._lock:
            if name not in self._buckets:
                self._buckets[name] = S3Store(name, endpoint_url=self.endpoint_url)
            return self._buckets[name]

    def read(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The content of a local file (a path or ``file://`` URI) or an S3 object (``s3://bucket/key``).

        Raises:
            InvalidInputError: missing or unreadable file or object, no bucket, or more than ``max_bytes`` bytes.
        """
        if is_s3(uri):
            parts = urlsplit(uri)
            if not parts.netloc or not parts.path.strip("/"):
                raise InvalidInputError(f"{uri}: not an S3 object URI; use s3://bucket/key")
            try:
                data = self._bucket(parts.netloc).get(parts.path.lstrip("/"))
            except StoredObjectNotFound:
                raise InvalidInputError(f"{uri}: no such S3 object") from None
        else:
            data = _read_local(uri, max_bytes)
        if max_bytes is not None and len(data) > max_bytes:
            raise InvalidInputError(f"{uri}: larger than {max_bytes} bytes")
        return data


def _read_local(uri: str, max_bytes: int | None) -> bytes:
    path = _local_path(uri)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise InvalidInputError(f"{uri}: larger than {max_bytes} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{uri}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{uri}: is a directory, not a file") from None
    except PermissionError:
        raise InvalidInputError(f"{uri}: permission denied") from None


def open_output(uri: str, endpoint_url: str | None = None) -> ArtifactStore:
    """The artifact store of a batch's ``--out``: a :class:`LocalStore` (folder created) or an :class:`S3Store` on
    ``s3://bucket/prefix`` (the bucket must exist)."""
    if is_s3(uri):
        parts = urlsplit(uri)
        if not parts.netloc:
            raise InvalidInputError(f"--out {uri!r} has no bucket; use s3://bucket/prefix")
        return S3Store(parts.netloc, prefix=parts.path.strip("/"), endpoint_url=endpoint_url)
    path = _local_path(uri)
    path.mkdir(parents=True, exist_ok=True)
    return LocalStore(path)
