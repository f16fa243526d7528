"""Ray-cast RGBA images of a triangle mesh (ground-truth views for reconstruction tests and benchmarks).

One ray per sub-pixel through the pinhole cameras of ``nerf/cameras.py`` (z-up world, OpenGL c2w, fovy in
degrees) is intersected with the mesh by :class:`MeshRayCaster`: Embree (``embreex``) when installed, whose hits
carry their barycentric coordinates, else a much slower brute-force numpy intersector. ``supersample`` ×
``supersample`` sub-pixels per pixel are averaged:
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

__all__ = ["MeshRayCaster", "MeshRenderConfig", "RayHits", "render_mesh", "spread_cameras", "surface_albedo"]


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


@dataclass(frozen=True)
class RayHits:
    """The first hit of each of R rays on a mesh.

    Attributes:
        face: int64 array with shape (R,), the index of the face hit first; -1 where the ray misses.
        barycentric: float64 array with shape (R, 3), the hit point's weights of that face's three vertices (each
            in [0, 1], summing to 1); zeros where the ray misses.
    """

    face: np.ndarray
    barycentric: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        """bool array with shape (R,): True where the ray hits the mesh."""
        return self.face >= 0


class MeshRayCaster:
    """First hits of rays on one triangle mesh; build once, cast many batches.

    ``backend="embree"`` casts with Embree through ``embreex`` in single precision. The vertices are shifted to
    start at 0 before their float32 conversion (as trimesh's own Embree wrapper does), and each batch's origins by
    the same offset in float64 first, which keeps precision for meshes far from the world origin. The hit
    barycentrics are Embree's (u, v): the weights of the face's second and third vertices. ``backend="numpy"``
    tests every ray against every face in float64 with the Möller–Trumbore algorithm (Möller and Trumbore 1997,
    "Fast, Minimum Storage Ray/Triangle Intersection"), O(rays × faces): a reference and a fallback for small
    meshes, not a renderer for large ones. Both count hits on either side of a face. ``"auto"`` picks Embree when
    ``embreex`` imports.

    Args:
        mesh: triangle mesh in world coordinates, at least one face.
        backend: "auto", "embree" or "numpy".

    Raises:
        ValueError: the mesh has no faces, or an unknown backend.
        ImportError: ``backend="embree"`` without ``embreex``.

    Examples:
        >>> caster = MeshRayCaster(trimesh.creation.box(extents=(1.0, 1.0, 1.0)))
        >>> hits = caster(np.array([[0.0, 0.0, 2.0], [3.0, 0.0, 2.0]]), np.array([[0.0, 0.0, -1.0]] * 2))
        >>> hits.hit.tolist(), hits.barycentric.sum(axis=1).tolist()
        ([True, False], [1.0, 0.0])
    """

    def __init__(self, mesh: trimesh.Trimesh, backend: Literal["auto", "embree", "numpy"] = "auto") -> None:
        if len(mesh.faces) == 0:
            raise ValueError("MeshRayCaster: the mesh has no faces")
        if backend not in ("auto", "embree", "numpy"):
            raise ValueError(f"MeshRayCaster: backend must be 'auto', 'embree' or 'numpy', got {backend!r}")
        self.mesh = mesh
        self._scene = None
        if backend != "numpy":
            try:
                from embreex import mesh_construction, rtcore_scene
            except ImportError:
                if backend == "embree":
                    raise
            else:
                vertices = np.asarray(mesh.vertices, dtype=np.float64)
                self._origin = vertices.min(axis=0)
                self._scene = rtcore_scene.EmbreeScene()
                mesh_construction.TriangleMesh(scene=self._scene, vertices=(vertices - self._origin).astype(np.float32),
                                               indices=np.asarray(mesh.faces).astype(np.int32))
        self.backend = "numpy" if self._scene is None else "embree"

    def __call__(self, origins: np.ndarray, directions: np.ndarray) -> RayHits:
        """First hits of rays with origins (R, 3) and directions (R, 3) (unit length), world units."""
        origins, directions = np.asarray(origins, dtype=np.float64), np.asarray(directions, dtype=np.float64)
        face = np.full(len(origins), -1, dtype=np.int64)
        barycentric = np.zeros((len(origins), 3), dtype=np.float64)
        if len(origins) == 0:
            return RayHits(face, barycentric)
        if self._scene is not None:
            found = self._scene.run((origins - self._origin).astype(np.float32), directions.astype(np.float32),
                                    output=1)
            face[:] = np.asarray(found["primID"], dtype=np.int64)
            hit = face >= 0
            u, v = (np.asarray(found[k], dtype=np.float64)[hit] for k in ("u", "v"))
        else:
            triangles = np.asarray(self.mesh.triangles, dtype=np.float64)
            chunk = max(1, _PAIRS_PER_CHUNK // len(triangles))
            uv = np.zeros((len(origins), 2), dtype=np.float64)
            for start in range(0, len(origins), chunk):
                part = slice(start, start + chunk)
                face[part], uv[part] = _first_hits(triangles, origins[part], directions[part])
            hit = face >= 0
            u, v = uv[hit, 0], uv[hit, 1]
        weights = np.clip(np.stack([1.0 - u - v, u, v], axis=1), 0.0, 1.0)
        barycentric[hit] = weights / weights.sum(axis=1, keepdims=True).clip(min=1e-12)
        return RayHits(face, barycentric)


_PAIRS_PER_CHUNK = 1 << 20
"""Ray-face pairs the numpy backend tests at once (a few (pairs, 3) float64 arrays: tens of MB)."""


def _first_hits(triangles: np.ndarray, origins: np.ndarray, directions: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Möller–Trumbore against every face: triangles (F, 3, 3), rays (R, 3) → nearest face (R,) int64 (-1 for a
    miss) and its (u, v) (R, 2), the weights of the face's second and third vertices."""
    v0 = triangles[None, :, 0]
    e1, e2 = triangles[None, :, 1] - v0, triangles[None, :, 2] - v0  # (1, F, 3)
    d, to_origin = directions[:, None], origins[:, None] - v0  # (R, 1, 3), (R, F, 3)
    p = np.cross(d, e2)
    det = np.einsum("rfc,rfc->rf", np.broadcast_to(e1, p.shape), p)
    inv = 1.0 / np.where(det != 0.0, det, np.inf)  # 0 for rays parallel to the face
    u = np.einsum("rfc,rfc->rf", to_origin, p) * inv
    q = np.cross(to_origin, e1)
    v = np.einsum("rfc,rfc->rf", np.broadcast_to(d, q.shape), q) * inv
    t = np.einsum("rfc,rfc->rf", np.broadcast_to(e2, q.shape), q) * inv
    valid = (inv != 0.0) & (u >= 0.0) & (v >= 0.0) & (u + v <= 1.0) & (t > 0.0)
    t = np.where(valid, t, np.inf)
    nearest = t.argmin(axis=1)
    rows = np.arange(len(origins))
    face = np.where(np.isfinite(t[rows, nearest]), nearest, -1)
    return face, np.stack([u[rows, nearest], v[rows, nearest]], axis=1)


def render_mesh(
    mesh: trimesh.Trimesh,
    c2w: Tensor,
    fovy_deg: Tensor | float,
    height: int,
    width: int,
    config: MeshRenderConfig | None = None,
    *,
    caster: MeshRayCaster | None = None,
) -> Tensor:
    """Render RGBA images of ``mesh`` from pinhole cameras.

    Args:
        mesh: triangle mesh in world coordinates (z-up, same frame as ``c2w``), at least one face.
        c2w: Tensor with shape (B, 4, 4), camera-to-world, OpenGL axes (see ``nerf/cameras.py``).
        fovy_deg: vertical field of view in degrees, Tensor (B,) or a scalar.
        height, width: image size in pixels, >= 1.
        config: shading and anti-aliasing options; defaults to :class:`MeshRenderConfig`.
        caster: a :class:`MeshRayCaster` of ``mesh`` to reuse across calls (building one costs a BVH build); by
            default a new one.

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
    dirs = rays_d.reshape(-1, 3).numpy()
    hits = (caster or MeshRayCaster(mesh))(rays_o.reshape(-1, 3).numpy(), dirs)
    # In numpy: small torch ops right after an Embree call wait on the other thread pool (slow on small machines).
    rgb = _shade_hits(mesh, hits, dirs, config).reshape(batch, height, s, width, s, 3)
    hit = hits.hit.reshape(batch, height, s, width, s, 1).astype(np.float64)
    covered = hit.sum(axis=(2, 4))
    colour = rgb.sum(axis=(2, 4)) / np.maximum(covered, 1.0)  # misses are black
    rgba = np.concatenate([colour, covered / (s * s)], axis=-1)
    return torch.from_numpy(np.clip(rgba, 0.0, 1.0).astype(np.float32))


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


def _shade_hits(mesh: trimesh.Trimesh, hits: RayHits, dirs: np.ndarray, config: MeshRenderConfig) -> np.ndarray:
    """Colour (R, 3) float64 of rays with directions (R, 3) and their hits; black where a ray misses."""
    hit = hits.hit
    rgb = np.zeros((len(dirs), 3), dtype=np.float64)
    if not hit.any():
        return rgb
    fid, bary = hits.face[hit], hits.barycentric[hit]
    if config.shading == "color":
        rgb[hit] = surface_albedo(mesh, fid, bary)
        return rgb
    d = dirs[hit]
    vertex_normals = np.asarray(mesh.vertex_normals, dtype=np.float64)[np.asarray(mesh.faces)[fid]]
    n = np.einsum("mk,mkc->mc", bary, vertex_normals)
    n /= np.linalg.norm(n, axis=1, keepdims=True).clip(min=1e-12)
    n *= np.where(np.einsum("mc,mc->m", n, d) > 0.0, -1.0, 1.0)[:, None]  # face the viewer
    lights = np.asarray(config.light_dirs, dtype=np.float64)
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    diffuse = np.clip(n @ lights.T, 0.0, None) @ np.asarray(config.light_intensities, dtype=np.float64)
    rgb[hit] = np.asarray(config.albedo, dtype=np.float64)[None] * (config.ambient + diffuse)[:, None]
    return np.clip(rgb, 0.0, 1.0)


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
