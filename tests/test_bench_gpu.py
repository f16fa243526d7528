"""The GPU-readiness benchmark (``benchmarks/bench_gpu.py``): its CPU smoke run covers every part, its full-size
architectures have the published sizes, and asking for a missing GPU fails in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_gpu.py"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[dict, str]:
    """``bench_gpu.py --small --json PATH`` in a subprocess: (the JSON, stdout)."""
    path = tmp_path_factory.mktemp("bench_gpu") / "nested" / "small.json"
    proc = _run("--small", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(path.read_text()), proc.stdout


@pytest.mark.slow
def test_small_run_times_every_part_on_the_cpu(small_run):
    result, _ = small_run
    assert result["device"] == "cpu" and result["mode"] == "small"
    rows = result["rows"]
    assert {row["part"] for row in rows} == {1, 2, 3, 4, 6}
    for row in rows:
        assert row["device"] == "cpu" and row["dtype"] == "float32"
        assert row["wall_s"] > 0 and row["it_per_s"] > 0 and all(t > 0 for t in row["runs_s"]), row["name"]
        assert row["peak_vram_gib"] is None  # no CUDA: no VRAM figure rather than a made-up one
    phases = result["phases"]
    assert [row["detail"]["batch"] for row in rows if row["part"] == 2] == [p["batch"] for p in phases]
    (generate,) = [row for row in rows if row["part"] == 4]
    assert {"model.glb", "model_textured.glb", "metadata.json"} <= set(generate["detail"]["artifacts"])
    assert generate["detail"]["nerf_steps"] == 4 and generate["detail"]["random_weights"] is True


@pytest.mark.slow
def test_small_run_times_the_feed_forward_model_and_its_asset(small_run):
    """Part 6 on the CPU: the tiny TripoSR's forward and the synchronous endpoint's whole asset, per image."""
    result, stdout = small_run
    field, asset = [row for row in result["rows"] if row["part"] == 6]
    assert (field["detail"]["what"], asset["detail"]["what"]) == ("field", "asset")
    assert field["unit"] == asset["unit"] == "images/s"
    assert field["detail"]["input_size"] == 64  # TripoSRConfig.tiny's cond_image_size
    assert asset["wall_s"] > field["wall_s"] > 0  # the asset includes the forward, then marching cubes and xatlas
    assert asset["detail"]["glb_bytes"] > 0 and asset["detail"]["faces"] > 0
    assert set(asset["detail"]["stage_s"]) >= {"feedforward", "mesh_export"}
    assert result["models"]["feedforward"]["source"] == "tiny"
    assert sum(result["models"]["feedforward"]["parameters"].values()) > 0
    assert "fast asset GLB" in stdout


@pytest.mark.slow
def test_small_run_compares_batched_jobs_with_serial_calls(small_run):
    result, stdout = small_run
    jobs = [row for row in result["rows"] if row["part"] == 3]
    assert {row["detail"]["mode"] for row in jobs} == {"batched", "serial"}
    assert len(jobs) == 2 * len(result["phases"])
    for row in jobs:
        assert row["detail"]["jobs"] == result["settings"]["jobs"] == 4
        assert row["detail"]["throughput_ratio"] > 0
    assert result["jobs_throughput_ratio"] > 0
    assert "the throughput" in stdout


@pytest.mark.slow
def test_small_run_says_loudly_that_weights_are_random(small_run):
    result, stdout = small_run
    assert result["random_weights"] is True
    assert "RANDOM WEIGHTS" in result["warning"]
    assert stdout.count("RANDOM WEIGHTS") >= 2  # above and below the table


@pytest.mark.slow
def test_small_run_checks_the_memory_model(small_run):
    """Part 5 on the CPU: the memory model's tiny items measured by the CPU allocator and modelled, side by side."""
    result, stdout = small_run
    bench = _load("bench_gpu")
    check = result["memory_check"]
    assert [row["name"] for row in check] == list(bench.SMALL_MEMORY_ITEMS)
    for row in check:
        assert row["measured_by"] == "CPU allocator" and row["measured_gib"] > 0
        assert abs(row["ratio"] - 1) <= 0.2, row
    assert "memory model item" in stdout and "modelled GiB" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: nothing is missing")
