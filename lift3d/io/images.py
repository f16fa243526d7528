"""Loading and validating user images.

Every failure becomes a :class:`~lift3d.errors.InvalidInputError` (or its subclass
:class:`~lift3d.errors.PayloadTooLargeError`) whose message is one sentence a user can act on. The order of checks
is: file exists → byte size → content kind (magic bytes; PNG, JPEG and WebP only) → pixel size from the header,
before anything is decoded (decompression bombs) → full decode (truncated or corrupt data) → EXIF orientation →
mode conversion to RGB or RGBA.

Examples:
    >>> image = load_image("examples/catstatue.png")
    >>> image.mode in ("RGB", "RGBA")
    True
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from lift3d.errors import InvalidInputError, PayloadTooLargeError

__all__ = ["ImageLimits", "decode_base64_image", "detect_kind", "has_meaningful_alpha", "load_image"]

logger = logging.getLogger(__name__)

_ACCEPTED = "PNG, JPEG or WebP"
_HEADER_CLASSES = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}
# Errors Pillow raises while parsing or decoding damaged data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


@dataclass(frozen=True)
class ImageLimits:
    """Size limits for uploaded images.

    Attributes:
        max_bytes: largest encoded file accepted, bytes (default 20 MiB).
        max_side: largest width or height accepted, pixels (default 4096).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_side: int = 4096

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_side <= 0:
            raise ValueError(f"ImageLimits must be positive, got {self}")


def load_image(source: str | Path | bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Read, validate and fully decode an image.

    Args:
        source: a file path, or the encoded file content as bytes.
        limits: byte and pixel limits.

    Returns:
        A decoded PIL image in mode "RGB" or "RGBA" (RGBA when the file has an alpha channel or a transparency
        key), EXIF orientation applied. Palette, grey, grey+alpha, CMYK and 16-bit modes are converted; 16-bit
        values are scaled by 255/65535.

    Raises:
        InvalidInputError: missing file, empty file, not an image, unsupported format, truncated/corrupt data.
        PayloadTooLargeError: more than ``limits.max_bytes`` bytes, a side over ``limits.max_side`` px, or more
            pixels than Pillow's decompression-bomb limit.
    """
    # 1. bytes
    data = _read_bytes(source, limits)
    # 2. kind
    kind = detect_kind(data)
    if kind not in _HEADER_CLASSES:
        raise _kind_error(kind)
    # 3. header size, before decoding
    _check_header_size(data, kind, limits)
    # 4. full decode
    image = _decode(data, kind)
    # 5. orientation and mode
    image = _apply_exif_orientation(image)
    return _to_rgb_or_rgba(image)


def decode_base64_image(value: str, field: str, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode an image sent as base64 (optionally a ``data:`` URL) in a JSON field, validated as :func:`load_image`.

    Args:
        value: the base64 text.
        field: the field's name, used in error messages (e.g. ``masks[1]``).
        limits: size limits.

    Raises:
        InvalidInputError: not base64, or not a usable image (the message names ``field``);
        PayloadTooLargeError: over ``limits``.
    """
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) * 3 // 4 > limits.max_bytes + 3:
        raise PayloadTooLargeError(f"{field}: image is larger than {limits.max_bytes // (1024 * 1024)} MiB")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{field}: not valid base64") from None
    try:
        return load_image(data, limits)
    except PayloadTooLargeError as error:
        raise PayloadTooLargeError(f"{field}: {error}") from None
    except InvalidInputError as error:
        raise InvalidInputError(f"{field}: {error}") from None


def has_meaningful_alpha(image: Image.Image) -> bool:
    """True if the image has an alpha band with some pixels below 250 and some above 5 (of 255).

    Such an image already carries a cut-out (a fully opaque or fully transparent alpha carries none), so
    background removal can be skipped.
    """
    if "A" not in image.getbands():
        return False
    low, high = image.getchannel("A").getextrema()
    return bool(low < 250 and high > 5)


