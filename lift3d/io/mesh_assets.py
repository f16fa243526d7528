"""Writing a generated mesh: ``model.glb`` with vertex colours, optionally decimated, and ``model_textured.glb``
(xatlas UV atlas, albedo baked into a texture, PBR material). Used by ``generate`` and ``reconstruct``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import trimesh

from lift3d.errors import InvalidInputError
from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.media_types import GLB
from lift3d.params import TEXTURE_SIZES, TextureParams
from nerf.texture import bake_texture, decimate, textured_glb_bytes, unwrap

__all__ = ["AlbedoFn", "MeshExportOptions", "write_mesh_assets"]

AlbedoFn = Callable[[torch.Tensor], torch.Tensor]
"""World points (M, 3) → albedo (M, 3) in [0, 1]."""


@dataclass
class MeshExportOptions:
    """How a mesh is written, for ``lift3d generate``, ``lift3d reconstruct`` and their HTTP jobs (the user-facing
    fields come from :class:`~lift3d.params.TextureParams`)."""

    texture: bool = True
    """Also write ``model_textured.glb`` (xatlas UVs, baked albedo, PBR material)."""
    texture_size: int = 1024
    """Texture side in texels: 512, 1024 or 2048."""
    target_faces: int | None = None
    """Decimate the mesh to about this many faces before export (>= 100); None keeps marching cubes' mesh."""
    textured_model: bool = False
    """With ``texture``: write the textured GLB as ``model.glb`` and no vertex-colour GLB (``method="fast"``: the
    asset is the textured mesh, as Stable Fast 3D returns it)."""
    texture_max_faces: int = 50_000
    """The textured mesh is decimated to at most this many faces (xatlas time grows quickly with faces:
    about 12 s at 50k faces, 80 s at 160k on one core)."""

    @classmethod
    def from_params(cls, params: TextureParams) -> MeshExportOptions:
        """The options a user asked for (``texture``, ``texture_size``, ``target_faces``; a ``method`` of
        ``fast`` sets ``textured_model``); other fields default."""
        return cls(texture=params.texture, texture_size=params.texture_size, target_faces=params.target_faces,
                   textured_model=getattr(params, "method", "sds") == "fast")

    def check(self) -> None:
        """Raise :class:`InvalidInputError` naming the first out-of-range option."""
        if self.texture_size not in TEXTURE_SIZES:
            raise InvalidInputError(f"texture size must be one of {TEXTURE_SIZES}, got {self.texture_size}")
        if self.target_faces is not None and self.target_faces < 100:
            raise InvalidInputError(f"target faces must be >= 100, got {self.target_faces}")
        if self.texture_max_faces < 100:
            raise InvalidInputError(f"texture max faces must be >= 100, got {self.texture_max_faces}")


def write_mesh_assets(writer: ArtifactWriter, mesh: trimesh.Trimesh, albedo_fn: AlbedoFn | None,
                      options: MeshExportOptions, *, recenter: bool) -> trimesh.Trimesh:
    """Write ``model.glb`` (vertex colours) and, if ``options.texture``, ``model_textured.glb`` — or, with
    ``options.textured_model`` and ``options.texture``, only ``model.glb`` holding the textured mesh.

    Args:
        writer: destination.
        mesh: z-up world mesh with vertex colours.
        albedo_fn: world points (M, 3) → albedo (M, 3) in [0, 1], used for the texture bake (and for vertex colours
            after decimation); None bakes the vertex colours instead.
        options: decimation and texture options (not re-checked).
        recenter: move the bounding-box centre to the origin in the GLBs (False keeps the world frame).

    Returns:
        The mesh written to ``model.glb`` (decimated if ``options.target_faces`` is set; with ``textured_model``, the
        geometry of the textured GLB, with vertex colours — the GLB itself splits vertices along UV seams).
    """
    if options.target_faces is not None:
        mesh = decimate(mesh, options.target_faces)
        if albedo_fn is not None:
            with torch.no_grad():
                rgb = albedo_fn(torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)).cpu().numpy()
            mesh.visual.vertex_colors = np.concatenate(
                [np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    if not (options.texture and options.textured_model):
        writer.model(mesh, recenter=recenter)
    if options.texture:
        textured_source = decimate(mesh, options.texture_max_faces)
        uv_mesh = unwrap(textured_source, size=options.texture_size)
        baked = bake_texture(uv_mesh, albedo_fn, size=options.texture_size)
        data = textured_glb_bytes(baked.mesh, baked.image, baked.uv, z_up_to_y_up=True, recenter=recenter)
        writer.put("model.glb" if options.textured_model else "model_textured.glb", data, GLB)
        if options.textured_model:
            return textured_source
    return mesh
