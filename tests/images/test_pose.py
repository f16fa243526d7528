"""Pose detection (lift3d/stages/sdxl/pose.py) and pose-conditioned SDXL (lift3d/stages/sdxl/pose_to_image.py),
tiny models."""

from __future__ import annotations

import io
import logging
import shutil
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import rtmlib
import torch
from diffusers import ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionXLControlNetPipeline
from PIL import Image

from lift3d.errors import InvalidInputError, ModelNotFoundError
from lift3d.params.images import PoseParams
from lift3d.stages.sdxl import pose_to_image
from lift3d.stages.loading import select_hub_files
from lift3d.stages.sdxl.pose import BODY_MODES, POSE_HOME_ENV, PoseDetector, PoseResult, draw_openpose
from lift3d.stages.sdxl.pose_to_image import PoseToImage
from lift3d.stages.sdxl.text_to_image import TextToImage

PHOTO = Path(__file__).resolve().parents[2] / "examples" / "anya_front_rgba.png"  # a figurine of a person, arms raised (threestudio)


@pytest.fixture(scope="module")
def pose_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pose")


@pytest.fixture(scope="module")
def detector(pose_home) -> PoseDetector:
    return PoseDetector.tiny(seed=0, home=pose_home)


@pytest.fixture(scope="module")
def sdxl() -> TextToImage:
    return TextToImage.tiny(seed=0)


@pytest.fixture(scope="module")
def stage(sdxl, pose_home) -> PoseToImage:
    return PoseToImage.tiny(sdxl, seed=0, detector_home=pose_home)


def params(**overrides) -> PoseParams:
    values = dict(prompt="a wooden toy robot", image="-", num_inference_steps=2, guidance_scale=1.0, strength=1.0)
    return PoseParams(**{**values, **overrides})


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


class FixedDetector:
    """Stands in for the detector: always the given keypoints, drawn on the reference's canvas."""

    def __init__(self, keypoints, scores) -> None:
        self.keypoints, self.scores = np.asarray(keypoints, np.float32), np.asarray(scores, np.float32)

    def __call__(self, image: Image.Image) -> PoseResult:
        return PoseResult.from_keypoints(self.keypoints, self.scores, image.size)


@pytest.fixture
def pipeline_calls(monkeypatch) -> list[dict]:
    """Records the keyword arguments (and the pipeline) of every StableDiffusionXLControlNetPipeline call."""
    calls: list[dict] = []
    original = StableDiffusionXLControlNetPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append({**kwargs, "pipe": self})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLControlNetPipeline, "__call__", spy)
    return calls


def one_limb() -> tuple[np.ndarray, np.ndarray]:
    """One person: neck (20, 32) and right shoulder (44, 32) visible, right elbow (44, 56) below the 0.3 cut."""
    keypoints = np.zeros((1, 18, 2), np.float32)
    scores = np.zeros((1, 18), np.float32)
    keypoints[0, 1], keypoints[0, 2], keypoints[0, 3] = (20, 32), (44, 32), (44, 56)
    scores[0, 1], scores[0, 2], scores[0, 3] = 0.9, 0.8, 0.1
    return keypoints, scores


def assert_one_limb_drawn(image: Image.Image) -> None:
    pixels = np.asarray(image)
    assert image.size == (64, 64) and image.mode == "RGB"
    # limb 0 (neck → right shoulder): OpenPose colour (255, 0, 0) × 0.6, 4 px either side of the segment
    assert pixels[32, 32].tolist() == [153, 0, 0]
    assert pixels[35, 30].tolist() == [153, 0, 0]
    assert pixels[40, 32].tolist() == [0, 0, 0]
    # keypoint discs in full colour: neck (255, 85, 0), right shoulder (255, 170, 0)
    assert pixels[32, 20].tolist() == [255, 85, 0]
    assert pixels[32, 44].tolist() == [255, 170, 0]
    # the elbow scores 0.1: neither its disc nor the shoulder → elbow limb is drawn
    assert pixels[56, 44].tolist() == [0, 0, 0] and pixels[48, 44].tolist() == [0, 0, 0]
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (153, 0, 0), (255, 85, 0), (255, 170, 0)}


