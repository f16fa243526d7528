"""The image endpoints end to end on the tiny models (real diffusers/compel/rtmlib classes, random weights): what
comes back over HTTP has the asked-for size, the same seed gives the same bytes, and each control changes the
image. The stages' own tests (test_text_to_image_stage, test_regions, test_pose) check the recipes in detail."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lift3d.pipeline.image_generation import ImageModels, pose_loader
from lift3d.presets import get_preset
from lift3d.service.config import ServiceConfig
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_images, build_service
from lift3d.service.state import open_state
from lift3d.stages.sdxl.text_to_image import TextToImage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    config = ServiceConfig(preset="tiny", store_url=str(tmp / "store"), database_url=f"sqlite:///{tmp / 'db'}",
                           auth=False)
    state = open_state(config)
    models = ImageModels(TextToImage.tiny(seed=0), pose=pose_loader(get_preset("tiny")))
    api = build_api(config, state, build_service(config, state, lambda j: None), ServiceMetrics(),
                    images=build_images(config, state, models))
    yield TestClient(api)
    state.close()


def decode(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"), dtype=np.int16)


def mask_png(width: int, height: int, box: tuple[int, int, int, int]) -> str:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BODY = {"text_prompts": [{"text": "a wooden toy robot", "weight": 1}], "steps": 2, "seed": 11, "height": 64,
        "width": 64}


def t2i(client, **changes) -> list[dict]:
    response = client.post("/v1/generation/text-to-image", json={**BODY, **changes})
    assert response.status_code == 200, response.text
    return response.json()["artifacts"]


def test_text_to_image_sizes_seeds_and_controls(client):
    first = t2i(client)
    assert decode(first[0]["base64"]).shape == (64, 64, 3) and first[0]["seed"] == 11
    assert t2i(client)[0]["base64"] == first[0]["base64"]  # same seed, same device: same bytes
    assert decode(t2i(client, width=128)[0]["base64"]).shape == (64, 128, 3)
    two = t2i(client, samples=2)
    assert [a["seed"] for a in two] == [11, 12] and two[0]["base64"] == first[0]["base64"]
    assert t2i(client, seed=12)[0]["base64"] == two[1]["base64"]
    baseline = decode(first[0]["base64"])
    for change in ({"seed": 99},
                   {"text_prompts": [*BODY["text_prompts"], {"text": "a white cat statue", "weight": -1}]},
                   {"sampler": "dpmpp_2m"}):
        assert np.abs(decode(t2i(client, **change)[0]["base64"]) - baseline).mean() > 0.5, change
    # with 2 steps Karras sigmas are the normal ones (both span the same σ_max..σ_min); with 4 they differ
    normal4 = decode(t2i(client, steps=4)[0]["base64"])
    assert np.abs(decode(t2i(client, steps=4, scheduler="karras")[0]["base64"]) - normal4).mean() > 0.5
    png = client.post("/v1/generation/text-to-image", json=BODY, headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and png.headers["Seed"] == "11"
    assert png.content == base64.b64decode(first[0]["base64"])


def test_img2img_keeps_more_of_the_init_image_at_higher_strength(client):
    init = Image.new("RGB", (64, 64), (250, 20, 20))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    init_b64 = base64.b64encode(buffer.getvalue()).decode()
    distances = {}
    for strength in (0.2, 0.9):
        out = decode(t2i(client, init_image=init_b64, image_strength=strength, steps=4)[0]["base64"])
        distances[strength] = np.abs(out - np.asarray(init, dtype=np.int16)).mean()
    assert distances[0.9] < distances[0.2]
    unchanged = decode(t2i(client, init_image=init_b64, image_strength=1.0)[0]["base64"])
    assert np.array_equal(unchanged, np.asarray(init, dtype=np.int16))


def test_regions_endpoint(client):
    body = {"bg_prompt": "a photo", "fg_prompt": ["a red toy robot"], "fg_nprompt": [""],
            "masks": [mask_png(64, 64, (16, 16, 48, 48))], "width": "64", "height": "64", "ddim_steps": "3",
            "bootstrapping": "1", "seed": "5"}
    first = client.post("/v1/generation/text-to-image/regions", json=body)
    assert first.status_code == 200, first.text
    artifact = first.json()["artifacts"][0]
    assert artifact["seed"] == 5 and decode(artifact["base64"]).shape == (64, 64, 3)
    again = client.post("/v1/generation/text-to-image/regions", json=body).json()["artifacts"][0]
    assert again["base64"] == artifact["base64"]
    empty = client.post("/v1/generation/text-to-image/regions", json={**body, "masks": [mask_png(64, 64, (0, 0, 0, 0))]})
    assert empty.status_code == 422 and "masks[0]" in empty.json()["errors"][0]


def test_pose_endpoint(client):
    photo = Image.open(EXAMPLES / "anya_front_rgba.png").convert("RGB").resize((64, 96))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    body = {"prompt": "a knight", "image": base64.b64encode(buffer.getvalue()).decode(), "num_inference_steps": 2,
            "seed": 3, "samples": 2, "width": 64, "height": 64, "base64": True}
    response = client.post("/v1/generation/text-to-image/pose", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [a["seed"] for a in data["artifacts"]] == [3, 4]
    assert Image.open(io.BytesIO(base64.b64decode(data["image"]))).size == (64, 64)
    jpeg = client.post("/v1/generation/text-to-image/pose", json={**body, "base64": False, "samples": 1})
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).size == (64, 64)
    weaker = client.post("/v1/generation/text-to-image/pose", json={**body, "strength": 0.0}).json()
    assert weaker["artifacts"][0]["base64"] != data["artifacts"][0]["base64"]
