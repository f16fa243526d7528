"""Multi-view reconstruction: ray-cast test views, the scene box, a sphere's round trip, and `reconstruct` outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from lift3d.io.artifacts import ArtifactWriter
from lift3d.io.mesh_assets import MeshExportOptions
from lift3d.io.storage import LocalStore
from lift3d.reconstruct import ReconstructOptions, RenderViewsOptions, reconstruct, render_views
from nerf.datasets.blender import ViewDataset, load_views
from nerf.mesh_render import MeshRayCaster, MeshRenderConfig, render_mesh, spread_cameras
from nerf.scene_box import scene_frame
from nerf.trainers.photometric import ReconstructionConfig, ReconstructionTrainer

FAST = dict(batch_rays=1024, hull_init_steps=60, hull_resolution=64)


def test_sphere_silhouette_matches_the_projected_disc():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    cams = spread_cameras(2, distance=2.0, fovy_deg=40.0)
    rgba = render_mesh(mesh, cams.c2w, cams.fovy_deg, 64, 64, MeshRenderConfig(supersample=4))
    # A sphere of radius r at distance d projects to a disc of angular radius asin(r / d).
    focal = 32 / math.tan(math.radians(20))
    disc_px = math.pi * (focal * math.tan(math.asin(0.25))) ** 2
    assert rgba[..., 3].sum(dim=(1, 2)).tolist() == pytest.approx([disc_px, disc_px], rel=0.02)


def test_lambert_shading_is_view_independent():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    cams = spread_cameras(2, distance=2.0, fovy_deg=40.0, elevation_range_deg=(30.0, 30.0), layout="random")
    rgba = render_mesh(mesh, cams.c2w, cams.fovy_deg, 1, 1, MeshRenderConfig(supersample=1))
    # Both centre rays hit the sphere where its normal points at the camera: shade = f(normal) only.
    eye = cams.c2w[:, :3, 3] / cams.c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    cfg = MeshRenderConfig()
    lights = torch.tensor(cfg.light_dirs) / torch.tensor(cfg.light_dirs).norm(dim=-1, keepdim=True)
    expected = 0.8 * (cfg.ambient + (eye @ lights.T).clamp_min(0) @ torch.tensor(cfg.light_intensities))
    torch.testing.assert_close(rgba[:, 0, 0, 0], expected.float(), atol=0.02, rtol=0)


@pytest.mark.parametrize("backend", ["embree", "numpy"])
@pytest.mark.parametrize("offset", [(0.0, 0.0, 0.0), (1000.0, -500.0, 250.0)])  # far from the origin too
def test_ray_caster_returns_the_first_face_and_its_barycentrics(backend, offset):
    # Face 0 in the plane z = 0, face 1 (twice as large) in z = 0.5 above it.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.5], [2, 0, 0.5], [0, 2, 0.5]]) + offset
    caster = MeshRayCaster(trimesh.Trimesh(vertices, [[0, 1, 2], [3, 4, 5]], process=False), backend=backend)
    assert caster.backend == backend
    down, up = [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]
    origins = np.array([[0.2, 0.3, 1.0], [0.2, 0.3, -1.0], [0.8, 0.8, -1.0], [3.0, 3.0, 1.0]]) + offset
    hits = caster(origins, np.array([down, up, up, down]))
    assert hits.face.tolist() == [1, 0, 1, -1] and hits.hit.tolist() == [True, True, True, False]
    # (x, y) on face 1 is 0.5 · (x, y) in its own edge coordinates: weights (1 − u − v, u, v).
    expected = [[0.75, 0.1, 0.15], [0.5, 0.2, 0.3], [0.2, 0.4, 0.4], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(hits.barycentric, expected, atol=1e-4 if any(offset) else 1e-6)
    assert caster(np.zeros((0, 3)), np.zeros((0, 3))).face.shape == (0,)


def test_scene_box_from_cameras_without_masks():
    cams = spread_cameras(12, distance=3.0, fovy_deg=30.0)
    views = ViewDataset(torch.ones(12, 4, 4, 3), torch.ones(12, 4, 4, 1), torch.zeros(12, dtype=torch.bool),
                        cams.c2w, 30.0, [])
    frame = scene_frame(views, margin=1.0)
    torch.testing.assert_close(frame.centre, torch.zeros(3), atol=1e-5, rtol=0)
    assert frame.scale == pytest.approx(3.0 * math.sin(math.radians(15.0)), rel=1e-4)  # sphere seen by all
    assert frame.hull is None


def test_visual_hull_box_encloses_the_sphere_tightly(sphere_views):
    frame = scene_frame(load_views(sphere_views), margin=1.0, hull_resolution=64)
    torch.testing.assert_close(frame.centre, torch.tensor([0.2, 0.1, -0.1]), atol=0.02, rtol=0)
    assert 0.5 <= frame.scale <= 0.5 * 1.08  # the 16-view hull is a little larger than the sphere


def test_sphere_round_trip_recovers_the_radius(sphere_views):
    trainer = ReconstructionTrainer(load_views(sphere_views), ReconstructionConfig(max_steps=40, **FAST))
    history = trainer.train()
    assert history[-1].losses["rgb"] < history[0].losses["rgb"]
    mesh = trainer.extract_mesh()
    radii = np.linalg.norm(mesh.vertices - [0.2, 0.1, -0.1], axis=1)
    assert radii.mean() == pytest.approx(0.5, rel=0.03)
    assert radii.std() < 0.01  # round, not the 16-view visual hull's polyhedron


def test_reconstruct_writes_world_frame_glbs_preview_and_metadata(sphere_views, tmp_path):
    from nerf.trainers.photometric import ReconstructionConfig as Config

    options = ReconstructOptions(steps=15, mesh_resolution=64, export=MeshExportOptions(texture_size=512))
    result = reconstruct(sphere_views, ArtifactWriter(LocalStore(tmp_path)), options, config=Config(**FAST))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["metadata.json", "model.glb", "model_textured.glb", "preview.png"]
    # Not recentred: glTF Y-up (x, z, -y) of the world centre (0.2, 0.1, -0.1).
    for name in ("model.glb", "model_textured.glb"):
        glb = trimesh.load(tmp_path / name, force="mesh")
        np.testing.assert_allclose(glb.bounds.mean(axis=0), [0.2, -0.1, -0.1], atol=0.03)
        np.testing.assert_allclose(glb.extents, 1.0, atol=0.06)
    reference = trimesh.load(sphere_views / "reference.glb", force="mesh")
    np.testing.assert_allclose(reference.bounds.mean(axis=0), [0.2, -0.1, -0.1], atol=1e-3)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["training"]["steps"] == 15 and meta["views"]["count"] == 16
    assert meta["mesh"]["faces"] == len(result.mesh.faces)
    assert meta["scene_box"]["source"] == "visual_hull"


def test_config_rejects_out_of_range_values():
    with pytest.raises(ValueError):
        ReconstructionConfig(max_steps=0)
    with pytest.raises(ValueError):
        ReconstructionConfig(lr_final_ratio=0.0)
