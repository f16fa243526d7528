"""Artifact store in an S3 bucket (AWS S3 or any S3-protocol server: MinIO, Ceph, moto) through boto3.

Credentials come from boto3's standard chain (environment, shared config/credentials files, instance or pod
role); nothing here reads secrets itself. A PUT of one object is atomic in S3: a reader sees the old object or
the new one, never part of a write.

Examples:
    >>> store = S3Store("my-bucket", prefix="lift3d", endpoint_url="http://127.0.0.1:9000")
    >>> store.put("generations/abc/model.glb", glb, "model/gltf-binary")
    >>> store.url("generations/abc/model.glb")   # presigned GET, valid one hour
    'http://127.0.0.1:9000/my-bucket/lift3d/generations/abc/model.glb?X-Amz-Algorithm=...'
"""

from __future__ import annotations

from typing import Any

from lift3d.io.media_types import OCTET_STREAM
from lift3d.io.storage.base import StoredObjectNotFound

__all__ = ["S3Store"]

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Store:
    """Keys live under ``s3://{bucket}/{prefix}/``.

    Args:
        bucket: bucket name; it must exist (``create_bucket=True`` creates it, for tests and MinIO setups).
        prefix: key prefix without leading or trailing ``/`` ("" for the bucket root).
        endpoint_url: S3-compatible endpoint, e.g. ``http://minio:9000``; None for AWS.
        region_name: AWS region; None uses the credential chain's default.
        client: a ready boto3 S3 client (overrides endpoint_url and region_name).
        create_bucket: create the bucket when it is missing.

    Raises:
        ValueError: for keys that are absolute or contain ``..`` segments.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any | None = None,
        create_bucket: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("S3Store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region_name,
                config=Config(retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4"),
            )
        self.client = client
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in _MISSING_CODES:
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def put_file(self, key: str, file: Any, content_type: str = OCTET_STREAM) -> None:
        """Store the rest of the binary ``file`` under ``key`` (boto3's managed, chunked upload)."""
        self.client.upload_fileobj(file, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise StoredObjectNotFound(key) from None
            raise
        return response["Body"].read()

    def get_file(self, key: str, file: Any) -> None:
        """Write the object's bytes into the binary ``file`` (boto3's managed, chunked download). Raises
        StoredObjectNotFound."""
        from botocore.exceptions import ClientError

        try:
            self.client.download_fileobj(self.bucket, self._key(key), file)
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                raise StoredObjectNotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise
        return True

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", ()))
        return sorted(keys)

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL valid for ``expires_s`` seconds."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=int(expires_s)
        )

    def delete_prefix(self, prefix: str) -> int:
        """Batch deletes (1 000 keys per request). Production buckets should also carry the lifecycle rule in
        docs/serving.md, so that objects expire even when no sweeper runs."""
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):
            objects = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        return len(keys)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Store(s3://{self.bucket}/{self.prefix}{where})"


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
