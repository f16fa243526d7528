"""Writing a generation's outputs to an artifact store as soon as each is ready.

Layout under ``prefix`` (``""`` for the CLI's ``--out DIR``, ``generations/{id}/`` for the service):
``input.png``, ``views/NNN_az{azimuth}_el{elevation}.png``, ``views.png`` (contact sheet), ``model.glb``,
``model_textured.glb``, ``metadata.json`` (``reconstruct`` adds ``preview.png``).
"""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata as importlib_metadata

import trimesh
from PIL import Image

from lift3d.io.encoded import EncodedImage, png_bytes
from lift3d.io.media_types import GLB, JSON, PNG
from lift3d.io.storage.base import ArtifactStore
from nerf.export import glb_bytes

__all__ = ["ArtifactWriter", "contact_sheet", "package_versions"]

VERSIONED_PACKAGES = ("lift3d", "torch", "numpy", "diffusers", "transformers", "rembg", "onnxruntime", "trimesh",
                      "xatlas", "fast-simplification", "PyMCubes")
"""The packages whose versions shape an asset (recorded in every ``metadata.json``)."""


def package_versions() -> dict[str, str]:
    """Python's and the installed versions of :data:`VERSIONED_PACKAGES` ("not installed" when absent)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def contact_sheet(images: list[Image.Image], columns: int | None = None, background=(255, 255, 255)) -> Image.Image:
    """All ``images`` (same size) on one RGB grid, row-major; ``columns`` defaults to ceil(sqrt(n)).

    Raises:
        ValueError: no images.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), background)
    for index, image in enumerate(images):
        tile = image.convert("RGBA")
        sheet.paste(tile, ((index % columns) * width, (index // columns) * height), tile)
    return sheet


class ArtifactWriter:
    """Writes one generation's artifacts under ``prefix`` in ``store``; remembers the keys it wrote, in order."""

    def __init__(self, store: ArtifactStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.keys: list[str] = []

    @property
    def names(self) -> list[str]:
        """The written keys relative to ``prefix`` (``model.glb``, ``views/000_az000_el0.png``, …)."""
        return [key[len(self.prefix):] for key in self.keys]

    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store ``data`` as ``{prefix}{name}``; returns the key."""
        key = f"{self.prefix}{name}"
        self.store.put(key, data, content_type)
        self.keys.append(key)
        return key

    def png(self, name: str, image: EncodedImage | Image.Image) -> str:
        """Store a PNG: an :class:`EncodedImage` PNG as its bytes, anything else encoded once."""
        if isinstance(image, EncodedImage):
            data = image.data if image.kind == "PNG" else png_bytes(image.image)
        else:
            data = png_bytes(image)
        return self.put(name, data, PNG)

    def views(self, named_images: list[tuple[str, EncodedImage]]) -> list[str]:
        """Each view as ``views/{NNN}_{name}`` plus the ``views.png`` contact sheet."""
        keys = [self.png(f"views/{index:03d}_{name}", image) for index, (name, image) in enumerate(named_images)]
        keys.append(self.png("views.png", contact_sheet([image.image for _, image in named_images])))
        return keys

    def model(self, mesh: trimesh.Trimesh, *, recenter: bool = True, name: str = "model.glb") -> str:
        """Store a z-up ``mesh`` as GLB (glTF's Y-up axes), optionally with its bounding box centred."""
        return self.put(name, glb_bytes(mesh, z_up_to_y_up=True, recenter=recenter), GLB)

    def metadata(self, metadata: dict) -> str:
        """Store ``metadata.json`` (sorted keys, indented)."""
        data = json.dumps(metadata, indent=2, sort_keys=True, default=str).encode()
        return self.put("metadata.json", data, JSON)