# ------------------------------------------------------------------------------------------------ detector


def test_body_mode_files_are_rtmlibs():
    for mode, files in BODY_MODES.items():
        assert files.det_url == rtmlib.Body.MODE[mode]["det"]
        assert files.pose_url == rtmlib.Body.MODE[mode]["pose"]
        assert files.det_input_size == rtmlib.Body.MODE[mode]["det_input_size"]
        assert files.pose_input_size == rtmlib.Body.MODE[mode]["pose_input_size"]
        # rtmlib's download_checkpoint saves <zip name up to its first dot>.onnx
        assert files.det_file == PurePosixPath(files.det_url).stem + ".onnx"
    balanced = BODY_MODES["balanced"]
    assert balanced.det_file == "yolox_m_8xb8-300e_humanart-c2c7a14a.onnx"
    assert balanced.pose_file == "rtmpose-m_simcc-body7_pt-body7_420e-256x192-e48f03d0_20230504.onnx"


def test_missing_detector_files_fail_fast_and_name_them(tmp_path, monkeypatch):
    balanced = BODY_MODES["balanced"]
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as error:
        PoseDetector.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 2.0
    message = str(error.value)
    assert balanced.det_file in message and balanced.pose_file in message and str(tmp_path) in message
    assert balanced.det_url in message

    (tmp_path / balanced.det_file).write_bytes(b"present")
    with pytest.raises(ModelNotFoundError) as error:
        PoseDetector.from_pretrained(tmp_path)
    assert balanced.pose_file in str(error.value) and balanced.det_file not in str(error.value)

    monkeypatch.setenv(POSE_HOME_ENV, str(tmp_path / "from-env"))
    with pytest.raises(ModelNotFoundError, match="from-env"):
        PoseDetector.from_pretrained()
    with pytest.raises(InvalidInputError, match="balanced"):
        PoseDetector.from_pretrained(tmp_path, mode="fast")


def test_tiny_detector_runs_rtmlibs_classes(detector):
    assert isinstance(detector.det_model, rtmlib.YOLOX) and isinstance(detector.pose_model, rtmlib.RTMPose)
    assert detector.pose_model.to_openpose and detector.random_weights
    result = detector(noise_image(64, 48))
    assert result.keypoints.shape == (result.people, 18, 2) and result.keypoints.dtype == np.float32
    assert result.scores.shape == (result.people, 18) and result.scores.dtype == np.float32
    assert result.pose_image.size == (64, 48) and result.pose_image.mode == "RGB"
    # recorded: seed 0 keeps both boxes; the first person's first keypoints in pixels of the 64×48 input
    assert result.people == 2
    np.testing.assert_allclose(result.keypoints[0, :3], [[28.401, 23.902], [41.750, 41.391], [35.446, 64.690]],
                               atol=1e-2)
    assert np.asarray(result.pose_image).max() == 255  # visible keypoints were drawn
    again = detector(noise_image(64, 48))
    np.testing.assert_array_equal(again.keypoints, result.keypoints)
    assert png(again.pose_image) == png(result.pose_image)


def test_detector_on_a_photo_composites_alpha_on_white(detector):
    photo = Image.open(PHOTO)
    assert photo.mode == "RGBA"
    result = detector(photo)
    assert result.pose_image.size == photo.size == (512, 512)
    assert result.keypoints.shape == (result.people, 18, 2) and result.people >= 1
    on_white = Image.alpha_composite(Image.new("RGBA", photo.size, "white"), photo).convert("RGB")
    np.testing.assert_array_equal(detector(on_white).keypoints, result.keypoints)
    assert not np.array_equal(detector(photo.convert("RGB")).keypoints, result.keypoints)


