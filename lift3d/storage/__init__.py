"""Artifact stores: where generations, their artifacts and job records are kept."""

from lift3d.storage.base import ArtifactStore, StoredObjectNotFound
from lift3d.storage.local import LocalStore

__all__ = ["ArtifactStore", "LocalStore", "StoredObjectNotFound"]
