"""Ray-cast RGBA images of a triangle mesh (ground-truth views for reconstruction tests and benchmarks).

One ray per sub-pixel through the pinhole cameras of ``nerf/cameras.py`` (z-up world, OpenGL c2w, fovy in
degrees) is intersected with the mesh by trimesh's ray module, which uses Embree (``embreex``) when installed and
a much slower pure-numpy fallback otherwise. ``supersample`` × ``supersample`` sub-pixels per pixel are averaged:
alpha is the covered fraction (anti-aliased silhouettes, like Blender's NeRF-synthetic renders) and RGB the mean
colour of the covered sub-pixels (straight, not premultiplied, alpha).

Shading modes:

- ``"lambert"``: a constant grey albedo lit by fixed *world-space* directional lights plus ambient. The lights do
  not move with the camera, so a surface point has the same colour in every view (a view-independent radiance
  field, which is what an albedo-only NeRF can represent).
- ``"color"``: unlit albedo from the mesh: vertex colours (barycentric interpolation), a texture image sampled
  bilinearly at the interpolated UV (glTF/OBJ convention: v = 0 is the bottom row), or the material's main colour.

Normals are smooth (barycentric interpolation of vertex normals) and flipped toward the viewer, so open or
inconsistently wound meshes shade like closed ones.

Examples:
    >>> mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    >>> cams = CameraBatch.from_spherical(20.0, 0.0, 2.0, 40.0)
    >>> render_mesh(mesh, cams.c2w, cams.fovy_deg, 32, 32).shape
    torch.Size([1, 32, 32, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import trimesh
from torch import Tensor

from nerf.cameras import CameraBatch, get_rays

__all__ = ["MeshRenderConfig", "render_mesh", "spread_cameras", "surface_albedo"]


@dataclass
class MeshRenderConfig:
    """How :func:`render_mesh` shades and samples.

    Attributes:
        shading: "lambert" (grey albedo, fixed world lights) or "color" (unlit mesh colours).
        albedo: RGB in [0, 1] of the "lambert" mode.
        light_dirs: world-space directions *toward* the lights (normalised internally), z-up. The defaults are a
            key light from the upper front-right and a weaker fill from the opposite side below.
        light_intensities: one per light, >= 0.
        ambient: constant term added to the diffuse sum, >= 0.
        supersample: sub-pixels per pixel along each axis, >= 1 (2 → 4 rays per pixel).
    """

    shading: Literal["lambert", "color"] = "lambert"
    albedo: tuple[float, float, float] = (0.8, 0.8, 0.8)
    light_dirs: tuple[tuple[float, float, float], ...] = ((0.4, -0.5, 0.75), (-0.5, 0.6, -0.3))
    light_intensities: tuple[float, ...] = (0.75, 0.3)
    ambient: float = 0.25
    supersample: int = 2

    def __post_init__(self) -> None:
        if self.shading not in ("lambert", "color"):
            raise ValueError(f"MeshRenderConfig.shading must be 'lambert' or 'color', got {self.shading!r}")
        if self.supersample < 1:
            raise ValueError(f"MeshRenderConfig.supersample must be >= 1, got {self.supersample}")
        if len(self.light_dirs) != len(self.light_intensities):
            raise ValueError("MeshRenderConfig: light_dirs and light_intensities must have the same length")


def spread_cameras(
    num_views: int,
    distance: float,
    fovy_deg: float,
    elevation_range_deg: tuple[float, float] = (-10.0, 60.0),
    layout: Literal["even", "random"] = "even",
    seed: int = 0,
    azimuth_offset_deg: float = 0.0,
) -> CameraBatch:
    """Cameras on a sphere around the origin, looking at it, inside an elevation band.

    "even" places them on a Fibonacci lattice of the band (sin(elevation) uniform in its range, azimuth advancing
    by the golden angle, 137.5°), which covers the band with equal area per camera (González 2010, "Measurement
    of areas on a sphere using Fibonacci and latitude–longitude lattices"). "random" draws area-uniform positions
    in the band with ``seed``.

    Args:
        num_views: >= 1.
        distance: camera distance from the origin, world units, > 0.
        fovy_deg: vertical field of view, degrees.
        elevation_range_deg: (low, high) in degrees, −90 < low <= high < 90.
        layout: "even" or "random".
        seed: for "random".
        azimuth_offset_deg: added to every azimuth (e.g. to interleave a held-out set with a training set).

    Raises:
        ValueError: on out-of-range arguments.
    """
    low, high = elevation_range_deg
    if num_views < 1 or not distance > 0 or not -90.0 < low <= high < 90.0:
        raise ValueError(f"spread_cameras: need num_views >= 1, distance > 0, -90 < low <= high < 90; got "
                         f"{num_views}, {distance}, {elevation_range_deg}")
    s_lo, s_hi = np.sin(np.radians(low)), np.sin(np.radians(high))
    if layout == "even":
        frac = (np.arange(num_views) + 0.5) / num_views
        azimuth = np.degrees(np.arange(num_views) * np.pi * (3.0 - np.sqrt(5.0)))
    elif layout == "random":
        rng = np.random.default_rng(seed)
        frac, azimuth = rng.random(num_views), rng.random(num_views) * 360.0
    else:
        raise ValueError(f"spread_cameras: layout must be 'even' or 'random', got {layout!r}")
    elevation = np.degrees(np.arcsin(s_lo + frac * (s_hi - s_lo)))
    azimuth = np.mod(azimuth + azimuth_offset_deg, 360.0)
    return CameraBatch.from_spherical(torch.tensor(elevation, dtype=torch.float32),
                                      torch.tensor(azimuth, dtype=torch.float32), float(distance), float(fovy_deg))


def render_mesh(
    mesh: trimesh.Trimesh,
    c2w: Tensor,
    fovy_deg: Tensor | float,
    height: int,
    width: int,
    config: MeshRenderConfig | None = None,
) -> Tensor:
    """Render RGBA images of ``mesh`` from pinhole cameras.

    Args:
        mesh: triangle mesh in world coordinates (z-up, same frame as ``c2w``), at least one face.
        c2w: Tensor with shape (B, 4, 4), camera-to-world, OpenGL axes (see ``nerf/cameras.py``).
        fovy_deg: vertical field of view in degrees, Tensor (B,) or a scalar.
        height, width: image size in pixels, >= 1.
        config: shading and anti-aliasing options; defaults to :class:`MeshRenderConfig`.

    Returns:
        Tensor with shape (B, H, W, 4), float32 in [0, 1]: straight-alpha RGB and coverage alpha. Uncovered
        pixels are (0, 0, 0, 0).

    Raises:
        ValueError: the mesh has no faces, or ``c2w`` has the wrong shape.
    """
    config = config or MeshRenderConfig()
    if len(mesh.faces) == 0:
        raise ValueError("render_mesh: the mesh has no faces")
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"render_mesh: c2w must have shape (B, 4, 4), got {tuple(c2w.shape)}")
    s = config.supersample
    batch = c2w.shape[0]
    fovy = torch.as_tensor(fovy_deg, dtype=torch.float64).reshape(-1).expand(batch)
    rays_o, rays_d = get_rays(c2w.double(), fovy, height * s, width * s)
    rgb, hit = _shade_rays(mesh, rays_o.reshape(-1, 3).numpy(), rays_d.reshape(-1, 3).numpy(), config)
    rgb = torch.from_numpy(rgb).reshape(batch, height, s, width, s, 3)
    hit = torch.from_numpy(hit).reshape(batch, height, s, width, s, 1).double()
    alpha = hit.mean(dim=(2, 4))
    colour = (rgb * hit).sum(dim=(2, 4)) / hit.sum(dim=(2, 4)).clamp_min(1.0)
    return torch.cat([colour, alpha], dim=-1).float().clamp(0.0, 1.0)


def surface_albedo(mesh: trimesh.Trimesh, face_index: np.ndarray, barycentric: np.ndarray) -> np.ndarray:
    """Unlit colour of surface points given by faces and barycentric coordinates.

    Args:
        mesh: mesh with vertex colours, a texture (UV + image) or a material colour; else mid grey.
        face_index: int array with shape (M,).
        barycentric: array with shape (M, 3), weights of the face's three vertices (sum 1).

    Returns:
        Array with shape (M, 3), float64 in [0, 1].
    """
    visual = mesh.visual
    faces = np.asarray(mesh.faces)[face_index]  # (M, 3)
    if visual.kind == "vertex":
        colours = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        return np.einsum("mk,mkc->mc", barycentric, colours[faces])
    if visual.kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float64)[face_index, :3] / 255.0
    if visual.kind == "texture":
        material = visual.material
        image = getattr(material, "image", None)
        if image is None and hasattr(material, "baseColorTexture"):
            image = material.baseColorTexture
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None:
            uv_hit = np.einsum("mk,mkc->mc", barycentric, np.asarray(uv, dtype=np.float64)[faces])
            return _sample_texture(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0, uv_hit)
        main = getattr(material, "main_color", None)
        if main is not None:
            return np.broadcast_to(np.asarray(main[:3], dtype=np.float64) / 255.0, (len(face_index), 3)).copy()
    return np.full((len(face_index), 3), 0.5)


def _shade_rays(mesh: trimesh.Trimesh, origins: np.ndarray, dirs: np.ndarray, config: MeshRenderConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """Colour (R, 3) float64 and hit mask (R,) bool of rays (R, 3) against the mesh."""
    intersector = _intersector(mesh)
    tri_index = np.asarray(intersector.intersects_first(origins, dirs), dtype=np.int64)
    hit = tri_index >= 0
    rgb = np.zeros((len(origins), 3), dtype=np.float64)
    if not hit.any():
        return rgb, hit
    o, d, fid = origins[hit], dirs[hit], tri_index[hit]
    tri = np.asarray(mesh.triangles, dtype=np.float64)[fid]  # (M, 3, 3)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    denom = np.einsum("mc,mc->m", normal, d)
    t = np.einsum("mc,mc->m", normal, tri[:, 0] - o) / np.where(np.abs(denom) > 1e-20, denom, 1e-20)
    points = o + t[:, None] * d
    bary = np.clip(trimesh.triangles.points_to_barycentric(tri, points), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True).clip(min=1e-12)
    if config.shading == "color":
        rgb[hit] = surface_albedo(mesh, fid, bary)
        return rgb, hit
    vertex_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)[np.asarray(mesh.faces)[fid]]
    n = np.einsum("mk,mkc->mc", bary, vertex_normals)
    n /= np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-12)
    n *= np.where(np.einsum("mc,mc->m", n, d) > 0.0, -1.0, 1.0)[:, None]  # face the viewer
    lights = np.asarray(config.light_dirs, dtype=np.float64)
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    diffuse = np.clip(n @ lights.T, 0.0, None) @ np.asarray(config.light_intensities, dtype=np.float64)
    rgb[hit] = np.asarray(config.albedo, dtype=np.float64)[None] * (config.ambient + diffuse)[:, None]
    return np.clip(rgb, 0.0, 1.0), hit


def _intersector(mesh: trimesh.Trimesh):
    """Embree intersector when ``embreex`` is installed, else trimesh's numpy triangle intersector."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh)
    except ImportError:
        from trimesh.ray.ray_triangle import RayMeshIntersector as NumpyIntersector

        return NumpyIntersector(mesh)


def _sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, wrap-around sample of an image (H, W, 3) at UVs (M, 2), v = 0 at the bottom row."""
    h, w = image.shape[:2]
    x = np.mod(uv[:, 0], 1.0) * w - 0.5
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = np.mod(x0 + 1, w), np.mod(y0 + 1, h)
    x0, y0 = np.mod(x0, w), np.mod(y0, h)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
