"""The GLB a generation writes, read back as one trimesh mesh, and the mesh formats trimesh writes from it: OBJ (in a
ZIP with its MTL and PNG texture), STL, PLY and 3MF.

Units and axes: a GLB is y-up in metres (glTF 2.0 §3.4, "Coordinate System and Units"). OBJ and PLY keep those
numbers (neither format states a unit). STL and 3MF are written in millimetres, the printing convention: 3MF states
``unit="millimeter"`` in its model (3MF Core Specification §3.4.1; trimesh always writes that unit), and slicers read
unit-less STL as millimetres, so a 1 m tall GLB prints 1000 mm tall from either.

Examples:
    >>> mesh = load_glb_mesh(open("model_textured.glb", "rb").read())  # doctest: +SKIP
    >>> sorted(zipfile.ZipFile(io.BytesIO(obj_zip_bytes(mesh))).namelist())  # doctest: +SKIP
    ['albedo.png', 'model.mtl', 'model.obj']
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import trimesh
from PIL import Image
from trimesh.exchange.obj import export_obj

from lift3d.errors import InvalidInputError

__all__ = ["MM_PER_M", "load_glb_mesh", "obj_zip_bytes", "ply_bytes", "stl_bytes", "texture_of", "threemf_bytes",
           "welded"]

MM_PER_M = 1000.0
"""Millimetres per metre: the scale from a GLB's metres to STL and 3MF."""

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""The timestamp of every ZIP member (the earliest a ZIP can hold), so that one mesh gives the same bytes each time."""


def load_glb_mesh(data: bytes) -> trimesh.Trimesh:
    """The triangles of a GLB as one mesh: every node's transform applied, several meshes concatenated.

    Args:
        data: a binary glTF 2.0 file (``model.glb`` or ``model_textured.glb``).

    Returns:
        The mesh in the GLB's frame (y-up, metres), vertices in file order (``process=False``: nothing merged), with
        its visual: :class:`trimesh.visual.TextureVisuals` (UVs, v = 0 at the image's bottom, and a PBR material) for
        a textured GLB, vertex colours otherwise.

    Raises:
        InvalidInputError: ``data`` is not a GLB trimesh reads, or it holds no triangles.
    """
    try:
        scene = trimesh.load(io.BytesIO(data), file_type="glb", force="scene", process=False)
    except Exception as exc:  # trimesh raises many kinds on a malformed file
        raise InvalidInputError(f"not a readable GLB: {type(exc).__name__}: {exc}") from None
    meshes = [geometry for geometry in scene.dump() if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces)]
    if not meshes:
        raise InvalidInputError("the GLB holds no triangles")
    return meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)


def texture_of(mesh: trimesh.Trimesh) -> Image.Image | None:
    """The base-colour texture of a UV-mapped mesh (a glTF PBR material's ``baseColorTexture`` or a simple
    material's ``image``), as RGB; None for a mesh without UVs or texture."""
    visual = mesh.visual
    if (not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None
            or len(visual.uv) != len(mesh.vertices)):
        return None
    material = visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    return None if image is None else image.convert("RGB")


def _vertex_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """RGBA uint8 colours, one row per vertex: the texture sampled at each vertex's UV, or the vertex colours;
    None for a mesh with neither."""
    if texture_of(mesh) is not None:
        return np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.uint8)
    if isinstance(mesh.visual, trimesh.visual.ColorVisuals) and mesh.visual.kind == "vertex":
        return np.asarray(mesh.visual.vertex_colors, dtype=np.uint8)
    return None


def welded(mesh: trimesh.Trimesh, *, colors: bool = False, scale: float = 1.0) -> trimesh.Trimesh:
    """The mesh with vertices at one position merged (a textured mesh's UV seams split them), positions times
    ``scale``; with ``colors``, vertex colours (:func:`_vertex_colors`; the texture sampled at the UVs). The
    geometry formats store no UVs, and a printer wants one closed surface, not one cut along texture seams.

    Faces keep their order and number; vertices are what trimesh leaves after ``merge_vertices`` (which is also what
    it leaves when it loads the written file, so a reader sees the same counts)."""
    vertex_colors = _vertex_colors(mesh) if colors else None
    plain = trimesh.Trimesh(vertices=np.asarray(mesh.vertices, dtype=np.float64) * scale,
                            faces=np.asarray(mesh.faces), vertex_colors=vertex_colors, process=False)
    plain.merge_vertices(merge_tex=True, merge_norm=True)
    return plain


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def obj_zip_bytes(mesh: trimesh.Trimesh, *, name: str = "model") -> bytes:
    """A ZIP of ``{name}.obj``, ``{name}.mtl`` and the PNG texture (``albedo.png``) of a textured mesh, or of
    ``{name}.obj`` alone with vertex colours (the ``v x y z r g b`` extension most tools read) for an untextured one.

    The material is a plain diffuse map: ``Kd 1 1 1`` (the map is the colour, not scaled down), ``Ks 0`` (the GLB's
    material is fully rough), ``map_Kd`` the texture. Normals are the GLB's, UVs with v = 0 at the image's bottom
    (the OBJ convention, as in the GLB once trimesh has read it). Positions in metres, y-up, as in the GLB.
    """
    texture = texture_of(mesh)
    if texture is not None:
        material = trimesh.visual.material.SimpleMaterial(
            image=texture, diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255),
            glossiness=1.0, name="albedo")
        mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_normals=mesh.vertex_normals,
                               visual=trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material),
                               process=False)
    text, files = export_obj(mesh, include_normals=True, include_color=texture is None,
                             include_texture=texture is not None, return_texture=True, mtl_name=f"{name}.mtl",
                             header=None)
    return _zip({f"{name}.obj": text.encode("utf-8"), **files})


def stl_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary STL of the welded mesh (:func:`welded`) in millimetres (:data:`MM_PER_M` per GLB metre)."""
    return welded(mesh, scale=MM_PER_M).export(file_type="stl")


def ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary little-endian PLY of the welded mesh with RGBA vertex colours (the texture sampled at the UVs), in
    the GLB's metres."""
    return welded(mesh, colors=True).export(file_type="ply", encoding="binary")


def threemf_bytes(mesh: trimesh.Trimesh) -> bytes:
    """3MF (an OPC ZIP with ``3D/3dmodel.model``) of the welded mesh in millimetres, as its ``unit`` says; trimesh
    writes it with ``lxml`` and ``networkx``."""
    return welded(mesh, scale=MM_PER_M).export(file_type="3mf")
