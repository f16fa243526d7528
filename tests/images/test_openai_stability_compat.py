"""OpenAI's image API and Stability's v2beta on the tiny SDXL, over real HTTP (uvicorn on a free port, API keys on):
the unmodified ``openai`` package talks to ``/v1/images/*`` and ``/v1/models``; Stability has no official Python
client for v2beta, so its routes are called with ``httpx`` as its API reference shows. Both map onto the v1
text-to-image service: the same seed and size give the same bytes as ``POST /v1/generation/text-to-image``."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from lift3d.io.media_types import GLB
from lift3d.params import GenerationParams
from lift3d.pipeline.image_generation import ImageModels
from lift3d.presets import PRESETS
from lift3d.service.api.compat.common import InvalidSignature
from lift3d.service.api.compat.openai import SDXL_SOURCES
from lift3d.service.api.compat.stability import STYLE_WEIGHT, aspect_size, styled_prompts
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.store import JobOutcome, JobRecord
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_images, build_service
from lift3d.service.state import open_state
from lift3d.stages.sdxl.text_to_image import TextToImage
from support.net import serve_in_thread

FAST = {"steps": 2}
"""lift3d's own field, riding along in the OpenAI body (``extra_body``): two denoising steps keep the test fast."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, API key, service state) of a keyed service with the tiny SDXL in process."""
    tmp = tmp_path_factory.mktemp("compat")
    config = ServiceConfig(preset="tiny", store_url=str(tmp / "store"), database_url=f"sqlite:///{tmp / 'db'}",
                           default_rate_limit_per_min=10_000)
    state = open_state(config)
    key = state.keys.create(name="compat", credits=10_000)
    images = build_images(config, state, ImageModels(TextToImage.tiny(seed=0)))
    api = build_api(config, state, build_service(config, state, lambda job_id: None), ServiceMetrics(),
                    images=images)
    with serve_in_thread(api) as url:
        yield url, key, state
    state.close()


@pytest.fixture(scope="module")
def client(server):
    url, key, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key=key.key, max_retries=0)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


RED = png(Image.new("RGB", (64, 64), (200, 10, 10)))


# ------------------------------------------------------------------------------------------------ OpenAI
def test_generate_returns_pngs_of_the_requested_size_as_v1_would(client, server):
    url, key, _ = server
    answer = client.images.generate(model="sdxl", prompt="a wooden toy robot", size="128x64", n=2,
                                    response_format="b64_json", extra_body={**FAST, "seed": 7})
    images = [base64.b64decode(item.b64_json) for item in answer.data]
    assert [Image.open(io.BytesIO(data)).format for data in images] == ["PNG", "PNG"]
    assert [Image.open(io.BytesIO(data)).size for data in images] == [(128, 64), (128, 64)]
    assert [item.model_extra["seed"] for item in answer.data] == [7, 8] and answer.size == "128x64"
    assert np.abs(pixels(images[0]) - pixels(images[1])).mean() > 1  # two seeds, two images
    v1 = httpx.post(url + "/v1/generation/text-to-image", headers={"Authorization": f"Bearer {key.key}"}, json={
        "text_prompts": [{"text": "a wooden toy robot"}], "width": 128, "height": 64, "seed": 7, **FAST}, timeout=60)
    assert base64.b64decode(v1.json()["artifacts"][0]["base64"]) == images[0]
    again = client.images.generate(model="tiny", prompt="a wooden toy robot", size="128x64",
                                   response_format="b64_json", extra_body={**FAST, "seed": 8})
    assert base64.b64decode(again.data[0].b64_json) == images[1]  # the stage's own id is the same model


def test_url_answers_download_without_the_key_until_tampered(client):
    answer = client.images.generate(prompt="a lighthouse", response_format="url", output_format="jpeg",
                                    extra_body={**FAST, "seed": 3})
    link = answer.data[0].url
    fetched = httpx.get(link, timeout=60)  # no Authorization header: the signature is the credential
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
    refused = httpx.get(tampered, timeout=60)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == InvalidSignature.name
    assert httpx.get(link.split("?")[0], timeout=60).status_code == 403  # unsigned


def test_edit_repaints_only_the_transparent_pixels_of_the_mask(client):
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: edit it
    answer = client.images.edit(image=("red.png", RED, "image/png"), mask=("mask.png", png(mask), "image/png"),
                                prompt="a blue ball", extra_body={**FAST, "seed": 5})
    out = pixels(base64.b64decode(answer.data[0].b64_json))
    assert out.shape == (64, 64, 3)
    assert np.abs(out[:, 32:] - [200, 10, 10]).max() == 0  # kept exactly (pasted back through the mask)
    assert np.abs(out[:, :32] - [200, 10, 10]).mean() > 20  # repainted
    rgba = Image.new("RGBA", (64, 64), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 64, 16))  # no mask: the image's own transparent top rows are edited
    own = pixels(base64.b64decode(client.images.edit(image=("a.png", png(rgba), "image/png"), prompt="sky",
                                                     extra_body={**FAST, "seed": 5}).data[0].b64_json))
    assert np.abs(own[16:] - [200, 10, 10]).max() == 0 and np.abs(own[:16] - [200, 10, 10]).mean() > 20
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=("red.png", RED, "image/png"), mask=("m.png", RED, "image/png"), prompt="x",
                           extra_body=FAST)
    assert refused.value.body["param"] == "mask" and "alpha" in refused.value.body["message"]