def detect_kind(data: bytes) -> str:
    """Name the content kind from its leading bytes.

    Returns:
        "PNG", "JPEG" or "WEBP" for accepted images; another image format name (e.g. "GIF", "BMP", "TIFF",
        "HEIC"); "document:<what>" for known non-image content (e.g. "document:a PDF document"); or "unknown".
    """
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for prefix, name in _OTHER_IMAGE_MAGIC:
        if head.startswith(prefix):
            return name
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "document:a video (MP4/QuickTime)"
    for prefix, what in _NON_IMAGE_MAGIC:
        if head.startswith(prefix):
            return f"document:{what}"
    text = head.lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in data[:1024].lower()):
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "document:an HTML page"
    if _looks_like_text(data[:1024]):
        return "document:text"
    return "unknown"


_OTHER_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"qoif", "QOI"),
)
_NON_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
    (b"glTF", "a GLB 3D model"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg media file"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
)


def _looks_like_text(sample: bytes) -> bool:
    try:
        decoded = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in decoded)


def _read_bytes(source: str | Path | bytes, limits: ImageLimits) -> bytes:
    """The encoded bytes; checks existence, emptiness and the byte limit."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_byte_count(len(data), limits)
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InvalidInputError(f"Image file not found: {path}.")
        if not path.is_file():
            raise InvalidInputError(f"Image path is not a regular file: {path}.")
        _check_byte_count(path.stat().st_size, limits)
        data = path.read_bytes()
        _check_byte_count(len(data), limits)
    else:
        raise InvalidInputError(f"Expected an image path or bytes, got {type(source).__name__}.")
    return data


def _check_byte_count(size: int, limits: ImageLimits) -> None:
    if size == 0:
        raise InvalidInputError("The image file is empty (0 bytes).")
    if size > limits.max_bytes:
        raise PayloadTooLargeError(
            f"The image file is {size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB."
        )


def _kind_error(kind: str) -> InvalidInputError:
    if kind.startswith("document:"):
        what = kind.split(":", 1)[1]
        return InvalidInputError(f"The file is not an image (it looks like {what}); upload a {_ACCEPTED} image.")
    if kind == "unknown":
        return InvalidInputError(f"The file is not an image (its content is not recognised); upload a {_ACCEPTED} image.")
    return InvalidInputError(f"{kind} images are not supported; upload a {_ACCEPTED} image.")


def _check_header_size(data: bytes, kind: str, limits: ImageLimits) -> None:
    """Read only the header (no decompression-bomb check, no decoding) and enforce the pixel limits."""
    try:
        header = _HEADER_CLASSES[kind](io.BytesIO(data))
        width, height = header.size
    except _DECODE_ERRORS as exc:
        raise InvalidInputError(f"The {kind} file is corrupt: its header cannot be read ({exc}).") from exc
    if width <= 0 or height <= 0:
        raise InvalidInputError(f"The {kind} file is corrupt: its header gives a size of {width}×{height} pixels.")
    if max(width, height) > limits.max_side:
        raise PayloadTooLargeError(
            f"The image is {width}×{height} pixels; each side must be at most {limits.max_side} px."
        )
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit is not None and width * height > bomb_limit:
        raise PayloadTooLargeError(
            f"The image is {width}×{height} pixels, more than the {bomb_limit} allowed (possible decompression bomb)."
        )


def _decode(data: bytes, kind: str) -> Image.Image:
    """Open as ``kind`` only and decode every pixel."""
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
        image.load()
    except Image.DecompressionBombError as exc:  # only reachable if the limits above are raised past Pillow's
        raise PayloadTooLargeError(f"The image is too large to decode safely ({exc}).") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidInputError(f"The {kind} file is truncated or corrupt and cannot be decoded ({exc}).") from exc
    return image


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag; a damaged EXIF block is ignored with a warning."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        logger.warning("Ignoring unreadable EXIF orientation: %s", exc)
        return image


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "RGB" or "RGBA" (RGBA iff the image carries alpha or a transparency key)."""
    mode = image.mode
    has_alpha = "A" in image.getbands() or mode in ("RGBa", "La", "PA") or "transparency" in image.info
    if mode.startswith("I"):
        image = _sixteen_bit_to_l(image)
    if has_alpha:
        return image.copy() if image.mode == "RGBA" else image.convert("RGBA")
    return image.copy() if image.mode == "RGB" else image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit grey ("I;16*", or "I" from 16-bit PNGs; values 0..65535) → 8-bit "L", scaled by 255/65535."""
    values = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8 → mode "L"
