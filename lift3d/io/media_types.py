"""Media types (RFC 6838 names) of what the project reads, writes and serves: one constant per type, and the
extension → type table of artifacts. Plain strings, no imports, so the pipeline, the storage code, the service and
the deployments all share them.

Examples:
    >>> media_type_of("views/000_az000_el0.png")
    'image/png'
    >>> media_type_of("notes.txt")
    'application/octet-stream'
    >>> extension_of(GLB)
    'glb'
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_MEDIA_TYPES", "BY_EXTENSION", "BY_IMAGE_KIND", "EVENT_STREAM", "FORM_DATA", "FORM_URLENCODED", "GLB",
    "JPEG", "JSON", "MP4", "OCTET_STREAM", "PNG", "WEBP", "ZIP", "extension_of", "media_type_of",
]

GLB = "model/gltf-binary"
"""Binary glTF 2.0 (``model.glb``, ``model_textured.glb``)."""
PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
JSON = "application/json"
ZIP = "application/zip"
MP4 = "video/mp4"
"""H.264 in an MP4 container (``turntable.mp4``)."""
OCTET_STREAM = "application/octet-stream"
"""Bytes of no known type: the fallback."""
EVENT_STREAM = "text/event-stream"
"""Server-sent events (WHATWG HTML, "Server-sent events")."""
FORM_DATA = "multipart/form-data"
FORM_URLENCODED = "application/x-www-form-urlencoded"

BY_EXTENSION: dict[str, str] = {"glb": GLB, "png": PNG, "jpg": JPEG, "jpeg": JPEG, "webp": WEBP, "json": JSON,
                                "zip": ZIP, "mp4": MP4}
"""Media type of an artifact by its name's extension (lower case, without the dot)."""

BY_IMAGE_KIND: dict[str, str] = {"PNG": PNG, "JPEG": JPEG, "WEBP": WEBP}
"""Media type of an accepted image by its Pillow format name (:func:`lift3d.io.images.detect_kind`)."""

ARTIFACT_MEDIA_TYPES: tuple[str, ...] = (*dict.fromkeys(BY_EXTENSION.values()), OCTET_STREAM)
"""Every media type an artifact may be served as, in table order, the fallback last."""

_EXTENSIONS = {media_type: extension for extension, media_type in reversed(BY_EXTENSION.items())}


def media_type_of(name: str) -> str:
    """The media type of an artifact named ``name`` (a key or path; ``/`` separates folders) by its extension,
    :data:`OCTET_STREAM` when it has none or an unknown one."""
    base = name.rsplit("/", 1)[-1]
    extension = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    return BY_EXTENSION.get(extension, OCTET_STREAM)


def extension_of(media_type: str, default: str = "bin") -> str:
    """The file extension (without the dot) of ``media_type``: the first in :data:`BY_EXTENSION` (``jpg`` for
    JPEG), ``default`` for a type not in the table."""
    return _EXTENSIONS.get(media_type, default)
