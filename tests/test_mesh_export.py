"""Isosurface extraction (nerf/mesh.py) and GLB export (nerf/export.py) on analytic density fields."""

from __future__ import annotations

import json
import logging
import struct
import sys

import numpy as np
import pytest
import torch
import trimesh

from nerf.export import export_glb
from nerf.mesh import EmptyIsosurfaceError, IsosurfaceConfig, extract_mesh

RES = 64
SPHERE_R = 0.6


def sphere_density(center=(0.0, 0.0, 0.0), radius=SPHERE_R, peak=50.0):
    """peak inside, 0 outside, soft falloff of width ~0.01; equals peak/2 = 25 exactly at ``radius``."""
    c = torch.tensor(center)

    def fn(p: torch.Tensor) -> torch.Tensor:
        return peak * torch.sigmoid((radius - (p - c).norm(dim=-1)) / 0.01)

    return fn


def outward_fraction(mesh: trimesh.Trimesh, center) -> float:
    radial = mesh.vertices - np.asarray(center)
    return float((np.einsum("ij,ij->i", mesh.vertex_normals, radial) > 0).mean())


def test_sphere_radius_normals_volume():
    mesh = extract_mesh(sphere_density(), radius=1.0, config=IsosurfaceConfig(resolution=RES))
    dist = np.linalg.norm(mesh.vertices, axis=1)
    assert np.all(np.abs(dist - SPHERE_R) / SPHERE_R < 0.02)
    assert outward_fraction(mesh, (0, 0, 0)) > 0.99
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4.0 / 3.0 * np.pi * SPHERE_R**3, rel=0.03)


def test_world_mapping_off_centre_sphere():
    center = (0.3, -0.2, 0.1)
    mesh = extract_mesh(sphere_density(center, radius=0.3), radius=1.0, config=IsosurfaceConfig(resolution=RES))
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), center, atol=0.01)
    np.testing.assert_allclose(mesh.extents, [0.6, 0.6, 0.6], rtol=0.03)
    assert outward_fraction(mesh, center) > 0.99


def test_scikit_image_fallback_orients_outward(monkeypatch):
    monkeypatch.setitem(sys.modules, "mcubes", None)  # makes `import mcubes` raise ImportError
    mesh = extract_mesh(sphere_density(), radius=1.0, config=IsosurfaceConfig(resolution=RES))
    assert outward_fraction(mesh, (0, 0, 0)) > 0.99
    assert mesh.volume > 0
    assert np.all(np.abs(np.linalg.norm(mesh.vertices, axis=1) - SPHERE_R) / SPHERE_R < 0.02)


def _sphere_with_floater(p: torch.Tensor) -> torch.Tensor:
    return torch.maximum(sphere_density()(p), sphere_density((0.8, 0.8, 0.8), radius=0.1)(p))


def test_floater_removed():
    config = IsosurfaceConfig(resolution=RES)
    mesh = extract_mesh(_sphere_with_floater, radius=1.0, config=config)
    assert np.linalg.norm(mesh.vertices, axis=1).max() < SPHERE_R * 1.02

    keep_all = extract_mesh(_sphere_with_floater, 1.0, IsosurfaceConfig(resolution=RES, keep_largest_component=False))
    assert len(keep_all.split(only_watertight=False)) == 2
    near_floater = np.linalg.norm(keep_all.vertices - 0.8, axis=1) < 0.12
    assert near_floater.sum() > 20

    ratio = IsosurfaceConfig(resolution=RES, keep_largest_component=False, min_component_ratio=0.5)
    filtered = extract_mesh(_sphere_with_floater, 1.0, ratio)
    assert len(filtered.vertices) == len(mesh.vertices)


def test_vertex_colours_from_position():
    mesh = extract_mesh(
        sphere_density(), 1.0, IsosurfaceConfig(resolution=RES), color_fn=lambda p: (p + 1.0) / 2.0
    )
    colors = np.asarray(mesh.visual.vertex_colors)
    assert colors.dtype == np.uint8 and colors.shape == (len(mesh.vertices), 4)
    expected = np.round((mesh.vertices + 1.0) / 2.0 * 255.0)
    np.testing.assert_allclose(colors[:, :3], expected, atol=1)
    assert np.all(colors[:, 3] == 255)


def test_auto_threshold_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="nerf.mesh"):
        mesh = extract_mesh(sphere_density(), 1.0, IsosurfaceConfig(resolution=32, threshold="auto"))
    assert "auto" in caplog.text
    assert mesh.volume > 0


@pytest.mark.parametrize("value, low, high", [(0.0, "0", "0"), (100.0, "100", "100")])
def test_empty_isosurface_message(value, low, high):
    with pytest.raises(EmptyIsosurfaceError) as info:
        extract_mesh(lambda p: torch.full((p.shape[0],), value), 1.0, IsosurfaceConfig(resolution=16))
    message = str(info.value)
    assert "threshold 25" in message
    assert f"ranges from {low} to {high}" in message
    assert isinstance(info.value, ValueError)


def test_bad_callback_shape():
    with pytest.raises(ValueError, match="density_fn must return shape"):
        extract_mesh(lambda p: p, 1.0, IsosurfaceConfig(resolution=16))


def _glb_attributes(path) -> set[str]:
    data = path.read_bytes()
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    gltf = json.loads(data[20 : 20 + length])
    return set(gltf["meshes"][0]["primitives"][0]["attributes"])


def test_glb_roundtrip_axes_colours(tmp_path):
    center = (0.0, 0.0, 0.3)  # sphere above the origin: +z in the world must become +y in glTF
    mesh = extract_mesh(
        sphere_density(center, radius=0.3), 1.0, IsosurfaceConfig(resolution=RES), color_fn=lambda p: (p + 1.0) / 2.0
    )
    path = export_glb(mesh, tmp_path / "sub" / "out.glb", recenter=False)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["out.glb"]  # no temp files left
    assert {"POSITION", "NORMAL", "COLOR_0"} <= _glb_attributes(path)

    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(mesh.vertices)
    np.testing.assert_allclose(loaded.bounds.mean(axis=0), (0.0, 0.3, 0.0), atol=0.01)
    # vertex-by-vertex: (x, y, z) → (x, z, −y), colours unchanged
    rotated = mesh.vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    np.testing.assert_allclose(loaded.vertices, rotated, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(loaded.visual.vertex_colors), np.asarray(mesh.visual.vertex_colors))
    assert loaded.volume == pytest.approx(mesh.volume, rel=1e-4)  # winding kept: still positive
    assert outward_fraction(loaded, (0.0, 0.3, 0.0)) > 0.99


def test_glb_recenter(tmp_path):
    mesh = extract_mesh(sphere_density((0.2, 0.1, 0.3), radius=0.3), 1.0, IsosurfaceConfig(resolution=32))
    loaded = trimesh.load(export_glb(mesh, tmp_path / "c.glb"), force="mesh")
    np.testing.assert_allclose(loaded.bounds.mean(axis=0), 0.0, atol=1e-6)
    # without rotation the extents keep their axes
    plain = trimesh.load(export_glb(mesh, tmp_path / "p.glb", z_up_to_y_up=False, recenter=False), force="mesh")
    np.testing.assert_allclose(plain.vertices, mesh.vertices, atol=1e-5)
