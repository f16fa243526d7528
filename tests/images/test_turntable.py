"""Turntable videos: MP4 writing, mesh and NeRF frames along camera paths, ``lift3d render-video`` and the
pipeline's step 7 (``video: true`` → ``turntable.mp4``)."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from lift3d.cli import main
from lift3d.errors import InvalidInputError
from lift3d.io.video import read_mp4_frames, read_mp4_info, write_mp4
from lift3d.pipeline import turntable
from lift3d.pipeline.turntable import camera_path_cameras, render_field_turntable, render_turntable, turntable_mp4
from lift3d.params.video import VideoParams
from nerf.camera_paths import orbit
from lift3d.presets import get_preset
from nerf.field import ImplicitVolume
from nerf.mesh_render import MeshRayCaster
from nerf.renderer import RendererConfig

ROOT = Path(__file__).resolve().parents[2]
DRAGON = ROOT / "examples" / "dragon2_rgba.png"
def _teddy_stand_in() -> trimesh.Trimesh:
    """A vertex-coloured mesh (the repository ships no mesh files): a capsule with a sphere on top, (200, 60, 60)."""
    body = trimesh.creation.capsule(height=0.8, radius=0.35, count=[24, 24])
    head = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    head.apply_translation([0.0, 0.0, 0.85])
    mesh = trimesh.util.concatenate([body, head])
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z-up → the GLB's y-up
    colours = np.tile(np.array([[200, 60, 60, 255]], dtype=np.uint8), (len(mesh.vertices), 1))
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colours, process=False)


def red_sphere(radius: float = 0.5) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    mesh.visual.vertex_colors = np.tile(np.array([255, 0, 0, 255], np.uint8), (len(mesh.vertices), 1))
    return mesh


def red_fraction(frame: np.ndarray) -> float:
    return float(((frame[..., 0] > 200) & (frame[..., 1] < 60) & (frame[..., 2] < 60)).mean())


# ---------------------------------------------------------------------------------------------------- MP4 files
def test_mp4_round_trip_keeps_frame_count_size_rate_and_colours(tmp_path):
    red, blue = np.zeros((48, 64, 3), np.uint8), np.zeros((48, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    data = write_mp4([red] * 5 + [blue] * 5, None, fps=12)
    assert data[4:8] == b"ftyp" and b"moov" in data[:4096]  # +faststart: the index precedes the frames
    assert read_mp4_info(data) == (10, 64, 48, 12.0)
    frames = read_mp4_frames(data)
    assert np.abs(frames[0].astype(int) - red).max() <= 12 and np.abs(frames[9].astype(int) - blue).max() <= 12
    # A path, float frames in [0, 1] and tensors take the same route.
    write_mp4((torch.full((32, 32, 3), 1.0) for _ in range(8)), tmp_path / "white.mp4", fps=30)
    assert read_mp4_info(tmp_path / "white.mp4") == (8, 32, 32, 30.0)
    assert read_mp4_frames(tmp_path / "white.mp4")[3].min() >= 250


def test_mp4_rejects_odd_sizes_and_empty_videos_with_a_fix():
    with pytest.raises(InvalidInputError, match="even width and height.*got 63x64: use 64x64"):
        write_mp4([np.zeros((64, 63, 3), np.uint8)], None)
    with pytest.raises(InvalidInputError, match="at least one frame"):
        write_mp4([], None)
    with pytest.raises(ValueError, match="frame 1 has shape"):
        write_mp4([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], None)


# ---------------------------------------------------------------------------------------------------- frames
def test_red_sphere_is_red_at_the_centre_on_white_with_the_perspective_size():
    frame = next(render_turntable(red_sphere(), orbit(4), 64))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert frame[32, 32].tolist() == [255, 0, 0]
    for corner in (frame[0, 0], frame[0, -1], frame[-1, 0], frame[-1, -1]):
        assert corner.tolist() == [255, 255, 255]
    # Silhouette of a sphere (r 0.5, d 3.8, fovy 20°): radius tan(asin(0.5/3.8)) / tan(10°) · 32 = 24.1 px, so
    # π · 24.1² / 64² = 44.5 % of the frame (the inscribed icosphere a little less).
    assert 0.42 < red_fraction(frame) < 0.45


def test_cameras_look_at_the_bounding_box_centre_unless_told_otherwise():
    moved = red_sphere(0.3)
    moved.apply_translation([0.0, 0.4, 0.0])  # +y is image right for the azimuth-0 camera (on the +x axis)
    centred = next(render_turntable(red_sphere(0.3), orbit(1), 64))
    assert np.array_equal(next(render_turntable(moved, orbit(1), 64)), centred)
    at_origin = next(render_turntable(moved, orbit(1), 64, center=None))
    scene = trimesh.Scene()
    scene.add_geometry(red_sphere(0.3), transform=trimesh.transformations.translation_matrix([0.0, 0.4, 0.0]))
    assert np.array_equal(next(render_turntable(scene, orbit(1), 64, center=None)), at_origin)  # node transform
    columns = np.nonzero(at_origin[..., 1] < 60)[1]
    assert columns.mean() > np.nonzero(centred[..., 1] < 60)[1].mean() + 8


def test_embree_frames_match_the_numpy_ray_caster(monkeypatch):
    mesh = red_sphere()
    mesh.visual.vertex_colors = np.c_[np.clip(mesh.vertices * 250 + 128, 0, 255), np.full(len(mesh.vertices), 255)
                                      ].astype(np.uint8)
    cameras = camera_path_cameras("spiral", 2)  # few rays: the numpy caster tests every ray against every face
    fast = np.stack(list(render_turntable(mesh, cameras, 40, supersample=2)))
    assert turntable.MeshRayCaster(mesh).backend == "embree"  # embreex is a dependency
    monkeypatch.setattr(turntable, "MeshRayCaster", functools.partial(MeshRayCaster, backend="numpy"))
    reference = np.stack(list(render_turntable(mesh, cameras, 40, supersample=2)))
    difference = np.abs(fast.astype(int) - reference.astype(int))
    assert difference.max() <= 2 and (difference > 0).mean() < 0.01


def test_keyframe_path_frames_are_the_keyframe_views():
    params = VideoParams(video=True, video_frames=9, video_size=64, camera_path=[
        {"elevation_deg": 15.0, "azimuth_deg": 0.0}, {"elevation_deg": 15.0, "azimuth_deg": 90.0}])
    mesh = red_sphere()
    mesh.visual.vertex_colors[mesh.vertices[:, 1] > 0.1] = [0, 0, 255, 255]  # a blue cap on +y
    frames = list(render_turntable(mesh, camera_path_cameras(params.camera_path, 9), 64))
    views = list(render_turntable(mesh, orbit(4), 64))  # azimuths 0, 90, 180, 270 at elevation 15°
    assert np.array_equal(frames[0], views[0]) and np.array_equal(frames[-1], views[1])
    blue = [float(((f[..., 2] > 200) & (f[..., 0] < 60)).mean()) for f in frames]
    assert blue[-1] > blue[0] + 0.2  # turning to face +y shows the blue cap


def test_nerf_frames_show_the_initial_density_blob_over_white():
    field = ImplicitVolume(get_preset("tiny").nerf.field, seed=0)
    frames = list(render_field_turntable(field, RendererConfig(num_samples_per_ray=32), orbit(2), 32))
    assert len(frames) == 2 and frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
    # The untrained field is a blob of radius 0.5 at the origin (density 10 · (1 − |x| / 0.5)): opaque-ish at the
    # centre, nothing in the corners, where the background stays pure white.
    assert frames[0][0, 0].tolist() == [255, 255, 255] and frames[0][-1, -1].tolist() == [255, 255, 255]
    assert np.abs(frames[0][16, 16].astype(int) - 128).max() <= 20  # albedo ≈ 0.5 before training
    again = list(render_field_turntable(field, RendererConfig(num_samples_per_ray=32), orbit(2), 32))
    assert np.array_equal(frames[1], again[1])


def test_turntable_mp4_has_the_requested_frames_rate_and_size():
    data = turntable_mp4(red_sphere(), VideoParams(video=True, camera_path="spiral", video_frames=10, video_fps=15,
                                                   video_size=64))
    assert read_mp4_info(data) == (10, 64, 64, 15.0)
    first = read_mp4_frames(data)[0]
    assert first[32, 32, 0] > 230 and first[32, 32, 1:].max() < 30 and first[0, 0].min() > 245


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def teddy_glb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glb") / "teddy.glb"
    _teddy_stand_in().export(path)
    return path


def test_render_video_command_writes_an_mp4_of_n_frames(tmp_path, capsys, teddy_glb):
    out = tmp_path / "videos" / "teddy.mp4"
    code = main(["render-video", "--mesh", str(teddy_glb), "--out", str(out), "--frames", "8", "--size", "64",
                 "--fps", "10", "--supersample", "1"])
    assert code == 0, capsys.readouterr().err
    assert read_mp4_info(out) == (8, 64, 64, 10.0)
    frame = read_mp4_frames(out)[0]
    # The vertex colour on white (H.264 in yuv420p moves it a few levels); --fit fills the view with a margin.
    assert frame[0, 0].min() > 245 and np.abs(frame[32, 32].astype(int) - [200, 60, 60]).max() <= 12
    covered = frame.min(axis=-1) < 200
    assert 0.15 < covered.mean() < 0.8 and not covered[0].any() and not covered[-1].any()

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keyframes": [{"azimuth_deg": 0}, {"azimuth_deg": 45, "elevation_deg": 30}]}))
    code = main(["render-video", "--mesh", str(teddy_glb), "--out", str(tmp_path / "k.mp4"), "--camera-path",
                 str(keys), "--frames", "8", "--size", "64", "--supersample", "1"])
    assert code == 0 and read_mp4_info(tmp_path / "k.mp4") == (8, 64, 64, 24.0)


def _bad_inputs(tmp: Path, glb: Path) -> list[tuple[list[str], str]]:
    (tmp / "broken.json").write_text('[{"azimuth_deg": 0},')
    (tmp / "steep.json").write_text('[{"azimuth_deg": 0}, {"elevation_deg": 95}]')
    (tmp / "object.json").write_text('{"frames": 3}')
    return [
        (["--mesh", str(tmp / "missing.glb")], "not found"),
        (["--mesh", str(glb), "--camera-path", str(tmp / "broken.json")], "not valid JSON"),
        (["--mesh", str(glb), "--camera-path", str(tmp / "steep.json")], "camera_path.keyframes.1.elevation_deg"),
        (["--mesh", str(glb), "--camera-path", str(tmp / "object.json")], "JSON list of keyframes"),
        (["--mesh", str(glb), "--camera-path", "circle"], "orbit, spiral or a keyframes JSON file"),
        (["--mesh", str(glb), "--size", "101"], "video_size: Input should be a multiple of 2"),
        (["--mesh", str(glb), "--frames", "4"], "video_frames"),
        (["--mesh", str(glb), "--supersample", "9"], "--supersample"),
        (["--mesh", str(glb), "--fps", "sixty"], "--fps"),
    ]


def test_render_video_bad_inputs_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, teddy_glb):
    for args, expected in _bad_inputs(tmp_path, teddy_glb):
        out = tmp_path / "out.mp4"
        code = main(["render-video", *args, "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (args, lines)
        assert len(lines) == 1 and lines[0].startswith("lift3d: error:") and expected in lines[0], (args, lines)
        assert not out.exists()


# ---------------------------------------------------------------------------------------------------- pipeline
def small_tiny_preset():
    """The tiny preset with an even smaller NeRF run (32² renders, 48 samples per ray, 48³ marching cubes)."""
    from nerf.random_cameras import ResolutionSchedule

    tiny = get_preset("tiny")
    nerf, training = tiny.nerf, tiny.nerf.training
    schedule = ResolutionSchedule(sizes=(32,), batch_sizes=(1,), milestones=())
    training = replace(training, reference_sizes=(32,),
                       random_cameras=replace(training.random_cameras, schedule=schedule))
    nerf = replace(nerf, training=training, isosurface=replace(nerf.isosurface, resolution=48),
                   isosurface_from_reference=False, renderer=replace(nerf.renderer, num_samples_per_ray=48))
    return replace(tiny, nerf=nerf)


def test_tiny_pipeline_with_video_writes_turntable_mp4(tmp_path):
    from lift3d.io.artifacts import ArtifactWriter
    from lift3d.io.storage import LocalStore
    from lift3d.params import GenerationParams
    from lift3d.pipeline import Lift3DPipeline

    params = GenerationParams(seed=3, num_views=4, num_multiview_steps=1, num_3d_max_steps=10, texture=False,
                              video=True, video_frames=8, video_fps=12, video_size=64)
    writer = ArtifactWriter(LocalStore(tmp_path))
    output = Lift3DPipeline(small_tiny_preset())(params, image=Image.open(DRAGON), writer=writer)
    assert writer.names[-3:] == ["model.glb", "turntable.mp4", "metadata.json"]
    assert read_mp4_info(tmp_path / "turntable.mp4") == (8, 64, 64, 12.0)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["video"] == {"file": "turntable.mp4", "frames": 8, "fps": 12, "width": 64, "height": 64,
                             "duration_s": 0.667, "camera_path": "orbit", "source": "mesh", "background": "white",
                             "codec": "h264"}
    assert meta["params"]["video"] is True and meta["timings_s"]["turntable"] > 0
    assert list(output.timings_s)[-2:] == ["mesh_export", "turntable"]
    # The mesh is framed like model.glb (recentred): white corners, the object in the middle of the frame.
    frame = read_mp4_frames(tmp_path / "turntable.mp4")[0]
    covered = frame.min(axis=-1) < 200
    assert frame[0, 0].min() > 245 and 0.02 < covered.mean() < 0.9
    rows, cols = np.nonzero(covered)
    assert abs(rows.mean() - 31.5) < 8 and abs(cols.mean() - 31.5) < 8