def test_real_file_names_load_with_from_pretrained(detector, tmp_path):
    balanced = BODY_MODES["balanced"]
    det_path, pose_path = (Path(p) for p in detector.source.split(", "))
    shutil.copy(det_path, tmp_path / balanced.det_file)
    shutil.copy(pose_path, tmp_path / balanced.pose_file)
    loaded = PoseDetector.from_pretrained(tmp_path)
    assert isinstance(loaded.det_model, rtmlib.YOLOX) and not loaded.random_weights
    image = noise_image(64, 48)
    np.testing.assert_array_equal(loaded(image).keypoints, detector(image).keypoints)


def test_draw_openpose_pixels_and_fit():
    keypoints, scores = one_limb()
    assert_one_limb_drawn(draw_openpose(keypoints, scores, (64, 64)))
    # 1024 px short side: strokes of 8 px instead of 4
    big = np.asarray(draw_openpose(keypoints * 16, scores, (1024, 1024)))
    assert big[512 + 7, 512].tolist() == [153, 0, 0] and big[512 + 10, 512].tolist() == [0, 0, 0]
    # fitting a 96×64 canvas into 64×64: scale 2/3, centred vertically (offset 32/3 px)
    result = PoseResult.from_keypoints(keypoints, scores, (96, 64))
    fitted = result.fitted(64, 64)
    np.testing.assert_allclose(fitted.keypoints[0, 1], [20 * 2 / 3, 32 * 2 / 3 + 32 / 3], rtol=1e-6)
    assert fitted.pose_image.size == (64, 64) and result.fitted(96, 64) is result
    empty = PoseResult.from_keypoints(np.zeros((0, 18, 2)), np.zeros((0, 18)), (32, 16))
    assert empty.people == 0 and np.asarray(empty.pose_image).max() == 0


# ----------------------------------------------------------------------------------------- pose → image


def test_tiny_controlnet_matches_the_unet(stage, sdxl):
    controlnet = stage.controlnet
    assert isinstance(controlnet, ControlNetModel)
    assert controlnet.config.cross_attention_dim == sdxl.pipe.unet.config.cross_attention_dim
    assert tuple(controlnet.config.conditioning_embedding_out_channels) == (16, 32)  # tiny VAE: factor 2
    assert controlnet.controlnet_mid_block.weight.abs().sum() > 0  # zero convs re-initialised


def test_pipeline_gets_the_detectors_pose_image(stage, detector, pipeline_calls):
    reference = noise_image(64, 64)
    out = stage(params(), reference, seed=11)
    expected = detector(reference)
    (call,) = pipeline_calls
    assert call["image"].size == (64, 64)
    np.testing.assert_array_equal(np.asarray(call["image"]), np.asarray(expected.pose_image))
    np.testing.assert_array_equal(out.keypoints, expected.keypoints)
    assert out.people == expected.people == 2 and call["controlnet_conditioning_scale"] == 1.0

    wide = noise_image(96, 64, seed=1)  # fitted into 64×64: scale 2/3, offset (0, 32/3)
    out = stage(params(), wide, seed=11)
    raw = detector(wide)
    np.testing.assert_array_equal(np.asarray(pipeline_calls[1]["image"]), np.asarray(raw.fitted(64, 64).pose_image))
    np.testing.assert_allclose(out.keypoints, raw.keypoints * (2 / 3) + [0, 32 / 3], rtol=1e-5, atol=1e-4)


def test_hand_made_pose_reaches_the_pipeline(stage, sdxl, pipeline_calls):
    fixed = PoseToImage(sdxl, stage.controlnet, FixedDetector(*one_limb()), source="test", random_weights=True)
    out = fixed(params(), noise_image(64, 64), seed=3)
    assert_one_limb_drawn(pipeline_calls[0]["image"])
    assert_one_limb_drawn(out.pose_image)
    assert out.people == 1


