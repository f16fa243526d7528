"""UV unwrap, albedo bake with seam padding, decimation and the textured GLB."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from nerf.mesh_render import surface_albedo
from nerf.texture import bake_texture, decimate, export_textured_glb, rasterize_uv, unwrap


def _coloured_sphere() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    rgb = np.clip(mesh.vertices + 0.5, 0.0, 1.0)  # colour = position, a smooth known field
    mesh.visual.vertex_colors = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    return mesh


@pytest.fixture(scope="module")
def baked():
    mesh = _coloured_sphere()
    return mesh, bake_texture(unwrap(mesh, size=512), None, size=512)


def _sample_both(mesh_with_colours: trimesh.Trimesh, textured: trimesh.Trimesh, n: int = 20000):
    rng = np.random.default_rng(0)
    face = rng.integers(0, len(textured.faces), n)
    bary = rng.dirichlet([1.0, 1.0, 1.0], n)
    return surface_albedo(textured, face, bary), surface_albedo(mesh_with_colours, face, bary)


def test_bake_of_vertex_colours_reproduces_them(baked):
    _, result = baked
    textured = trimesh.Trimesh(result.mesh.vertices, result.mesh.faces, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=result.uv, image=result.image))
    from_texture, expected = _sample_both(result.mesh, textured)  # result.mesh keeps the split vertex colours
    error = np.abs(from_texture - expected).mean() * 255.0
    assert error < 5.0
    assert 0.2 < result.coverage < 1.0


def test_bake_through_color_fn_matches_the_function():
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    result = bake_texture(unwrap(mesh, size=512), lambda p: (p + 0.5).clamp(0, 1), size=512)
    textured = trimesh.Trimesh(result.mesh.vertices, result.mesh.faces, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=result.uv, image=result.image))
    rng = np.random.default_rng(1)
    face = rng.integers(0, len(textured.faces), 20000)
    bary = rng.dirichlet([1.0, 1.0, 1.0], 20000)
    points = np.einsum("mk,mkc->mc", bary, textured.vertices[textured.faces[face]])
    error = np.abs(surface_albedo(textured, face, bary) - np.clip(points + 0.5, 0, 1)).mean() * 255.0
    assert error < 5.0


def test_padding_leaves_no_background_texel():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.visual.vertex_colors = np.tile([200, 40, 10, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    image = np.asarray(bake_texture(unwrap(mesh, size=128), None, size=128).image)
    assert (image == [200, 40, 10]).all()  # every texel, covered or padding, has the surface colour


def test_rasterize_uv_covers_the_texels_whose_centres_are_inside():
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    texel, face, bary = rasterize_uv(uv, np.array([[0, 1, 2]]), size=16)
    # In texel space (x = 16 u, y = 16 (1 - v)) the triangle is x <= y: centres (c + .5, r + .5) with c <= r.
    rows, cols = texel // 16, texel % 16
    assert len(texel) == 16 * 17 // 2 and (cols <= rows).all()
    assert (face == 0).all()
    np.testing.assert_allclose(bary.sum(1), 1.0)
    # the texel (row 15, col 0) has its centre at uv (0.5/16, 0.5/16): weights (1 - 1/16, 1/32, 1/32)
    np.testing.assert_allclose(bary[texel == 15 * 16][0], [1 - 1 / 16, 1 / 32, 1 / 32])


def test_decimate_reaches_the_budget_and_keeps_colours_and_unit_normals():
    mesh = _coloured_sphere()
    mesh.metadata.update(isosurface_threshold=11.8, silhouette_iou=0.94)
    small = decimate(mesh, 300)
    assert 250 <= len(small.faces) <= 320
    assert small.metadata["isosurface_threshold"] == 11.8 and small.metadata["silhouette_iou"] == 0.94
    assert small.visual.kind == "vertex"
    np.testing.assert_allclose(np.linalg.norm(small.vertex_normals, axis=1), 1.0, atol=1e-6)
    assert decimate(mesh, 10**6).faces.shape == mesh.faces.shape


def test_textured_glb_has_pbr_material_and_uvs(baked, tmp_path):
    _, result = baked
    path = export_textured_glb(result.mesh, result.image, result.uv, tmp_path / "t.glb", recenter=False)
    loaded = trimesh.load(path, force="mesh")
    material = loaded.visual.material
    assert material.roughnessFactor == pytest.approx(1.0)
    assert material.metallicFactor == pytest.approx(0.0)
    assert material.baseColorTexture.size == (512, 512)
    assert loaded.visual.uv.shape == (len(loaded.vertices), 2)
    # (x, y, z) → (x, z, −y): the world's +z pole becomes glTF's +y
    assert loaded.bounds[1, 1] == pytest.approx(result.mesh.bounds[1, 2], abs=1e-6)
    with pytest.raises(ValueError, match="uv must have shape"):
        export_textured_glb(result.mesh, result.image, result.uv[:-1], tmp_path / "bad.glb")