def test_missing_cuda_ends_with_one_clear_line():
    proc = _run("--device", "cuda", timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--small" in lines[0]


# Parameter counts of the architectures built from fullsize_models' configs, on the meta device (no memory).
# Published sizes they must round to: SDXL UNet 2.6B and text encoders 817M together (Podell et al. 2023,
# table 1), SD 1.x UNet 860M (CompVis model card; +11 520 for Zero123's 4 extra input channels), KL-f8 VAE
# 83.7M, CLIP ViT-L/14 vision tower 304M with its projection, TripoSR 419M (its fp32 model.ckpt is 1.68 GB).
FULLSIZE_PARAMETERS = {
    "sdxl_unet": 2_567_463_684,
    "sdxl_vae": 83_653_863,
    "sdxl_text_encoder": 123_060_480,
    "sdxl_text_encoder_2": 694_659_840,
    "zero123_unet": 859_532_484,
    "sd_vae": 83_653_863,
    "zero123_image_encoder": 303_966_208,
    "clip_camera_projection": 772 * 768 + 768,
    "triposr": 419_275_628,
}


def test_fullsize_architectures_have_the_published_sizes():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig
    from transformers import CLIPVisionModelWithProjection

    from lift3d.stages.feedforward.triposr import TripoSRConfig, TripoSRNetwork
    from lift3d.stages.tiny import tiny_clip_tokenizer
    from lift3d.stages.zero123 import CLIPCameraProjection

    fs = _load("fullsize_models")
    tokenizer = tiny_clip_tokenizer()

    def text_encoder(cls, spec):
        return lambda: cls(CLIPTextConfig(**spec, bos_token_id=tokenizer.bos_token_id,
                                          eos_token_id=tokenizer.eos_token_id))

    factories = {
        "sdxl_unet": lambda: UNet2DConditionModel(**fs.SDXL_UNET),
        "sdxl_vae": lambda: AutoencoderKL(**fs.SDXL_VAE),
        "sdxl_text_encoder": text_encoder(CLIPTextModel, fs.SDXL_TEXT_ENCODER),
        "sdxl_text_encoder_2": text_encoder(CLIPTextModelWithProjection, fs.SDXL_TEXT_ENCODER_2),
        "zero123_unet": lambda: UNet2DConditionModel(**fs.ZERO123_UNET),
        "sd_vae": lambda: AutoencoderKL(**fs.SD_VAE),
        "zero123_image_encoder": lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**fs.ZERO123_IMAGE_ENCODER)),
        "clip_camera_projection": lambda: CLIPCameraProjection(embedding_dim=768, additional_embeddings=4),
        "triposr": lambda: TripoSRNetwork(TripoSRConfig.full()),
    }
    counts = {}
    for name, factory in factories.items():
        module = fs.build_module(factory, "meta", torch.float16, seed=0)
        assert all(p.device.type == "meta" and p.dtype == torch.float16 for p in module.parameters()), name
        counts[name] = fs.parameter_count(module)
    assert counts == FULLSIZE_PARAMETERS
    assert round(counts["sdxl_unet"] / 1e9, 1) == 2.6
    assert int((counts["sdxl_text_encoder"] + counts["sdxl_text_encoder_2"]) / 1e6) == 817
    assert len(tokenizer) <= fs.CLIP_VOCAB_SIZE  # every tiny token id has a row in the real embedding
    assert round(counts["triposr"] * 4 / 1e9, 2) == 1.68  # fp32 bytes


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fullsize_sds_step_runs_on_cuda(tmp_path):
    path = tmp_path / "gpu.json"
    proc = _run("--parts", "2", "--repeats", "1", "--warmup", "1", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(path.read_text())
    assert result["device"] == "cuda" and result["mode"] == "full" and result["random_weights"] is True
    assert result["models"]["zero123"]["parameters"]["unet"] == FULLSIZE_PARAMETERS["zero123_unet"]
    assert result["memory_check"] == []  # --parts 2 only
    for row in result["rows"]:
        assert row["dtype"] == "float16" and row["wall_s"] > 0
        assert row["peak_vram_gib"] >= row["resident_gib"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fullsize_feedforward_runs_on_cuda(tmp_path):
    path = tmp_path / "gpu.json"
    proc = _run("--parts", "6", "--repeats", "1", "--warmup", "1", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(path.read_text())
    assert sum(result["models"]["feedforward"]["parameters"].values()) == FULLSIZE_PARAMETERS["triposr"]
    field, asset = result["rows"]
    assert field["dtype"] == "float32" and field["detail"]["input_size"] == 512
    assert asset["detail"]["faces"] > 0 and asset["peak_vram_gib"] >= asset["resident_gib"] > 1.5  # fp32 weights
