"""Encoding a generation's outputs and writing them to an artifact store as soon as each is ready.

Layout under ``prefix`` (``""`` for the CLI's ``--out DIR``, ``generations/{id}/`` for the service):
``input.png``, ``views/NNN_az{azimuth}_el{elevation}.png``, ``views.png`` (contact sheet), ``model.glb``,
``metadata.json``.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import trimesh
from PIL import Image

from lift3d.io.storage.base import ArtifactStore
from nerf.export import export_glb

__all__ = ["ArtifactWriter", "contact_sheet", "glb_bytes", "png_bytes"]


def png_bytes(image: Image.Image) -> bytes:
    """PNG-encoded ``image``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def glb_bytes(mesh: trimesh.Trimesh, *, recenter: bool = True) -> bytes:
    """Binary glTF of a z-up ``mesh`` (converted to glTF's Y-up axes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_glb(mesh, Path(tmp) / "model.glb", z_up_to_y_up=True, recenter=recenter)
        return Path(path).read_bytes()


def contact_sheet(images: list[Image.Image], columns: int | None = None, background=(255, 255, 255)) -> Image.Image:
    """All ``images`` (same size) on one RGB grid, row-major; ``columns`` defaults to ceil(sqrt(n))."""
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
    """Writes one generation's artifacts under ``prefix`` in ``store``; remembers the keys it wrote."""

    def __init__(self, store: ArtifactStore, prefix: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.keys: list[str] = []

    def put(self, name: str, data: bytes, content_type: str) -> str:
        key = f"{self.prefix}{name}"
        self.store.put(key, data, content_type)
        self.keys.append(key)
        return key

    def input_image(self, rgba: Image.Image) -> str:
        return self.put("input.png", png_bytes(rgba), "image/png")

    def views(self, named_images: list[tuple[str, Image.Image]]) -> list[str]:
        """Each view as ``views/{NNN}_{name}`` plus the ``views.png`` contact sheet."""
        keys = [
            self.put(f"views/{index:03d}_{name}", png_bytes(image), "image/png")
            for index, (name, image) in enumerate(named_images)
        ]
        keys.append(self.put("views.png", png_bytes(contact_sheet([im for _, im in named_images])), "image/png"))
        return keys

    def model(self, mesh: trimesh.Trimesh, *, recenter: bool = True) -> str:
        return self.put("model.glb", glb_bytes(mesh, recenter=recenter), "model/gltf-binary")

    def metadata(self, metadata: dict) -> str:
        data = json.dumps(metadata, indent=2, sort_keys=True, default=str).encode()
        return self.put("metadata.json", data, "application/json")
