"""Uploads of posed views for ``views-to-3d`` jobs: a ZIP holding ``transforms.json`` (NeRF-synthetic convention)
and the images it references, at the root or inside one top-level folder. Torch-free (used by the ingress).

The API streams the upload to a spooled temporary file (:func:`lift3d.service.api.bodies.parse_views`: on disk past
1 MiB), so the functions here take the ZIP as bytes or as a seekable binary file, and :func:`store_upload` copies a
file into the artifact store in chunks where the store can (``put_file``): a 200 MiB upload never sits in memory.

The ZIP is checked from its central directory before anything is extracted: size, member count, total
uncompressed size (zip bombs), member paths (no absolute paths, no ``..``), and the presence of
``transforms.json``. Its content (poses, images) is checked later by :func:`lift3d.reconstruct.reconstruct`, so a
bad ``transforms.json`` fails the job rather than the request.

Examples:
    >>> root = check_views_zip(data)             # raises BadRequestError / PayloadTooLargeError / InvalidInputError
    >>> root = check_views_zip(spooled_file)     # the same from a file (read through its central directory)
    >>> views_dir = extract_views_zip(data, tmp)  # the folder holding transforms.json
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Union

from pydantic import Field

from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.params import TextureParams
from lift3d.service.schemas import BadRequestError

__all__ = ["ReconstructParams", "ViewsZip", "ViewsZipLimits", "check_views_zip", "extract_views_zip", "fetch_upload",
           "store_upload"]

_MiB = 1024 * 1024

ViewsZip = Union[bytes, IO[bytes]]
"""A views ZIP: its bytes, or a seekable binary file holding them (read from its start)."""


def _size(data: ViewsZip) -> int:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    size = data.seek(0, os.SEEK_END)
    data.seek(0)
    return size


def _open(data: ViewsZip) -> IO[bytes]:
    """A binary file over ``data`` at its start."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(data)
    data.seek(0)
    return data


class ReconstructParams(TextureParams):
    """User options of a ``views-to-3d`` job (a subset of :class:`lift3d.reconstruct.ReconstructOptions`; the seed
    is the job's ``params.seed``)."""

    steps: int | None = Field(None, ge=1, le=20000, description="Photometric NeRF training steps; omitted: the "
                              "preset's (800; tiny: 400).")
    mesh_resolution: int = Field(128, ge=32, le=512, description="Marching-cubes grid points per axis.")


@dataclass(frozen=True)
class ViewsZipLimits:
    """Limits on an uploaded views ZIP."""

    max_bytes: int = 200 * _MiB
    """Compressed size of the upload."""
    max_uncompressed_bytes: int = 1024 * _MiB
    """Sum of the members' uncompressed sizes (as declared in the central directory)."""
    max_members: int = 5000
    """Number of members (files and folders)."""


def check_views_zip(data: ViewsZip, limits: ViewsZipLimits = ViewsZipLimits()) -> str:
    """Validate a views ZIP (bytes, or a seekable binary file) without extracting it.

    Returns:
        The folder inside the archive holding ``transforms.json``: ``""`` (root) or ``"name/"``.

    Raises:
        PayloadTooLargeError: over ``limits`` (bytes, member count, uncompressed size).
        BadRequestError: not a ZIP, encrypted, or a member path that is absolute or contains ``..``.
        InvalidInputError: no ``transforms.json`` at the root or in a single top-level folder.
    """
    if _size(data) > limits.max_bytes:
        raise PayloadTooLargeError(f"views: ZIP is larger than {limits.max_bytes // _MiB} MiB")
    try:
        with zipfile.ZipFile(_open(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise BadRequestError("views: not a valid ZIP file") from None
    if len(members) > limits.max_members:
        raise PayloadTooLargeError(f"views: ZIP has {len(members)} members; at most {limits.max_members}")
    if sum(m.file_size for m in members) > limits.max_uncompressed_bytes:
        raise PayloadTooLargeError(f"views: ZIP expands to more than {limits.max_uncompressed_bytes // _MiB} MiB")
    for member in members:
        _check_member_path(member.filename)
        if member.flag_bits & 0x1:
            raise BadRequestError(f"views: {member.filename!r} is encrypted")
    names = {m.filename for m in members if not m.is_dir()}
    if "transforms.json" in names:
        return ""
    folders = {name.split("/", 1)[0] for name in names if not name.startswith("__MACOSX/")}
    if len(folders) == 1 and f"{next(iter(folders))}/transforms.json" in names:
        return f"{next(iter(folders))}/"
    raise InvalidInputError("views: the ZIP must contain transforms.json at its root or in one top-level folder")


def _check_member_path(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise BadRequestError(f"views: unsafe path in ZIP: {name!r} (absolute or containing '..')")


def extract_views_zip(data: ViewsZip, dest: str | Path, limits: ViewsZipLimits = ViewsZipLimits()) -> Path:
    """Check (:func:`check_views_zip`) and extract a views ZIP into ``dest``.

    Members are streamed with a byte budget, so a central directory lying about sizes cannot expand past
    ``limits.max_uncompressed_bytes``.

    Returns:
        The extracted folder holding ``transforms.json``.
    """
    root = check_views_zip(data, limits)
    dest = Path(dest).resolve()
    budget = limits.max_uncompressed_bytes
    with zipfile.ZipFile(_open(data)) as archive:
        for member in archive.infolist():
            target = (dest / member.filename).resolve()
            if not target.is_relative_to(dest):
                raise BadRequestError(f"views: unsafe path in ZIP: {member.filename!r}")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                while chunk := source.read(1024 * 1024):
                    budget -= len(chunk)
                    if budget < 0:
                        raise PayloadTooLargeError(
                            f"views: ZIP expands to more than {limits.max_uncompressed_bytes // _MiB} MiB")
                    sink.write(chunk)
    return dest / root


def fetch_upload(store: Any, key: str, file: Any) -> None:
    """Write a stored upload into the seekable binary ``file`` and rewind it: through the store's
    ``get_file(key, file)`` when it has one (copied in chunks), else its ``get``. Raises StoredObjectNotFound."""
    get_file = getattr(store, "get_file", None)
    if get_file is None:
        file.write(store.get(key))
    else:
        get_file(key, file)
    file.seek(0)


def store_upload(store: Any, key: str, data: ViewsZip, content_type: str) -> None:
    """Put an upload (bytes, or a seekable binary file) into an artifact store: a file goes through the store's
    ``put_file(key, file, content_type)`` when it has one (copied in chunks), else it is read and ``put``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        store.put(key, bytes(data), content_type)
        return
    data.seek(0)
    put_file = getattr(store, "put_file", None)
    if put_file is not None:
        put_file(key, data, content_type)
    else:
        store.put(key, data.read(), content_type)
