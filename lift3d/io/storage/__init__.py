"""Artifact stores: where generations, their artifacts and job records are kept."""

from lift3d.io.storage.base import ArtifactStore, StoredObjectNotFound
from lift3d.io.storage.factory import make_store
from lift3d.io.storage.local import LocalStore
from lift3d.io.storage.s3 import S3Store

__all__ = ["ArtifactStore", "LocalStore", "S3Store", "StoredObjectNotFound", "make_store"]
