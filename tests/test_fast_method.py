"""``method`` fast and fast+sds end to end on the tiny preset (the CLI), and the pieces they add: the textured
``model.glb``, triangle remeshing, the parameters' rules and the preset resolution."""

from __future__ import annotations

import json
import re
from dataclasses import replace
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from lift3d.cli import main
from lift3d.errors import InvalidInputError
from lift3d.params import parse_params
from lift3d.params.fast3d import FastAssetParams
from lift3d.presets import get_preset, resolve_preset
from nerf.remesh import edge_length_for_vertices, remesh_triangles

ROOT = Path(__file__).resolve().parents[1]
DRAGON = ROOT / "examples" / "dragon2_rgba.png"


def glb_json(path: Path) -> dict:
    """The JSON chunk of a GLB file (glTF 2.0 binary: 12-byte header, then chunk length, type, data)."""
    data = path.read_bytes()
    assert data[:4] == b"glTF"
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A  # "JSON"
    return json.loads(data[20:20 + length])


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    code = main(["generate", "--image", str(DRAGON), "--method", "fast", "--preset", "tiny", "--seed", "3",
                 "--out", str(out)])
    return code, out


def test_fast_writes_a_textured_model_and_no_views(fast_run):
    code, out = fast_run
    assert code == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["input.png", "metadata.json", "model.glb"]
    gltf = glb_json(out / "model.glb")
    (primitive,) = gltf["meshes"][0]["primitives"]
    assert "TEXCOORD_0" in primitive["attributes"] and "COLOR_0" not in primitive["attributes"]
    assert len(gltf["images"]) == 1 and gltf["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]["index"] == 0
    mesh = trimesh.load(out / "model.glb", force="mesh")
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)


def test_fast_metadata_names_the_method_and_the_random_model(fast_run):
    _, out = fast_run
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["method"] == "fast" and meta["params"]["method"] == "fast"
    assert meta["feedforward_model"] == "triposr"
    assert meta["models"]["feedforward"] == {"source": "tiny", "random_weights": True}
    assert set(meta["models"]) == {"feedforward"}  # no Zero123 (no views, no SDS); the dragon has its own alpha
    assert meta["random_weights"] is True and "RANDOM WEIGHTS" in meta["warning"]
    assert meta["views"] == [] and meta["training"] is None
    assert set(meta["timings_s"]) == {"background_removal", "feedforward", "mesh_export"}
    assert meta["mesh"]["faces"] > 0


def test_fast_model_passes_the_gltf_validator(fast_run):
    from gltf_validator import error_messages, require_validator, validate

    require_validator()
    _, out = fast_run
    assert [error_messages(r) for r in validate(out / "model.glb")] == [[]]


def small_sds_preset():
    """The tiny preset with 16² random views and 24² reference renders: the refinement's plumbing at test cost (the
    refinement recipe renders every phase at the finest size, ~2 s per step of the tiny preset on 2 cores)."""
    tiny = get_preset("tiny")
    training = tiny.nerf.training
    cameras = replace(training.random_cameras, schedule=replace(training.schedule, sizes=(16, 16, 16)))
    training = replace(training, random_cameras=cameras, reference_sizes=(24, 24, 24))
    return replace(tiny, nerf=replace(tiny.nerf, training=training, fit=replace(tiny.nerf.fit, steps=20)))


