"""Camera paths of turntable videos (nerf/camera_paths.py) and their parameters (lift3d/params/video.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lift3d.errors import InvalidInputError
from lift3d.params import parse_params
from lift3d.pipeline.steps import REFERENCE_CAMERA_DISTANCE, REFERENCE_FOVY_DEG
from lift3d.params.video import DEFAULT_CAMERA_DISTANCE, DEFAULT_FOVY_DEG, Keyframe, VideoParams
from nerf import camera_paths
from nerf.camera_paths import interpolate_keyframes, keyframe_times, orbit, pchip, spiral


def key(el: float, az: float, dist: float = 3.8, fovy: float = 20.0) -> dict:
    return {"elevation_deg": el, "azimuth_deg": az, "camera_distance": dist, "fovy_deg": fovy}


def test_orbit_frame_k_has_azimuth_360k_over_n_and_looks_at_the_origin():
    cams = orbit(8)
    assert cams.azimuth_deg.tolist() == [45.0 * k for k in range(8)]
    assert cams.elevation_deg.tolist() == [15.0] * 8
    assert cams.distance.tolist() == pytest.approx([3.8] * 8) and cams.fovy_deg.tolist() == [20.0] * 8
    # Frame 2: azimuth 90°, elevation 15°: 3.8 · (cos 15° cos 90°, cos 15° sin 90°, sin 15°) = (0, 3.67052, 0.98351).
    np.testing.assert_allclose(cams.c2w[2, :3, 3].numpy(), [0.0, 3.67052, 0.98351], atol=1e-5)
    # OpenGL axes: the camera looks down its −z column, i.e. towards the origin.
    forward = -cams.c2w[:, :3, 2]
    np.testing.assert_allclose(forward.numpy(), (-cams.c2w[:, :3, 3] / 3.8).numpy(), atol=1e-6)
    assert orbit(5, elevation_deg=-30.0, camera_distance=2.0, fovy_deg=40.0).azimuth_deg.tolist() == [
        0.0, 72.0, 144.0, 216.0, 288.0]


def test_spiral_makes_two_turns_while_the_elevation_rises_and_falls():
    cams = spiral(8)
    assert cams.azimuth_deg.tolist() == [90.0 * k for k in range(8)]
    # low + (high − low)(1 − cos 2πk/8)/2 with (0°, 40°): 0, 5.858, 20, 34.142, 40, 34.142, 20, 5.858
    expected = [0.0, 5.857864, 20.0, 34.142136, 40.0, 34.142136, 20.0, 5.857864]
    np.testing.assert_allclose(cams.elevation_deg.numpy(), expected, atol=1e-4)
    one_turn = spiral(4, elevation_range_deg=(10.0, 10.0), turns=1.0)
    assert one_turn.azimuth_deg.tolist() == [0.0, 90.0, 180.0, 270.0]
    assert one_turn.elevation_deg.tolist() == [10.0] * 4


def test_pchip_matches_a_hand_computed_value_and_two_knots_are_a_straight_line():
    # Knots (0, 1, 2), values (0, 1, 3): secants 1 and 2; slopes 0.5 (end), 4/3 (harmonic mean), 2.5 (end).
    # At 0.5: h10·1·0.5 + h01·1 + h11·1·(4/3) with h10 = 0.125, h01 = 0.5, h11 = −0.125 → 0.3958333.
    assert pchip(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 3.0]), np.array([0.5]))[0] == pytest.approx(
        0.0625 + 0.5 - 0.125 * 4 / 3, abs=1e-12)
    line = pchip(np.array([0.0, 4.0]), np.array([10.0, 30.0]), np.arange(5.0))
    np.testing.assert_allclose(line, [10.0, 15.0, 20.0, 25.0, 30.0], atol=1e-12)


def test_two_keyframes_interpolate_linearly():
    cams = interpolate_keyframes([key(0.0, 0.0, 3.0, 30.0), key(30.0, 180.0, 5.0, 50.0)], 5)
    np.testing.assert_allclose(cams.elevation_deg.numpy(), [0.0, 7.5, 15.0, 22.5, 30.0], atol=1e-5)
    np.testing.assert_allclose(cams.azimuth_deg.numpy(), [0.0, 45.0, 90.0, 135.0, 180.0], atol=1e-4)
    np.testing.assert_allclose(cams.distance.numpy(), [3.0, 3.5, 4.0, 4.5, 5.0], atol=1e-6)
    np.testing.assert_allclose(cams.fovy_deg.numpy(), [30.0, 35.0, 40.0, 45.0, 50.0], atol=1e-5)


def test_keyframes_are_hit_exactly_at_their_frames():
    keys = [key(0.0, 0.0), key(40.0, 100.0, 4.5, 25.0), key(10.0, 170.0, 3.0, 15.0), key(-20.0, 360.0)]
    assert keyframe_times(4, 13).tolist() == [0.0, 4.0, 8.0, 12.0]
    cams = interpolate_keyframes(keys, 13)
    for frame, k in zip((0, 4, 8, 12), keys):
        got = [cams.elevation_deg[frame], cams.azimuth_deg[frame], cams.distance[frame], cams.fovy_deg[frame]]
        assert [float(v) for v in got] == pytest.approx(list(k.values()), abs=1e-5)


def test_keyframe_path_is_c1_where_linear_interpolation_has_corners():
    els, azs = [0.0, 50.0, 10.0, 30.0, -10.0], [0.0, 60.0, 200.0, 250.0, 400.0]
    keys = [key(e, a, 3.0 + i * 0.3, 20.0 + 5 * (i % 2)) for i, (e, a) in enumerate(zip(els, azs))]
    frames = 401  # keyframes at frames 0, 100, 200, 300, 400
    cams = interpolate_keyframes(keys, frames)
    # The change of the per-frame step between neighbouring frames: O(1/frames²) for a C1 curve, but at a
    # keyframe of the piecewise-linear path it is the whole change of slope (here 1° per frame).
    linear = np.interp(np.arange(frames), keyframe_times(5, frames), azs)
    assert np.abs(np.diff(linear, n=2)).max() == pytest.approx(1.0)
    assert np.abs(np.diff(cams.azimuth_deg.double().numpy(), n=2)).max() < 0.05
    for series in (cams.elevation_deg, cams.distance, cams.fovy_deg):
        steps = np.diff(series.double().numpy())
        assert np.abs(np.diff(steps)).max() < 0.05 * np.abs(steps).max()


def test_keyframe_curves_do_not_overshoot_and_azimuths_are_never_wrapped():
    cams = interpolate_keyframes([key(0.0, 0.0), key(80.0, 10.0), key(85.0, 20.0), key(0.0, 30.0)], 61)
    assert float(cams.elevation_deg.min()) >= 0.0 and float(cams.elevation_deg.max()) <= 85.0 + 1e-4
    long_way = interpolate_keyframes([key(0.0, 0.0), key(0.0, 350.0)], 3)
    assert long_way.azimuth_deg.tolist() == pytest.approx([0.0, 175.0, 350.0])
    short_way = interpolate_keyframes([key(0.0, 0.0), key(0.0, -10.0)], 3)
    assert short_way.azimuth_deg.tolist() == pytest.approx([0.0, -5.0, -10.0])


def test_keyframe_objects_from_video_params_are_accepted():
    params = VideoParams(camera_path=[{"azimuth_deg": 0.0}, {"azimuth_deg": 90.0, "elevation_deg": 30.0}],
                         video_frames=8)
    assert isinstance(params.camera_path[0], Keyframe)
    cams = interpolate_keyframes(params.camera_path, 8)
    assert float(cams.azimuth_deg[-1]) == 90.0 and float(cams.elevation_deg[-1]) == 30.0
    assert float(cams.distance[0]) == pytest.approx(3.8) and float(cams.fovy_deg[0]) == 20.0
    # A form field carries the list as JSON text.
    as_text = VideoParams(camera_path='[{"azimuth_deg": 0}, {"azimuth_deg": 90, "elevation_deg": 30}]',
                          video_frames=8)
    assert as_text.camera_path == params.camera_path


@pytest.mark.parametrize("call, message", [
    (lambda: interpolate_keyframes([key(0, 0)], 8), "at least 2"),
    (lambda: interpolate_keyframes([key(0, 0), key(0, 1), key(0, 2)], 2), "one frame per keyframe"),
    (lambda: interpolate_keyframes([key(0, 0), key(90, 0)], 8), "[-89, 89]"),
    (lambda: interpolate_keyframes([key(0, 0), {"azimuth_deg": 3}], 8), "elevation_deg"),
    (lambda: orbit(0), "frames"),
    (lambda: spiral(8, elevation_range_deg=(30.0, 10.0)), "low <= high"),
])
def test_bad_paths_raise_value_errors(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_video_params_defaults_and_the_shared_camera_constants():
    params = VideoParams()
    assert (params.video, params.camera_path, params.video_frames, params.video_fps, params.video_size,
            params.video_source) == (False, "orbit", 48, 24, 256, "mesh")
    assert DEFAULT_CAMERA_DISTANCE == camera_paths.DEFAULT_CAMERA_DISTANCE == REFERENCE_CAMERA_DISTANCE == 3.8
    assert DEFAULT_FOVY_DEG == camera_paths.DEFAULT_FOVY_DEG == REFERENCE_FOVY_DEG == 20.0
    assert math.isclose(float(orbit(1).distance[0]), torch.tensor(3.8).item())


@pytest.mark.parametrize("values, where", [
    ({"video_size": 255}, "video_size"),
    ({"video_size": 32}, "video_size"),
    ({"video_frames": 601}, "video_frames"),
    ({"video_fps": 0}, "video_fps"),
    ({"camera_path": "circle"}, "camera_path"),
    ({"camera_path": [{"azimuth_deg": 0}]}, "camera_path.keyframes"),
    ({"camera_path": [{}, {"elevation_deg": 95}]}, "camera_path.keyframes.1.elevation_deg"),
    ({"camera_path": [{}, {"camera_distance": 0}]}, "camera_distance"),
    ({"camera_path": '[{"azimuth_deg": 0},'}, "keyframes are not valid JSON"),
    ({"camera_path": [{}] * 9, "video_frames": 8}, "camera_path.keyframes: List should have at most 8 items"),
    ({"video_source": "gaussians"}, "video_source"),
])
def test_generation_params_reject_bad_video_fields_with_the_field_named(values, where):
    with pytest.raises(InvalidInputError) as info:
        parse_params({"video": True, **values})
    assert where in str(info.value)
    assert "\n" not in str(info.value)
