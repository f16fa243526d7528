"""Uploads of posed views for ``views-to-3d`` jobs: a ZIP holding ``transforms.json`` (NeRF-synthetic convention)
and the images it references, at the root or inside one top-level folder. Torch-free (used by the ingress).

The ZIP is checked from its central directory before anything is extracted: size, member count, total
uncompressed size (zip bombs), member paths (no absolute paths, no ``..``), and the presence of
``transforms.json``. Its content (poses, images) is checked later by :func:`lift3d.reconstruct.reconstruct`, so a
bad ``transforms.json`` fails the job rather than the request.

Examples:
    >>> root = check_views_zip(data)             # raises BadRequestError / PayloadTooLargeError / InvalidInputError
    >>> views_dir = extract_views_zip(data, tmp)  # the folder holding transforms.json
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import Field

from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.params import TextureParams
from lift3d.service.schemas import BadRequestError

__all__ = ["ReconstructParams", "ViewsZipLimits", "check_views_zip", "extract_views_zip"]

_MiB = 1024 * 1024


class ReconstructParams(TextureParams):
    """User options of a ``views-to-3d`` job (a subset of :class:`lift3d.reconstruct.ReconstructOptions`; the seed
    is the job's ``params.seed``)."""

    steps: int = Field(400, ge=1, le=20000, description="Photometric NeRF training steps.")
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


def check_views_zip(data: bytes, limits: ViewsZipLimits = ViewsZipLimits()) -> str:
    """Validate a views ZIP without extracting it.

    Returns:
        The folder inside the archive holding ``transforms.json``: ``""`` (root) or ``"name/"``.

    Raises:
        PayloadTooLargeError: over ``limits`` (bytes, member count, uncompressed size).
        BadRequestError: not a ZIP, encrypted, or a member path that is absolute or contains ``..``.
        InvalidInputError: no ``transforms.json`` at the root or in a single top-level folder.
    """
    if len(data) > limits.max_bytes:
        raise PayloadTooLargeError(f"views: ZIP is larger than {limits.max_bytes // _MiB} MiB")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
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


def extract_views_zip(data: bytes, dest: str | Path, limits: ViewsZipLimits = ViewsZipLimits()) -> Path:
    """Check (:func:`check_views_zip`) and extract a views ZIP into ``dest``.

    Members are streamed with a byte budget, so a central directory lying about sizes cannot expand past
    ``limits.max_uncompressed_bytes``.

    Returns:
        The extracted folder holding ``transforms.json``.
    """
    root = check_views_zip(data, limits)
    dest = Path(dest).resolve()
    budget = limits.max_uncompressed_bytes
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
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