def test_fast_plus_sds_fits_the_guess_then_refines_for_the_steps_asked(tmp_path):
    from lift3d.cli.generate import run_generation

    params = parse_params({"method": "fast+sds", "seed": 3, "num_views": 4, "num_multiview_steps": 2,
                           "num_3d_max_steps": 10, "texture": False})
    result = run_generation(small_sds_preset(), params, Image.open(DRAGON), tmp_path)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["method"] == "fast+sds" and meta["training"]["steps"] == 10 == len(result.history)
    assert set(meta["models"]) == {"feedforward", "zero123"}
    assert {"feedforward", "novel_views", "sds_training", "mesh_export"} <= set(meta["timings_s"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png", "metadata.json", "model.glb", "views",
                                                          "views.png"]
    assert meta["mesh"]["faces"] > 0


def test_fast_plus_sds_defaults_to_the_presets_refine_steps():
    from lift3d.pipeline import Lift3DPipeline

    pipeline = Lift3DPipeline(get_preset("tiny"))
    assert pipeline._nerf_for(parse_params({"method": "fast+sds"})).training.max_steps == 70
    assert pipeline._nerf_for(parse_params({"method": "sds"})).training.max_steps == 200
    assert pipeline._nerf_for(parse_params({"method": "fast+sds", "num_3d_max_steps": 30})).training.max_steps == 30
    assert get_preset("default").fast.refine_steps == 200 and get_preset("default").nerf.training.max_steps == 600


def test_bad_method_is_refused():
    with pytest.raises(InvalidInputError, match=re.escape("method: Input should be 'sds', 'fast' or 'fast+sds'")):
        parse_params({"method": "slow"})


def test_views_only_makes_the_views_whatever_the_method(tmp_path, capsys):
    code = main(["generate", "--image", str(DRAGON), "--method", "fast", "--views-only", "--preset", "tiny",
                 "--num-views", "4", "--num-multiview-steps", "2", "--seed", "3", "--out", str(tmp_path)])
    assert code == 0
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert [v["azimuth_deg"] for v in meta["views"]] == [0.0, 90.0, 180.0, 270.0]
    assert meta["mesh"] is None and set(meta["models"]) == {"zero123"}
    assert not (tmp_path / "model.glb").exists()


def test_fast_renders_a_nerf_video_request_from_the_mesh(tmp_path, caplog):
    from lift3d.cli.generate import run_generation

    params = parse_params({"method": "fast", "seed": 3, "texture": False, "video": True, "video_source": "nerf",
                           "video_frames": 8, "video_size": 64})
    with caplog.at_level("WARNING", logger="lift3d.pipeline.pipeline"):
        run_generation(get_preset("tiny"), params, Image.open(DRAGON), tmp_path)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["video"]["source"] == "mesh" and meta["video"]["frames"] == 8
    assert (tmp_path / "turntable.mp4").stat().st_size > 0
    assert "rendered from the mesh" in caplog.text


def test_auto_preset_needs_the_feedforward_weights_only_for_feedforward_methods(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    zero123 = tmp_path / "zero123"
    zero123.mkdir()
    (zero123 / "model_index.json").write_text("{}")
    triposr = tmp_path / "triposr"
    triposr.mkdir()
    assert resolve_preset("auto", zero123=str(zero123)).name == "default"
    assert resolve_preset("auto", zero123=str(zero123), feedforward=str(triposr), needs_feedforward=True).name == "tiny"
    (triposr / "config.yaml").write_text("{}")
    (triposr / "model.ckpt").write_bytes(b"")
    chosen = resolve_preset("auto", zero123=str(zero123), feedforward=str(triposr), needs_feedforward=True)
    assert chosen.name == "default" and chosen.feedforward == str(triposr)


def test_edge_length_for_a_vertex_budget():
    # a unit sphere (area 4π) with 1000 vertices: h = sqrt(2 · 4π / (√3 · 1000)) = sqrt(0.014510) = 0.12046
    assert edge_length_for_vertices(4 * np.pi, 1000) == pytest.approx(0.12046, abs=1e-5)
    with pytest.raises(ValueError):
        edge_length_for_vertices(1.0, 3)


def test_triangle_remeshing_keeps_a_box_and_meets_the_budget():
    box = trimesh.creation.box((1.0, 1.0, 0.2)).subdivide().subdivide()
    out = remesh_triangles(box, target_vertices=2000)
    assert 1600 <= len(out.vertices) <= 2400
    assert out.is_watertight and out.volume == pytest.approx(0.2, rel=1e-3)  # creases kept: still a 1 × 1 × 0.2 box
    np.testing.assert_allclose(out.bounds, [[-0.5, -0.5, -0.1], [0.5, 0.5, 0.1]], atol=1e-6)
    lengths = out.edges_unique_length
    assert lengths.std() / lengths.mean() < 0.35  # near-regular triangles


def test_fast_asset_params_follow_stability():
    assert FastAssetParams() == FastAssetParams(texture_resolution=1024, foreground_ratio=0.85, remesh="none",
                                                vertex_count=-1)
    for bad in ({"remesh": "quad"}, {"vertex_count": 50}, {"vertex_count": 20_001}, {"texture_resolution": 256},
                {"foreground_ratio": 0.05}):
        with pytest.raises(ValueError):
            FastAssetParams(**bad)


def test_the_feedforward_field_is_aligned_to_the_pipelines_reference_camera():
    from lift3d.pipeline import steps
    from lift3d.stages.feedforward.framing import LIFT3D_REFERENCE_VIEW as view

    assert (view.elevation_deg, view.azimuth_deg, view.distance, view.fovy_deg) == (
        steps.REFERENCE_ELEVATION_DEG, steps.REFERENCE_AZIMUTH_DEG, steps.REFERENCE_CAMERA_DISTANCE,
        steps.REFERENCE_FOVY_DEG)
