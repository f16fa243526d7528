"""The fast path on the service side: ``POST /v2beta/3d/stable-fast-3d`` over the whole HTTP stack (keys, credits,
rate limit, idempotency) with a stand-in ``make_asset`` (a fixed GLB), its 4xx/5xx envelopes and refunds; prices by
``method`` (hand-computed from the GPU_SECONDS table); ``method`` through the job APIs; the local server's wiring."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from lift3d.errors import InvalidInputError
from lift3d.params import GenerationParams
from lift3d.params.fast3d import FastAssetParams
from lift3d.service.accounts import credits
from lift3d.service.accounts.credits import estimate_credits, estimate_gpu_seconds
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.fast_asset_service import FastAssetService
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_fast_assets, build_service
from lift3d.service.state import open_state

ROUTE = "/v2beta/3d/stable-fast-3d"
GLB = trimesh.creation.box().export(file_type="glb")  # deterministic: the same bytes every time
PRICE_PER_GPU_S = 1.006 / 3600 / 0.01 * 1.25  # credits per GPU-second: A10G, 1 credit = US$0.01, margin 1.25


def png(colour=(200, 30, 30), size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def credits_of(gpu_s: float) -> float:
    """``estimate_credits``' rounding: up to the milli-credit."""
    return -(-round(gpu_s * PRICE_PER_GPU_S * 1000, 6) // 1) / 1000


@dataclass
class Asset:  # lift3d.pipeline.fast.FastAsset's shape
    glb: bytes
    metadata: dict = field(default_factory=dict)


@dataclass
class Timed:  # lift3d.pipeline.providers.Timed's shape (what a make_asset returns)
    value: Asset
    busy_s: float
    gpu_fraction: float | None = None


class FakeFastModel:
    """``make_asset`` that answers :data:`GLB` (or raises ``fail_with``, or waits ``delay`` first)."""

    def __init__(self):
        self.calls = []
        self.fail_with: Exception | None = None
        self.answer: bytes = GLB
        self.release = threading.Event()
        self.release.set()

    def __call__(self, image, params):
        self.calls.append((image, params))
        self.release.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        return Timed(Asset(self.answer, {"model": "fake"}), busy_s=0.25, gpu_fraction=1.0)


@pytest.fixture
def stack(tmp_path):
    config = ServiceConfig(preset="default", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", gpu_type="A10G",
                           default_rate_limit_per_min=1000)
    state = open_state(config)
    model = FakeFastModel()
    fast = build_fast_assets(config, state, model, timeout_s=2.0)
    service = build_service(config, state, lambda job_id: None)
    client = TestClient(build_api(config, state, service, ServiceMetrics(), fast_assets=fast),
                        raise_server_exceptions=False)
    key = state.keys.create(name="a", credits=10)
    yield state, client, model, key
    fast.close()
    state.close()


def bearer(key, **headers) -> dict:
    return {"Authorization": f"Bearer {key.key}", **headers}


def post(client, key, data=None, image=None, **headers):
    files = {"image": ("chair.png", png() if image is None else image, "image/png")} if image is not False else None
    return client.post(ROUTE, data=data or {}, files=files, headers=bearer(key, **headers))


# ------------------------------------------------------------------------------------------------ the endpoint
def test_a_png_gets_its_glb_and_pays_the_price(stack):
    state, client, model, key = stack
    response = post(client, key, {"texture_resolution": "512", "foreground_ratio": "0.9", "remesh": "triangle",
                                  "vertex_count": "5000"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.content[:4] == b"glTF" and response.content == GLB
    assert response.headers["content-disposition"].startswith('attachment; filename="')
    (image, params), = model.calls
    assert image.data == png() and params == FastAssetParams(texture_resolution=512, foreground_ratio=0.9,
                                                             remesh="triangle", vertex_count=5000)
    # default preset: feedforward 0.75 + export 4 + 5 × 0.262144 megatexels + remesh 1.5 = 7.56072 GPU-s
    price = credits_of(0.75 + 4 + 5 * 512**2 / 1e6 + 1.5)
    assert price == 0.265 == estimate_credits("stable-fast-3d", params, "default", 1.006)
    assert state.keys.balance(key.id) == pytest.approx(10 - price, abs=1e-9)
    assert float(response.headers["X-Remaining-Credits"]) == pytest.approx(10 - price, abs=1e-3)


def test_failures_give_the_charge_back(stack):
    state, client, model, key = stack
    model.fail_with = RuntimeError("CUDA error: device-side assert")  # not the caller's: a generic 500
    response = post(client, key)
    assert response.status_code == 500 and response.json()["name"] == "internal_error"
    assert "CUDA" not in response.text
    model.fail_with = InvalidInputError("the object fills none of the image")  # the caller's: as raised
    response = post(client, key)
    assert response.status_code == 422 and response.json()["errors"] == ["the object fills none of the image"]
    model.fail_with, model.answer = None, b"not a glb"
    assert post(client, key).status_code == 500
    assert len(model.calls) == 3 and state.keys.balance(key.id) == 10.0  # charged 3 × 0.35, refunded 3 ×


def test_a_stuck_model_times_out_with_503_and_a_refund(stack):
    state, client, model, key = stack
    model.release.clear()  # the fake waits (up to 10 s) past the service's 2 s bound
    response = post(client, key)
    model.release.set()
    assert response.status_code == 503 and response.json()["name"] == "service_unavailable"
    assert "2 s" in response.json()["errors"][0] and response.headers["Retry-After"] == "5"
    assert state.keys.balance(key.id) == 10.0


@pytest.mark.parametrize("data, image, status, words", [
    ({"texture_resolution": "512"}, False, 422, ["image: required"]),
    ({"texture_resolution": "300"}, None, 422, ["texture_resolution", "512, 1024 or 2048"]),
    ({"texture_resolution": "big"}, None, 422, ["texture_resolution"]),
    ({"remesh": "quad"}, None, 422, ["remesh", "'quad'", "none or triangle"]),
    ({"vertex_count": "50"}, None, 422, ["vertex_count", "-1 or between 100 and 20000"]),
    ({"foreground_ratio": "0.05"}, None, 422, ["foreground_ratio"]),
    ({"colour": "red"}, None, 422, ["colour"]),
    ({}, b"GIF89a not an image", 422, ["image:"]),
])
def test_bad_requests_get_the_envelope_and_cost_nothing(stack, data, image, status, words):
    state, client, model, key = stack
    response = post(client, key, data, image)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["name"] == "invalid_parameters" and all(w in " ".join(body["errors"]) for w in words), body
    assert model.calls == [] and state.keys.balance(key.id) == 10.0


def test_other_bodies_and_callers_are_refused(stack):
    state, client, model, key = stack
    assert client.post(ROUTE, json={"image": "AAAA"}, headers=bearer(key)).status_code == 415
    as_text = client.post(ROUTE, files={"image": (None, "iVBORw0KGgo=")}, headers=bearer(key))
    assert as_text.status_code == 422 and "file part" in as_text.json()["errors"][0]
    anonymous = client.post(ROUTE, files={"image": ("a.png", png(), "image/png")})
    assert anonymous.status_code == 401 and anonymous.json()["name"] == "unauthorized"
    poor = state.keys.create(name="poor", credits=0.1)
    assert post(client, poor).status_code == 402
    assert model.calls == []


def test_an_idempotent_retry_replays_the_glb_and_charges_once(stack):
    state, client, model, key = stack
    first = post(client, key, {"texture_resolution": "2048"}, **{"Idempotency-Key": "chair-1"})
    again = post(client, key, {"texture_resolution": "2048"}, **{"Idempotency-Key": "chair-1"})
    assert first.status_code == again.status_code == 200 and again.content == first.content == GLB
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["content-type"] == "model/gltf-binary"
    assert again.headers["content-disposition"] == first.headers["content-disposition"]
    other = post(client, key, {"texture_resolution": "512"}, **{"Idempotency-Key": "chair-1"})
    assert other.status_code == 422 and other.json()["name"] == "idempotency_key_reused"
    # 0.75 + 4 + 5 × 4.194304 = 25.72152 GPU-s → 0.899 credits, once
    assert len(model.calls) == 1 and state.keys.balance(key.id) == pytest.approx(10 - 0.899, abs=1e-9)


def test_without_a_fast_model_the_route_answers_503(tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), auth=False,
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    state = open_state(config)
    try:
        client = TestClient(build_api(config, state, build_service(config, state, lambda j: None), ServiceMetrics()))
        response = client.post(ROUTE, files={"image": ("a.png", png(), "image/png")})
        assert response.status_code == 503 and "not configured" in response.json()["errors"][0]
        assert client.post(ROUTE, data={"remesh": "quad"}, files={"image": ("a.png", png(), "image/png")}
                           ).status_code == 422  # the body is checked first
    finally:
        state.close()


def test_the_service_alone_charges_and_refunds_without_http():
    charged = []

    class Keys:  # the two ledger calls FastAssetService makes
        def charge(self, key_id, request_id, amount_mc):
            charged.append(("charge", key_id, amount_mc))

        def return_charge(self, key_id, request_id, amount_mc):
            charged.append(("refund", key_id, amount_mc))

    @dataclass
    class Caller:
        key_id: str = "k1"

    model = FakeFastModel()
    service = FastAssetService(model, keys=Keys(), price=lambda kind, params: 0.25 if kind == "stable-fast-3d" else 9)
    result = service.generate(png(), FastAssetParams(), Caller())
    assert (result.glb, result.credits, result.metadata, result.busy_s) == (GLB, 0.25, {"model": "fake"}, 0.25)
    model.fail_with = RuntimeError("boom")
    with pytest.raises(Exception, match="internal error|boom"):
        service.generate(png(), FastAssetParams(), Caller())
    assert [c[0] for c in charged] == ["charge", "charge", "refund"] and {c[2] for c in charged} == {250}
    with pytest.raises(InvalidInputError, match="^image: required"):
        service.generate(None, FastAssetParams(), Caller())
    with pytest.raises(ValueError):
        FastAssetService(model, timeout_s=0)
    service.close()


# ------------------------------------------------------------------------------------------------ prices by method
def test_prices_by_method_by_hand():
    megatexels = 1024**2 / 1e6  # the default texture: 1.048576
    sds = GenerationParams()
    fast = GenerationParams(method="fast")
    refine = GenerationParams(method="fast+sds")
    # sds (unchanged): 0.5 + 400 × 0.025 + 600 × (0.175 + 0.45) + 10 + 5 × 1.048576 = 400.74288 GPU-s
    assert estimate_credits("image-to-3d", sds, "default", 1.006) == 13.999
    # fast: feedforward 0.75 + export 4 + 5 × 1.048576 = 9.99288 GPU-s, no views, no SDS
    assert estimate_gpu_seconds("image-to-3d", fast, "default") == pytest.approx(
        {"background_removal": 0.0, "feedforward": 0.75, "mesh_export": 4 + 5 * megatexels})
    assert estimate_credits("image-to-3d", fast, "default", 1.006) == credits_of(9.99288) == 0.35
    # the synchronous endpoint at the same texture costs the same as a fast job
    assert estimate_credits("stable-fast-3d", FastAssetParams(), "default", 1.006) == 0.35
    # text-to-3d fast: + SDXL 2 + 30 × 0.45 = 15.5
    assert estimate_credits("text-to-3d", fast.model_copy(update={"prompt": "a robot"}), "default", 1.006) == \
        credits_of(25.49288) == 0.891
    # fast+sds: views 10.5 + feedforward 0.75 + fit 2.5 + 200 refine steps × (0.175 + 0.45) + export 15.24288
    # = 153.99288 GPU-s (sds: 400.74288)
    assert estimate_gpu_seconds("image-to-3d", refine, "default") == pytest.approx(
        {"background_removal": 0.0, "novel_views": 10.5, "feedforward": 0.75, "sds_guidance": 35.0,
         "sds_training": 2.5 + 90.0, "mesh_export": 10 + 5 * megatexels})
    assert estimate_credits("image-to-3d", refine, "default", 1.006) == credits_of(153.99288) == 5.38
    assert estimate_credits("image-to-3d", refine.model_copy(update={"num_3d_max_steps": 100}), "default",
                            1.006) == credits_of(153.99288 - 100 * 0.625) == 3.196
    # tiny fast+sds at its 70 refine steps, no texture: 8 × 50 × 0.0035 + 0.004 + 70 × 0.0125 + 1 + 2.7 + 70 × 0.11
    # + 2.75 = 16.429 GPU-s; tiny fast at 1024²: 0.004 + 2.05 + 1.45 × 1.048576
    tiny = GenerationParams(method="fast+sds", texture=False)
    assert sum(estimate_gpu_seconds("image-to-3d", tiny, "tiny").values()) == pytest.approx(16.429)
    assert sum(estimate_gpu_seconds("image-to-3d", fast, "tiny").values()) == pytest.approx(2.054 + 1.45 * megatexels)
    # views only: novel views whatever the method (0.5 + 400 × 0.025 = 10.5 GPU-s)
    assert estimate_credits("multiview", fast, "default", 1.006) == 0.367
    assert estimate_credits("image-to-3d", fast.model_copy(update={"return_3d": False}), "default", 1.006) == 0.367


def test_default_refine_steps_match_the_presets():
    from lift3d.presets import PRESETS

    assert credits.DEFAULT_REFINE_STEPS == {name: p.fast.refine_steps for name, p in PRESETS.items()}
    for table in credits.GPU_SECONDS.values():
        assert {"feedforward", "field_fit", "fast_mesh_export", "remesh"} <= set(table)


# ------------------------------------------------------------------------------------------------ method in jobs
def test_method_flows_through_the_job_apis(stack):
    state, client, model, key = stack
    files = {"image": ("chair.png", png(), "image/png")}
    response = client.post("/v1/generation/image-to-3d", data={"method": "fast"}, files=files, headers=bearer(key))
    assert response.status_code == 202, response.text
    job = state.jobs.get(response.json()["id"])
    assert job.params.method == "fast"
    assert state.keys.balance(key.id) == pytest.approx(10 - 0.35, abs=1e-9)  # reserved at the fast price
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot", "method": "fast+sds"},
                           headers=bearer(key))
    assert response.status_code == 202 and state.jobs.get(response.json()["id"]).params.method == "fast+sds"
    bad = client.post("/v1/generation/image-to-3d", data={"method": "instant"}, files=files, headers=bearer(key))
    assert bad.status_code == 422 and bad.json()["errors"][0].startswith("method:")


# ------------------------------------------------------------------------------------------------ lift3d playground
def test_the_local_server_makes_a_real_glb_in_process(tmp_path):
    """``lift3d playground``'s wiring with the real tiny TripoSR (random weights) on CPU: background removal (the
    dragon's alpha), the model, marching cubes, decimation to ~100 vertices, a 512² bake (~6 s on 2 cores)."""
    from lift3d.service.local_server import LocalServer

    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), auth=False,
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    server = LocalServer(config)
    try:
        dragon = (Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png").read_bytes()
        response = TestClient(server.app).post(ROUTE, data={"texture_resolution": "512", "vertex_count": "100"},
                                               files={"image": ("dragon.png", dragon, "image/png")})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "model/gltf-binary" and response.content[:4] == b"glTF"
        scene = trimesh.load(io.BytesIO(response.content), file_type="glb")
        (mesh,) = scene.geometry.values()
        assert 0 < len(mesh.faces) <= 200 and mesh.visual.material.baseColorTexture.size == (512, 512)
    finally:
        server.fast_assets.close()
        server.state.close()
