"""Artifact store in a local directory (the embedded default, and the CLI's ``--out``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from lift3d.io.media_types import OCTET_STREAM
from lift3d.io.storage.base import StoredObjectNotFound
from nerf.io import write_atomic


class LocalStore:
    """Keys map to files under ``root``; writes go to a temporary file then ``os.replace``.

    Raises:
        ValueError: for keys that are absolute or climb out of ``root`` (``..``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if key.startswith("/") or (path != self.root and self.root not in path.parents):
            raise ValueError(f"invalid artifact key {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> None:
        write_atomic(self._path(key), data)

    def put_file(self, key: str, file: IO[bytes], content_type: str = OCTET_STREAM) -> None:
        """Store the rest of ``file`` under ``key``, copied in 1 MiB chunks (an upload never sits in memory whole);
        atomic like :meth:`put`."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                shutil.copyfileobj(file, handle, 1024 * 1024)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # as write_atomic: artifacts are meant to be read by others
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise StoredObjectNotFound(key) from None

    def get_file(self, key: str, file: IO[bytes]) -> None:
        """Write the object's bytes into the binary ``file`` in 1 MiB chunks (a large upload never sits in memory
        whole). Raises StoredObjectNotFound."""
        try:
            source = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise StoredObjectNotFound(key) from None
        with source:
            shutil.copyfileobj(source, file, 1024 * 1024)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        if not self.root.exists():
            return []
        # walk only the deepest folder the prefix names (a job's folder), not the whole store
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith("."))

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return len(keys)
