"""Images that travel and are stored as their encoded bytes.

An image crosses process boundaries (Serve handles), lands in the artifact store, and is decoded only where its
pixels are needed. :class:`EncodedImage` holds either side and makes the other on first use, once: an image made
here is PNG-encoded only when its bytes are wanted; bytes from a user or a replica are decoded only when its pixels
are wanted, always with the one validating decoder (:func:`lift3d.io.images.load_image`).
"""

from __future__ import annotations

import io
from functools import cached_property

from PIL import Image

from lift3d.io.images import detect_kind, load_image

__all__ = ["EncodedImage", "png_bytes"]


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encoded ``image`` (lossless: decoding gives back the same pixels and mode)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class EncodedImage:
    """An image as encoded bytes (PNG, JPEG or WebP) and, when needed, as decoded pixels.

    Build it from bytes (``EncodedImage(data)``) or from pixels (:meth:`from_image`, PNG on demand). Pickling
    sends the bytes only.

    Examples:
        >>> encoded = EncodedImage.from_image(Image.new("RGBA", (4, 4)))
        >>> encoded.kind, encoded.data[:4], EncodedImage(encoded.data).image.size
        ('PNG', b'\\x89PNG', (4, 4))
    """

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def from_image(cls, image: Image.Image) -> EncodedImage:
        """Wrap decoded pixels; their PNG is made the first time :attr:`data` is read."""
        encoded = cls.__new__(cls)
        encoded.__dict__["image"] = image
        return encoded

    @cached_property
    def data(self) -> bytes:
        """The encoded file's bytes (PNG for images wrapped by :meth:`from_image`)."""
        return png_bytes(self.__dict__["image"])

    @cached_property
    def image(self) -> Image.Image:
        """The decoded RGB or RGBA image (treat as read-only).

        Raises:
            InvalidInputError / PayloadTooLargeError: the bytes are not a usable image (see ``load_image``).
        """
        return load_image(self.data)

    @property
    def kind(self) -> str:
        """``PNG``, ``JPEG`` or ``WEBP`` (see :func:`~lift3d.io.images.detect_kind`)."""
        return "PNG" if "data" not in self.__dict__ else detect_kind(self.data)

    def __getstate__(self) -> dict:
        return {"data": self.data}
