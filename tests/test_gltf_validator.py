"""Every kind of GLB the project writes passes the Khronos glTF-Validator with no errors.

Needs node and ``npm ci`` (``make install``). Without them the tests are skipped with the reason, unless
``LIFT3D_REQUIRE_GLTF_VALIDATOR=1`` (set by ``make test``), in which case they fail.
"""

from __future__ import annotations


import numpy as np
import pytest
import trimesh

from nerf.export import export_glb
from nerf.texture import bake_texture, decimate, export_textured_glb, unwrap
from gltf_validator import error_messages, require_validator, validate


@pytest.fixture(scope="module", autouse=True)
def _validator_present():
    require_validator()


def _mesh() -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    rgb = np.clip(mesh.vertices + 0.5, 0.0, 1.0)
    mesh.visual.vertex_colors = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    return mesh


def test_vertex_colour_and_textured_glbs_have_no_errors(tmp_path):
    mesh = _mesh()
    small = decimate(mesh, 400)  # decimation once produced folded faces with zero normals
    paths = [
        export_glb(mesh, tmp_path / "vertex.glb"),
        export_glb(small, tmp_path / "vertex_decimated.glb", recenter=False),
    ]
    for name, source in (("textured.glb", mesh), ("textured_decimated.glb", small)):
        baked = bake_texture(unwrap(source, size=512), None, size=512)
        paths.append(export_textured_glb(baked.mesh, baked.image, baked.uv, tmp_path / name))
    reports = validate(*paths)
    assert len(reports) == len(paths)
    for path, report in zip(paths, reports):
        assert report["issues"]["numErrors"] == 0, (path.name, error_messages(report))
    textured = reports[2]["info"]
    assert textured["materialCount"] == 1 and textured["hasTextures"] is True


def test_validator_reports_errors_in_a_broken_file(tmp_path):
    path = export_glb(_mesh(), tmp_path / "ok.glb")
    data = bytearray(path.read_bytes())
    data[-200:] = b"\xff" * 200  # corrupt the tail of the binary buffer's indices
    broken = tmp_path / "broken.glb"
    broken.write_bytes(bytes(data))
    (report,) = validate(broken)
    assert report["issues"]["numErrors"] > 0


@pytest.mark.slow
def test_reconstruct_and_render_views_outputs_have_no_errors(tmp_path):
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.mesh_assets import MeshExportOptions
    from lift3d.io.storage import LocalStore
    from lift3d.reconstruct import ReconstructOptions, RenderViewsOptions, reconstruct, render_views
    from nerf.trainers.photometric import ReconstructionConfig

    trimesh.creation.icosphere(subdivisions=3, radius=0.5).export(tmp_path / "sphere.ply")
    render_views(tmp_path / "sphere.ply", tmp_path / "views", RenderViewsOptions(num_views=8, resolution=48))
    reconstruct(tmp_path / "views", ArtifactWriter(LocalStore(tmp_path / "out")),
                ReconstructOptions(steps=5, mesh_resolution=48, preview=False,
                                   export=MeshExportOptions(texture_size=512, target_faces=2000)),
                config=ReconstructionConfig(batch_rays=512, hull_init_steps=40, hull_resolution=48))
    paths = [tmp_path / "views" / "reference.glb", tmp_path / "out" / "model.glb",
             tmp_path / "out" / "model_textured.glb"]
    for path, report in zip(paths, validate(*paths)):
        assert report["issues"]["numErrors"] == 0, (path.name, error_messages(report))
