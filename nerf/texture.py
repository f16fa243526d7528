"""UV-textured meshes: decimation, xatlas unwrap, albedo baking with seam padding, PBR GLB export.

Recipe (as in threestudio's ``export`` with ``xatlas`` and nvdiffrast, here rasterised on the CPU):

1. optional decimation to a face budget (fast-simplification, quadric edge collapse);
2. ``xatlas`` unwrap: vertices are split along chart seams, each gets a UV in [0, 1]^2;
3. rasterise every triangle into texel space: a texel whose centre lies inside a triangle gets the 3D point at
   the same barycentric coordinates, and the albedo there (a ``color_fn`` such as the NeRF's albedo head, or
   the mesh's vertex colours interpolated barycentrically);
4. seam padding: every texel no triangle covers takes the colour of the nearest covered texel (exact Euclidean
   distance transform, ``scipy.ndimage.distance_transform_edt``), so bilinear filtering and mip-mapping across a
   chart border never pick up background; xatlas leaves ``padding`` texels between charts so neighbours rarely
   mix;
5. glTF PBR metallic-roughness material: ``baseColorTexture`` = the bake, ``metallicFactor`` 0,
   ``roughnessFactor`` 1 (a purely diffuse surface, matching an albedo-only NeRF).

UVs follow trimesh's (and OBJ's) convention: v = 0 is the *bottom* row of the image; trimesh flips v when it
writes glTF (whose UV origin is the top-left).

Examples:
    >>> mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    >>> textured = bake_texture(unwrap(mesh), lambda p: (p + 0.5).clamp(0, 1), size=256)
    >>> textured.image.size
    (256, 256)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from nerf.export import glb_bytes
from nerf.io import write_atomic

__all__ = ["TexturedMesh", "UVMesh", "bake_texture", "decimate", "export_textured_glb", "rasterize_uv",
           "textured_glb_bytes", "unit_vertex_normals", "unwrap"]

ColorFn = Callable[[Tensor], Tensor]


@dataclass
class UVMesh:
    """A mesh unwrapped by xatlas.

    Attributes:
        mesh: the mesh with seam vertices split (V' >= V vertices); vertex colours are carried over if present.
        uv: array with shape (V', 2), float64 in [0, 1], trimesh convention (v = 0 at the image bottom).
        source_vertex: array with shape (V',), int64: the input vertex each output vertex came from.
    """

    mesh: trimesh.Trimesh
    uv: np.ndarray
    source_vertex: np.ndarray


@dataclass
class TexturedMesh:
    """A UV mesh with its baked albedo.

    Attributes:
        mesh: geometry (world coordinates, z-up), same vertices as ``uv``.
        uv: array with shape (V, 2), float64 in [0, 1], v = 0 at the image bottom.
        image: RGB ``PIL.Image`` of size (size, size), the base colour (sRGB-encoded 8-bit, as glTF expects).
        coverage: float in (0, 1]: fraction of texels covered by a triangle (the rest is padding).
    """

    mesh: trimesh.Trimesh
    uv: np.ndarray
    image: Image.Image
    coverage: float


def decimate(mesh: trimesh.Trimesh, target_faces: int, aggressiveness: float = 7.0) -> trimesh.Trimesh:
    """Reduce ``mesh`` to about ``target_faces`` faces with fast-simplification (Garland–Heckbert quadrics).

    Vertex colours are carried over from the nearest input vertex, and ``mesh.metadata`` as it is. Duplicate faces (same three vertices, any
    winding) and degenerate faces left by the collapses are removed. A mesh already at or below the budget is
    returned unchanged (a copy).

    Args:
        mesh: triangle mesh.
        target_faces: desired face count, >= 4. The result may have slightly more (the collapse stops early).
        aggressiveness: fast-simplification's ``agg`` (0 = most careful, 10 = fastest); default is the library's.

    Raises:
        ValueError: ``target_faces`` < 4.
    """
    if target_faces < 4:
        raise ValueError(f"decimate: target_faces must be >= 4, got {target_faces}")
    if len(mesh.faces) <= target_faces:
        return mesh.copy()
    import fast_simplification

    vertices, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int32),
        target_count=int(target_faces), agg=aggressiveness,
    )
    out = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    # Edge collapses can leave two faces on the same three vertices with opposite windings (a zero-volume
    # "pillow"); their vertex normals sum to zero, which glTF forbids. Drop every such face, and degenerate ones.
    _, inverse, counts = np.unique(np.sort(out.faces, axis=1), axis=0, return_inverse=True, return_counts=True)
    out.update_faces((counts[inverse.reshape(-1)] == 1) & out.nondegenerate_faces())
    out.remove_unreferenced_vertices()
    if mesh.visual.kind == "vertex":
        _, nearest = cKDTree(np.asarray(mesh.vertices)).query(np.asarray(out.vertices))
        out.visual.vertex_colors = np.asarray(mesh.visual.vertex_colors)[nearest]
    out.metadata.update(mesh.metadata)  # how the surface was found (threshold, silhouette IoU) stays true
    return out


def unwrap(mesh: trimesh.Trimesh, size: int = 1024, padding: int | None = None) -> UVMesh:
    """UV-unwrap ``mesh`` with xatlas into one square atlas.

    Args:
        mesh: triangle mesh with at least one face.
        size: texture size the atlas is packed for, in texels (one of 512, 1024, 2048 for exports).
        padding: texels left between charts; default ``max(2, size // 256)`` (4 at 1024²).

    Raises:
        ValueError: the mesh has no faces.
    """
    import xatlas

    if len(mesh.faces) == 0:
        raise ValueError("unwrap: the mesh has no faces")
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding if padding is not None else max(2, size // 256))
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    vmapping = np.asarray(vmapping, dtype=np.int64)
    # Seam copies keep the input's smooth normals, so shading shows no seams.
    out = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices)[vmapping], faces=np.asarray(indices, dtype=np.int64),
        vertex_normals=unit_vertex_normals(mesh)[vmapping], process=False,
    )
    if mesh.visual.kind == "vertex":
        out.visual.vertex_colors = np.asarray(mesh.visual.vertex_colors)[vmapping]
    return UVMesh(mesh=out, uv=np.asarray(uvs, dtype=np.float64), source_vertex=vmapping)


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int, chunk: int = 65536
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centres lie inside UV triangles.

    Args:
        uv: array (V, 2) in [0, 1], v = 0 at the image bottom.
        faces: int array (F, 3).
        size: texture side in texels.
        chunk: triangles processed at once (bounds memory).

    Returns:
        texel: int64 array (M,), flat index ``row * size + col`` (row 0 = top), each texel at most once.
        face: int64 array (M,), the triangle covering it.
        bary: float64 array (M, 3), barycentric weights of the triangle's vertices at the texel centre.
    """
    # Texel space: x = u * size, y = (1 - v) * size; texel (row, col) has its centre at (col + 0.5, row + 0.5).
    pix = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)
    tri = pix[np.asarray(faces, dtype=np.int64)]  # (F, 3, 2)
    texels, face_ids, barys = [], [], []
    for start in range(0, len(tri), chunk):
        t = tri[start : start + chunk]
        lo = np.clip(np.floor(t.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # (f, 2) first col/row
        hi = np.clip(np.ceil(t.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
        extent = hi - lo + 1
        count = extent[:, 0] * extent[:, 1]
        fid = np.repeat(np.arange(len(t)), count)
        local = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        col = lo[fid, 0] + local % extent[fid, 0]
        row = lo[fid, 1] + local // extent[fid, 0]
        centre = np.stack([col + 0.5, row + 0.5], axis=-1)
        bary = _barycentric_2d(t[fid], centre)
        inside = (bary >= -1e-9).all(axis=1)
        texels.append(row[inside] * size + col[inside])
        face_ids.append(fid[inside] + start)
        barys.append(bary[inside])
    texel = np.concatenate(texels)
    face = np.concatenate(face_ids)
    bary = np.concatenate(barys)
    texel, first = np.unique(texel, return_index=True)  # a texel on a shared edge: keep one triangle
    return texel, face[first], bary[first]


def bake_texture(uv_mesh: UVMesh, color_fn: ColorFn | None = None, size: int = 1024, chunk: int = 262144,
                 device: torch.device | str | None = None) -> TexturedMesh:
    """Bake albedo into a ``size`` × ``size`` texture with seam padding.

    Args:
        uv_mesh: from :func:`unwrap` (packed for the same ``size`` ideally).
        color_fn: maps world points, Tensor (M, 3) float32, to RGB Tensor (M, 3) in [0, 1] (clipped); called
            under ``torch.no_grad()`` with at most ``chunk`` points. When None, the mesh's vertex colours are
            interpolated barycentrically.
        size: texels per side, >= 8 (512, 1024 or 2048 for exports).
        chunk: points per ``color_fn`` call.
        device: where query points are created for ``color_fn``; default CPU.

    Returns:
        :class:`TexturedMesh`.

    Raises:
        ValueError: ``size`` < 8, no ``color_fn`` and no vertex colours, ``color_fn`` returns the wrong shape, or
            no texel centre falls inside any triangle.
    """
    if size < 8:
        raise ValueError(f"bake_texture: size must be >= 8, got {size}")
    mesh = uv_mesh.mesh
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if color_fn is None and mesh.visual.kind != "vertex":
        raise ValueError("bake_texture: give a color_fn or a mesh with vertex colours")
    texel, face, bary = rasterize_uv(uv_mesh.uv, faces, size)
    if texel.size == 0:
        raise ValueError("bake_texture: no texel centre falls inside a UV triangle (texture too small?)")
    corners = faces[face]  # (M, 3)
    if color_fn is None:
        colours = np.asarray(mesh.visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        rgb = np.einsum("mk,mkc->mc", bary, colours[corners])
    else:
        points = np.einsum("mk,mkc->mc", bary, np.asarray(mesh.vertices, dtype=np.float64)[corners])
        rgb = _evaluate(color_fn, points, chunk, torch.device(device) if device is not None else torch.device("cpu"))
    image = np.zeros((size * size, 3), dtype=np.float64)
    image[texel] = np.clip(rgb, 0.0, 1.0)
    covered = np.zeros(size * size, dtype=bool)
    covered[texel] = True
    image = _pad_seams(image.reshape(size, size, 3), covered.reshape(size, size))
    pil = Image.fromarray(np.round(image * 255.0).astype(np.uint8), mode="RGB")
    return TexturedMesh(mesh=mesh, uv=uv_mesh.uv, image=pil, coverage=float(covered.mean()))


def textured_glb_bytes(
    mesh: trimesh.Trimesh, texture: Image.Image, uv: np.ndarray, *, z_up_to_y_up: bool = True, recenter: bool = True,
) -> bytes:
    """A UV-mapped GLB with a PBR material (baseColorTexture, metallic 0, roughness 1), as bytes.

    Args:
        mesh: geometry in world coordinates (z-up); any vertex colours are dropped (the texture replaces them).
        texture: RGB or RGBA base-colour image (embedded as PNG).
        uv: array with shape (V, 2), one UV per vertex of ``mesh``, v = 0 at the image bottom.
        z_up_to_y_up, recenter: as in :func:`nerf.export.glb_bytes`.

    Raises:
        ValueError: ``uv`` does not have one row per vertex, or the mesh has no faces.
    """
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape != (len(mesh.vertices), 2):
        raise ValueError(f"textured GLB: uv must have shape ({len(mesh.vertices)}, 2), got {uv.shape}")
    material = trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorTexture=texture.convert("RGB"), metallicFactor=0.0, roughnessFactor=1.0,
        doubleSided=False,
    )
    textured = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices), faces=np.asarray(mesh.faces),
        vertex_normals=unit_vertex_normals(mesh), process=False,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
    )
    return glb_bytes(textured, z_up_to_y_up=z_up_to_y_up, recenter=recenter)


def export_textured_glb(
    mesh: trimesh.Trimesh, texture: Image.Image, uv: np.ndarray, path: str | Path, *,
    z_up_to_y_up: bool = True, recenter: bool = True,
) -> Path:
    """Write :func:`textured_glb_bytes` to ``path`` atomically; returns the absolute path written.

    Raises:
        ValueError: as :func:`textured_glb_bytes`. OSError: the file cannot be written.
    """
    data = textured_glb_bytes(mesh, texture, uv, z_up_to_y_up=z_up_to_y_up, recenter=recenter)
    return write_atomic(Path(path).expanduser().resolve(), data)


def unit_vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """Vertex normals (V, 3) of unit length, as glTF requires.

    trimesh's vertex normals are the normalised sum of the incident face normals, which is zero where faces fold
    back onto each other (decimation can create such folds); those vertices take the normal of one incident face,
    and isolated vertices get +z.
    """
    normals = np.array(mesh.vertex_normals, dtype=np.float64)
    bad = np.linalg.norm(normals, axis=1) < 0.5
    if bad.any():
        first_face = np.asarray(mesh.vertex_faces)[bad, 0]
        fallback = np.where((first_face >= 0)[:, None], np.asarray(mesh.face_normals)[first_face], [0.0, 0.0, 1.0])
        normals[bad] = fallback
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
    return normals


def _barycentric_2d(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric weights (M, 3) of points (M, 2) in triangles (M, 3, 2); degenerate triangles give -1s."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    safe = np.where(ok, den, 1.0)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / safe
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / safe
    bary = np.stack([1.0 - w1 - w2, w1, w2], axis=-1)
    bary[~ok] = -1.0
    return bary


def _pad_seams(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Fill uncovered texels (H, W) of ``image`` (H, W, 3) with the colour of the nearest covered texel."""
    if covered.all():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def _evaluate(color_fn: ColorFn, points: np.ndarray, chunk: int, device: torch.device) -> np.ndarray:
    """``color_fn`` over points (M, 3) in chunks; returns (M, 3) float64."""
    out = np.empty((len(points), 3), dtype=np.float64)
    pts = torch.as_tensor(points, dtype=torch.float32, device=device)
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            part = color_fn(pts[start : start + chunk])
            if tuple(part.shape) != (min(chunk, len(points) - start), 3):
                raise ValueError(f"bake_texture: color_fn must return shape (M, 3), got {tuple(part.shape)}")
            out[start : start + part.shape[0]] = part.detach().double().cpu().numpy()
    return np.nan_to_num(out, nan=0.0)
