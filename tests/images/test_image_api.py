"""The synchronous image endpoints over the whole HTTP stack (keys, credits, admission) with a stand-in generator:
bodies in (Stability JSON and multipart, the region API with numbers as strings, Segmind's pose body), answers out
(artifacts, PNG, JPEG), prices charged and given back. The tiny models behind the same routes are in
tests/images/test_image_endpoints_tiny.py."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lift3d.params.images import PoseParams, RegionParams, TextToImageParams
from lift3d.io.encoded import EncodedImage
from lift3d.io.image_calls import EncodedSample, PoseCall, RegionsCall, TextToImageCall
from lift3d.service.config import ServiceConfig
from lift3d.service.accounts.credits import estimate_credits
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_images, build_service
from lift3d.service.state import open_state


def png(colour, size=(8, 8), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FakeSDXL:
    """Answers each call with samples whose colour encodes the seed (seed + i for sample i)."""

    def __init__(self):
        self.calls = []
        self.fail_with: Exception | None = None

    def __call__(self, call):
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with
        count = getattr(call.params, "samples", 1)
        return [EncodedSample(EncodedImage.from_image(Image.new("RGB", (8, 8), ((call.seed + i) % 256, 0, 0))),
                              call.seed + i) for i in range(count)]


@pytest.fixture
def stack(tmp_path):
    config = ServiceConfig(preset="default", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", gpu_type="A10G",
                           default_rate_limit_per_min=1000, default_max_concurrent_jobs=1)
    state = open_state(config)
    sdxl = FakeSDXL()
    service = build_service(config, state, lambda job_id: None)
    api = build_api(config, state, service, ServiceMetrics(), images=build_images(config, state, sdxl))
    client = TestClient(api, raise_server_exceptions=False)
    yield config, state, client, sdxl
    state.close()


def bearer(key: str, **headers) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


BODY = {"text_prompts": [{"text": "a wooden toy robot", "weight": 1}, {"text": "blurry", "weight": -0.5}],
        "cfg_scale": 6, "steps": 20, "seed": 1234, "samples": 2, "height": 512, "width": 768, "sampler": "K_EULER"}


def test_text_to_image_json_is_priced_and_answers_artifacts(stack):
    config, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    response = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key))
    assert response.status_code == 200, response.text
    artifacts = response.json()["artifacts"]
    assert [a["seed"] for a in artifacts] == [1234, 1235] and {a["finishReason"] for a in artifacts} == {"SUCCESS"}
    assert Image.open(io.BytesIO(base64.b64decode(artifacts[1]["base64"]))).getpixel((0, 0)) == (1235 % 256, 0, 0)
    call = sdxl.calls[0]
    assert isinstance(call, TextToImageCall) and call.init_image is None
    assert call.params.sampler == "euler" and call.params.negative_prompts() == [("blurry", 0.5)]
    # price: default preset, text_to_image 2.0 + 0.45 GPU-s per step at 1024², × pixels × samples
    gpu_s = 2 * (2.0 + 0.45 * 20) * (512 * 768 / 1024**2)
    expected = estimate_credits("text-to-image", TextToImageParams(**BODY), "default", 1.006)
    assert expected == pytest.approx(gpu_s * 1.006 / 3600 / 0.01 * 1.25, abs=1e-3)
    assert float(response.headers["X-Remaining-Credits"]) == pytest.approx(10 - expected, abs=1e-3)
    assert state.keys.balance(key.id) == pytest.approx(10 - expected, abs=1e-3)


def test_accept_png_gives_the_one_image_with_seed_headers(stack):
    _, state, client, _ = stack
    key = state.keys.create(name="a", credits=10)
    body = {**BODY, "samples": 1}
    response = client.post("/v1/generation/text-to-image", json=body, headers=bearer(key.key, Accept="image/png"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["Seed"] == "1234" and response.headers["Finish-Reason"] == "SUCCESS"
    assert Image.open(io.BytesIO(response.content)).getpixel((0, 0)) == (1234 % 256, 0, 0)
    two = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key, Accept="image/png"))
    assert two.status_code == 422 and "samples" in two.json()["errors"][0]


def test_seed_zero_draws_one_and_echoes_it(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    response = client.post("/v1/generation/text-to-image", json={**BODY, "seed": 0, "samples": 1},
                           headers=bearer(key.key))
    seed = response.json()["artifacts"][0]["seed"]
    assert seed > 0 and sdxl.calls[0].seed == seed


def test_stability_multipart_img2img_and_mask(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    form = {"text_prompts[0][text]": "a robot", "text_prompts[0][weight]": "1", "text_prompts[1][text]": "dark",
            "text_prompts[1][weight]": "-1", "image_strength": "0.6", "steps": "10", "seed": "5",
            "mask_source": "MASK_IMAGE_BLACK"}
    files = {"init_image": ("init.png", png((0, 255, 0), (64, 64)), "image/png"),
             "mask_image": ("mask.png", png(255, (64, 64), "L"), "image/png")}
    response = client.post("/v1/generation/text-to-image", data=form, files=files, headers=bearer(key.key))
    assert response.status_code == 200, response.text
    call = sdxl.calls[0]
    assert call.params.image_strength == 0.6 and call.params.steps == 10 and call.seed == 5
    assert call.params.positive_prompts() == [("a robot", 1.0)] and call.params.negative_prompts() == [("dark", 1.0)]
    assert call.init_image.image.getpixel((3, 3)) == (0, 255, 0) and call.mask_image.image.size == (64, 64)


def test_bad_bodies_get_the_envelope_and_cost_nothing(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    cases = [
        ({**BODY, "height": 500}, "height"),
        ({**BODY, "sampler": "warp_drive"}, "sampler"),
        ({**BODY, "text_prompts": [{"text": "only negative", "weight": -1}]}, "positive weight"),
        ({**BODY, "mask_image": b64(png(255))}, "mask_image needs an init_image"),
        ({**BODY, "init_image": "not base64!"}, "base64"),
        ({**BODY, "init_image": b64(b"GIF89a....")}, "init_image"),
    ]
    for body, words in cases:
        response = client.post("/v1/generation/text-to-image", json=body, headers=bearer(key.key))
        assert response.status_code in (400, 422), (words, response.text)
        assert words in " ".join(response.json()["errors"]), (words, response.json())
    assert sdxl.calls == [] and state.keys.balance(key.id) == pytest.approx(10)


def test_a_failed_generation_returns_the_charge(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    sdxl.fail_with = RuntimeError("CUDA out of memory at 0x7f00 in /srv/app")
    response = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key))
    assert response.status_code == 500 and response.json()["name"] == "internal_error"
    assert "/srv/app" not in response.text and "0x7f00" not in response.text  # details stay in the log
    assert state.keys.balance(key.id) == pytest.approx(10)
    from lift3d.errors import InvalidInputError
    sdxl.fail_with = InvalidInputError("height: too small for this model")
    response = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key))
    assert response.status_code == 422 and response.json()["errors"] == ["height: too small for this model"]
    assert state.keys.balance(key.id) == pytest.approx(10)


def test_short_balance_is_402(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="poor", credits=0.001)
    response = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key))
    assert response.status_code == 402 and response.json()["name"] == "insufficient_credits"
    assert sdxl.calls == []


def test_image_requests_ignore_the_job_limit(stack):
    config, state, client, _ = stack
    key = state.keys.create(name="a", credits=1000)
    assert client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=bearer(key.key)).status_code == 202
    assert client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"},
                       headers=bearer(key.key)).status_code == 429  # the job limit is 1
    response = client.post("/v1/generation/text-to-image", json=BODY, headers=bearer(key.key))
    assert response.status_code == 200, response.text


def test_regions_take_the_region_api_body_with_string_numbers(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    mask = b64(png(255, (64, 64), "L"))
    body = {"bg_prompt": "a table", "bg_nprompt": "", "fg_prompt": ["a robot", "a cup"], "fg_nprompt": ["", ""],
            "masks": [mask, mask], "width": "512", "height": "512", "ddim_steps": "30", "bootstrapping": "10",
            "seed": "77"}
    response = client.post("/v1/generation/text-to-image/regions", json=body, headers=bearer(key.key))
    assert response.status_code == 200, response.text
    call = sdxl.calls[0]
    assert isinstance(call, RegionsCall) and call.seed == 77 and call.params.ddim_steps == 30
    assert response.json()["artifacts"][0]["seed"] == 77
    # price: 3 UNet passes per step (background + 2 regions) at 512²
    params = RegionParams(**body)
    gpu_s = (2.0 + 0.45 * 30 * 3) * 0.25
    assert estimate_credits("regions", params, "default", 1.006) == pytest.approx(gpu_s * 1.006 / 36 * 1.25, abs=1e-3)
    bad = client.post("/v1/generation/text-to-image/regions", json={**body, "masks": [mask]}, headers=bearer(key.key))
    assert bad.status_code == 422
    assert all(word in bad.json()["errors"][0] for word in ("fg_prompt: 2", "masks: 1"))
    broken = client.post("/v1/generation/text-to-image/regions", json={**body, "masks": [mask, "%%%"]},
                         headers=bearer(key.key))
    assert broken.status_code == 422 and "masks[1]" in broken.json()["errors"][0]


def test_pose_answers_jpeg_or_base64(stack):
    _, state, client, sdxl = stack
    key = state.keys.create(name="a", credits=10)
    body = {"prompt": "a knight", "image": b64(png((9, 9, 9), (64, 64))), "seed": 698845, "samples": 2,
            "strength": 0.8, "sampler": "dpmpp_2m", "scheduler": "sgm_uniform", "base64": False}
    response = client.post("/v1/generation/text-to-image/pose", json=body, headers=bearer(key.key))
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.headers["Seed"] == "698845" and response.content[:2] == b"\xff\xd8"
    call = sdxl.calls[0]
    assert isinstance(call, PoseCall) and call.params.strength == 0.8 and call.params.scheduler == "sgm_uniform"
    as_json = client.post("/v1/generation/text-to-image/pose", json={**body, "base64": True}, headers=bearer(key.key))
    data = as_json.json()
    assert [a["seed"] for a in data["artifacts"]] == [698845, 698846]
    assert Image.open(io.BytesIO(base64.b64decode(data["image"]))).format == "JPEG"
    assert estimate_credits("pose", PoseParams(**body), "default", 1.006) == pytest.approx(
        2 * (2.0 + 0.45 * 20 * 1.5) * 1.006 / 36 * 1.25, abs=1e-3)


def test_without_an_image_service_the_routes_answer_503(tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", auth=False)
    state = open_state(config)
    try:
        client = TestClient(build_api(config, state, build_service(config, state, lambda j: None), ServiceMetrics()))
        response = client.post("/v1/generation/text-to-image", json=BODY)
        assert response.status_code == 503 and response.json()["name"] == "service_unavailable"
    finally:
        state.close()


def test_openapi_documents_every_image_body_with_an_example(stack):
    _, _, client, _ = stack
    spec = client.get("/openapi.json").json()
    for path, model in (("/v1/generation/text-to-image", TextToImageParams),
                        ("/v1/generation/text-to-image/regions", RegionParams),
                        ("/v1/generation/text-to-image/pose", PoseParams)):
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        example = content["examples"]["example0"]["value"]
        assert set(example) <= set(model.model_fields), path
        assert set(content["schema"]["properties"]) >= set(model.model_fields), path
    t2i = spec["paths"]["/v1/generation/text-to-image"]["post"]
    assert "multipart/form-data" in t2i["requestBody"]["content"]
    assert "image/png" in t2i["responses"]["200"]["content"]
    for body in t2i["requestBody"]["content"].values():  # a mask alone is refused; the schema says so
        assert body["schema"]["dependentRequired"] == {"mask_image": ["init_image"]}