def test_strength_seed_and_samples(stage):
    reference = noise_image(64, 64)
    weak = stage(params(strength=0.0), reference, seed=5).images[0]
    strong = stage(params(strength=1.0), reference, seed=5).images[0]
    assert weak.seed == strong.seed == 5 and png(weak.image) != png(strong.image)

    out = stage(params(samples=2), reference, seed=5)
    assert [g.seed for g in out.images] == [5, 6]
    assert png(out.images[0].image) == png(strong.image)  # same seed, same bytes
    second = stage(params(), reference, seed=6).images[0]
    assert png(out.images[1].image) == png(second.image) != png(out.images[0].image)


def test_size_sampler_and_schedule_reach_the_pipeline(stage, pipeline_calls):
    out = stage(params(sampler="K_DPMPP_2M", scheduler="karras", width=128, height=64), noise_image(64, 64), seed=2)
    assert out.images[0].image.size == out.pose_image.size == (128, 64)
    assert (pipeline_calls[0]["width"], pipeline_calls[0]["height"]) == (128, 64)
    scheduler = pipeline_calls[0]["pipe"].scheduler
    assert isinstance(scheduler, DPMSolverMultistepScheduler) and scheduler.config.use_karras_sigmas
    assert scheduler is not stage.sdxl.pipe.scheduler
    with pytest.raises(InvalidInputError, match="karras"):
        stage(params(sampler="ddim", scheduler="karras"), noise_image(64, 64), seed=2)


def test_no_person_still_generates_with_a_black_pose(stage, sdxl, pipeline_calls, caplog):
    nobody = PoseToImage(sdxl, stage.controlnet, FixedDetector(np.zeros((0, 18, 2)), np.zeros((0, 18))),
                         source="test", random_weights=True)
    with caplog.at_level(logging.INFO, logger="lift3d.stages.sdxl.pose_to_image"):
        out = nobody(params(), noise_image(64, 64), seed=4)
    assert out.people == 0 and out.keypoints.shape == (0, 18, 2)
    assert np.asarray(pipeline_calls[0]["image"]).max() == 0
    assert len(out.images) == 1 and out.images[0].image.size == (64, 64)
    assert "no person detected" in caplog.text
    with pytest.raises(InvalidInputError, match="image"):
        nobody(params(), "not an image", seed=4)


def test_from_pretrained_loads_local_files_or_fails_fast(stage, sdxl, detector, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=BODY_MODES["balanced"].det_file):
        PoseToImage.from_pretrained(detector_dir=tmp_path / "empty", sdxl=sdxl)
    assert time.perf_counter() - start < 2.0

    balanced = BODY_MODES["balanced"]
    for path, name in zip(detector.source.split(", "), (balanced.det_file, balanced.pose_file)):
        shutil.copy(path, tmp_path / name)
    (tmp_path / "controlnet").mkdir()
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="config.json missing"):
        PoseToImage.from_pretrained(tmp_path / "controlnet", tmp_path, sdxl=sdxl)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        PoseToImage.from_pretrained(pose_to_image.DEFAULT_CONTROLNET, tmp_path, sdxl=sdxl)
    assert time.perf_counter() - start < 4.0

    stage.controlnet.save_pretrained(tmp_path / "saved")
    loaded = PoseToImage.from_pretrained(tmp_path / "saved", tmp_path, sdxl=sdxl)
    assert not loaded.random_weights and loaded.controlnet.dtype == sdxl.pipe.unet.dtype
    original = stage.controlnet.state_dict()
    assert all(torch.equal(value, original[name]) for name, value in loaded.controlnet.state_dict().items())


def test_hub_selection_keeps_a_controlnets_root_weights():
    thibaud = ["config.json", "diffusion_pytorch_model.bin", "OpenPoseXL2.safetensors",
               "control-lora-openposeXL2-rank256.safetensors", "README.md", "out_ballerina.png"]
    assert select_hub_files(thibaud) == ["config.json", "diffusion_pytorch_model.bin"]
    xinsir = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model_twins.safetensors",
              "diffusion_pytorch_model.fp16.safetensors"]
    assert select_hub_files(xinsir) == ["config.json", "diffusion_pytorch_model.safetensors"]
