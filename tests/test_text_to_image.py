"""SDXL text-to-image stage: in-memory tokenizer, seeded tiny pipeline, save/load, Hub resolution errors (CPU)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from lift3d.errors import InvalidInputError, ModelNotFoundError
from lift3d.stages.loading import locate_pretrained, resolve_pretrained, select_hub_files
from lift3d.stages.sdxl.text_to_image import TextToImage
from lift3d.stages.tiny import tiny_clip_tokenizer

PROMPT = "a wooden toy robot"


@pytest.fixture(scope="module")
def t2i() -> TextToImage:
    return TextToImage.tiny(seed=0)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ---------------------------------------------------------------------------------------------------- tokenizer
def test_tiny_tokenizer_gives_word_and_character_tokens():
    tokenizer = tiny_clip_tokenizer()
    ids = tokenizer(PROMPT).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "wooden</w>", "toy</w>", "robot</w>", "<|endoftext|>",
    ]
    assert len(set(ids)) == 6 and ids.count(tokenizer.unk_token_id) == 1  # only the closing <|endoftext|>
    assert tiny_clip_tokenizer()(PROMPT).input_ids == ids  # deterministic across builds
    # unknown words fall back to byte-level characters, never to <unk>; case and spaces are normalised
    zebra = tokenizer("A  Zebra!").input_ids
    assert tokenizer.convert_ids_to_tokens(zebra)[1:-1] == ["a</w>", "z", "e", "b", "r", "a</w>", "!</w>"]
    assert tokenizer.decode(zebra, skip_special_tokens=True) == "a zebra !"
    assert len(tokenizer(PROMPT, padding="max_length", max_length=77).input_ids) == 77


# --------------------------------------------------------------------------------------------------- tiny SDXL
def test_tiny_is_deterministic_and_leaves_global_rng_alone(t2i, caplog):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with caplog.at_level(logging.WARNING, logger="lift3d.stages.sdxl.text_to_image"):
        again = TextToImage.tiny(seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    assert any("random weights" in record.getMessage() for record in caplog.records)
    assert again.random_weights is True and again.source == "tiny(seed=0)"
    for a, b in zip(t2i.pipe.unet.parameters(), again.pipe.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    other = TextToImage.tiny(seed=1)
    assert not torch.equal(next(t2i.pipe.text_encoder.parameters()), next(other.pipe.text_encoder.parameters()))


def test_same_seed_same_image_different_seed_differs(t2i):
    image = t2i(PROMPT, seed=7, num_inference_steps=4)
    assert image.mode == "RGB" and image.size == (64, 64) == (t2i.default_size, t2i.default_size)
    same = t2i(PROMPT, seed=7, num_inference_steps=4)
    other = t2i(PROMPT, seed=8, num_inference_steps=4)
    assert np.array_equal(_pixels(image), _pixels(same))
    assert np.abs(_pixels(image) - _pixels(other)).mean() > 1.0
    negative = t2i(PROMPT, "blurry", seed=7, num_inference_steps=4)
    assert not np.array_equal(_pixels(image), _pixels(negative))
    assert t2i(PROMPT, seed=7, num_inference_steps=2, height=64, width=96).size == (96, 64)


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": "  "}, "non-empty"),
    ({"height": 65}, "multiple of 8"),
    ({"width": 4096}, "multiple of 8"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": 0.5}, "guidance_scale"),
])
def test_check_inputs_rejects_bad_arguments(t2i, kwargs, match):
    args = {"prompt": PROMPT, "seed": 0, "num_inference_steps": 1, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        t2i(**args)


def test_saved_tiny_pipeline_loads_with_from_pretrained(t2i, tmp_path):
    t2i.save_pretrained(tmp_path / "sdxl")
    loaded = TextToImage.from_pretrained(tmp_path / "sdxl")
    assert loaded.random_weights is False and loaded.source == str(tmp_path / "sdxl")
    assert loaded.pipe.unet.dtype == torch.float32
    assert loaded.pipe.tokenizer(PROMPT).input_ids == t2i.pipe.tokenizer(PROMPT).input_ids
    a, b = loaded(PROMPT, seed=3, num_inference_steps=3), t2i(PROMPT, seed=3, num_inference_steps=3)
    assert np.abs(_pixels(a) - _pixels(b)).max() <= 1  # same weights; last-bit float differences at most


# ------------------------------------------------------------------------------------------- model resolution
def test_missing_model_raises_fast(empty_hub_cache):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        TextToImage.from_pretrained("lift3d-test/no-such-sdxl")
    assert time.monotonic() - start < empty_hub_cache.limit_s
    message = str(info.value)
    assert "lift3d-test/no-such-sdxl" in message and str(empty_hub_cache.hub_dir) in message
    assert "huggingface-cli download lift3d-test/no-such-sdxl" in message and "HF_HOME" in message
    assert ("HF_HUB_OFFLINE is set" in message) == empty_hub_cache.offline


def test_cached_hub_id_resolves_without_network(monkeypatch, tmp_path):
    """A Hub id present in the HF cache (refs/main → snapshots/<commit>) resolves offline and online alike."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    repo = tmp_path / "hf" / "hub" / "models--lift3d-test--cached-sdxl"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    start = time.monotonic()
    assert locate_pretrained("lift3d-test/cached-sdxl") == snapshot
    assert resolve_pretrained("lift3d-test/cached-sdxl") == snapshot
    assert time.monotonic() - start < 2.0
    with pytest.raises(ModelNotFoundError, match="vae"):
        locate_pretrained("lift3d-test/cached-sdxl", required=("model_index.json", "vae"))
    with pytest.raises(ModelNotFoundError, match="not in the local HF cache"):
        locate_pretrained("lift3d-test/not-cached")


def test_local_directory_without_model_index_is_reported(tmp_path):
    with pytest.raises(ModelNotFoundError, match="model_index.json missing"):
        TextToImage.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no such local directory"):
        TextToImage.from_pretrained(str(tmp_path / "absent"))


def test_select_hub_files_keeps_one_weight_format_per_component():
    files = [
        "model_index.json", "sd_xl_base_1.0.safetensors", "README.md",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/openvino_model.bin", "text_encoder/model.safetensors", "text_encoder/model.onnx",
        "text_encoder/flax_model.msgpack", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "clip_camera_projection/diffusion_pytorch_model.bin", "scheduler/scheduler_config.json",
    ]
    assert select_hub_files(files) == [
        "model_index.json", "unet/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors", "clip_camera_projection/diffusion_pytorch_model.bin",
    ]