def test_models_list_and_errors_in_openai_shape(client, server):
    listed = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [("sdxl", "model", "lift3d"),
                                                                   ("tiny", "model", "lift3d")]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dall-e-3", prompt="a robot", extra_body=FAST)
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    assert "sdxl" in unknown.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(prompt="a robot", n=9, extra_body=FAST)
    assert too_many.value.body["param"] == "n" and too_many.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(prompt="a robot", size="100x64", extra_body=FAST)
    assert bad_size.value.body["param"] == "size" and "multiple of 64" in bad_size.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server[0] + "/v1", api_key="sk-wrong", max_retries=0).models.list()


# ------------------------------------------------------------------------------------------------ Stability
def stability(server, path: str, accept: str = "image/*", files=None, **data) -> httpx.Response:
    url, key, _ = server
    data = {"steps": "2", **data}  # lift3d's own field: two denoising steps keep the test fast
    return httpx.post(url + "/v2beta/stable-image/generate/" + path, files=files or {"none": ""}, data=data,
                      headers={"authorization": f"Bearer {key.key}", "accept": accept}, timeout=60)


def test_core_answers_bytes_with_headers_or_json(server):
    raw = stability(server, "core", prompt="a lighthouse", aspect_ratio="21:9", seed="4")
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "image/png" and raw.headers["finish-reason"] == "SUCCESS"
    assert raw.headers["seed"] == "4" and Image.open(io.BytesIO(raw.content)).size == (128, 64)
    answer = stability(server, "core", accept="application/json", prompt="a lighthouse", aspect_ratio="21:9",
                       seed="4")
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["seed"] == 4 and body["finish_reason"] == "SUCCESS" and base64.b64decode(body["image"]) == raw.content
    styled = stability(server, "core", prompt="a lighthouse", aspect_ratio="21:9", seed="4", style_preset="origami",
                       output_format="webp")
    assert styled.headers["content-type"] == "image/webp"
    assert np.abs(pixels(styled.content) - pixels(raw.content)).mean() > 1  # the style changed the prompt


def test_sd3_image_to_image_models_and_errors(server):
    kept = stability(server, "sd3", files={"image": ("red.png", RED, "image/png")}, prompt="a ball",
                     mode="image-to-image", strength="0", model="sd3.5-large")
    assert kept.status_code == 200 and np.abs(pixels(kept.content) - [200, 10, 10]).max() == 0  # strength 0: kept
    changed = stability(server, "sd3", files={"image": ("red.png", RED, "image/png")}, prompt="a ball",
                        mode="image-to-image", strength="1", cfg_scale="5", seed="9", output_format="jpeg")
    assert changed.headers["content-type"] == "image/jpeg" and changed.headers["seed"] == "9"
    assert np.abs(pixels(changed.content) - [200, 10, 10]).mean() > 20
    unknown = stability(server, "sd3", prompt="a ball", model="sd9-huge")
    assert unknown.status_code == 422 and unknown.json()["name"] == "invalid_parameters"
    assert "model: 'sd9-huge'" in unknown.json()["errors"][0] and "sd3.5-large" in unknown.json()["errors"][0]
    missing = stability(server, "sd3", prompt="a ball", mode="image-to-image", strength="0.5")
    assert missing.status_code == 422 and "image" in missing.json()["errors"][0]
    assert stability(server, "core", prompt="a ball", cfg_scale="5").status_code == 422  # core has no cfg_scale
    empty = stability(server, "core", prompt="", style_preset="anime")  # the style's words are no prompt
    assert empty.status_code == 422 and empty.json()["errors"][0].startswith("prompt:")


def test_results_of_a_3d_job_202_then_the_glb(server):
    url, key, state = server
    record = state.jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=5), owner_id=key.id))
    headers = {"authorization": f"Bearer {key.key}"}
    running = httpx.get(f"{url}/v2beta/results/{record.id}", headers=headers, timeout=60)
    assert running.status_code == 202 and running.json()["status"] == "in-progress"
    state.store.put(record.prefix + "model.glb", b"glTF-bytes")
    state.jobs.begin_attempt(record.id, "w")
    state.jobs.succeed(record.id, JobOutcome(main_key="model.glb", content_type=GLB, artifacts=["model.glb"]),
                       attempt=1)
    done = httpx.get(f"{url}/v2beta/results/{record.id}", headers={**headers, "accept": "*/*"}, timeout=60)
    assert done.status_code == 200 and done.content == b"glTF-bytes" and done.headers["content-type"] == GLB
    assert done.headers["seed"] == "5" and done.headers["finish-reason"] == "SUCCESS"
    body = httpx.get(f"{url}/v2beta/results/{record.id}", headers={**headers, "accept": "application/json"},
                     timeout=60).json()
    assert base64.b64decode(body["result"]) == b"glTF-bytes" and body["content_type"] == GLB and body["seed"] == 5
    other = state.keys.create(name="other", credits=1)
    assert httpx.get(f"{url}/v2beta/results/{record.id}",
                     headers={"authorization": f"Bearer {other.key}"}, timeout=60).status_code == 404


def test_the_served_model_ids_are_the_presets_sources():
    assert SDXL_SOURCES == {name: preset.text_to_image for name, preset in PRESETS.items()}


def test_aspect_sizes_and_styles():
    assert [aspect_size(r, 1024) for r in ("1:1", "16:9", "21:9", "2:3", "4:5", "9:16")] == [
        (1024, 1024), (1344, 768), (1536, 640), (832, 1280), (896, 1152), (768, 1344)]
    assert styled_prompts("a cat", "dogs", "pixel-art") == [
        {"text": "a cat", "weight": 1.0}, {"text": "pixel art, 16-bit, retro game sprite", "weight": STYLE_WEIGHT},
        {"text": "dogs", "weight": -1.0}, {"text": "smooth, photo, 3d render", "weight": -1.0}]
    assert styled_prompts("a cat", "", None) == [{"text": "a cat", "weight": 1.0}]
