"""The v1 API against bad input and abuse (issue 9): bounded bodies while streaming, JSON depth, 405 with Allow,
user-facing job errors, the guidance-scale range at the door, artifacts served by the API. No Ray."""

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lift3d.errors import InvalidInputError
from lift3d.io.images import ImageLimits
from lift3d.io.storage import LocalStore
from lift3d.params import SDXL_GUIDANCE_SCALE_RANGE, GenerationParams
from lift3d.service.api.app import create_api
from lift3d.errors import INTERNAL_ERROR_MESSAGE, describe_error, find_cause
from lift3d.service.worker.consumer import consume_job
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.api.bodies import MAX_JSON_DEPTH, json_depth
from lift3d.service.jobs.store import JobOutcome, JobRecord, JobStore
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.jobs.uploads import ViewsZipLimits

MiB = 1024 * 1024


def make_jobs(tmp_path: Path, store=None) -> JobStore:
    """A job store with artifacts under ``tmp_path/store`` (records in SQLite where the store has a database)."""
    store = store or LocalStore(tmp_path / "store")
    try:
        from lift3d.service.db import Database, migrate
    except ImportError:  # the record-in-the-artifact-store JobStore
        return JobStore(store)
    database = Database(f"sqlite:///{tmp_path / 'lift3d.db'}")
    migrate(database)
    return JobStore(database, store)


def png(size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def service(tmp_path):
    queued: list[str] = []
    service = GenerationService(make_jobs(tmp_path), queued.append, limits=ImageLimits(max_bytes=1 * MiB),
                                views_limits=ViewsZipLimits(max_bytes=1 * MiB))
    service.queued = queued  # type: ignore[attr-defined]
    return service


@pytest.fixture
def app(service):
    return create_api(service, ServiceMetrics(), limits=service.limits)


@pytest.fixture
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def assert_envelope(response: httpx.Response, code: int, name: str) -> dict:
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == name and body["errors"]
    return body


# ------------------------------------------------------------------------------------------------ 1. body size
class CountingBody:
    """An async body of ``total`` bytes in ``chunk``-byte pieces that counts the pieces pulled from it."""

    def __init__(self, total: int = 50 * MiB, chunk: int = 64 * 1024, first: bytes = b"") -> None:
        self.total, self.chunk, self.first, self.yielded = total, chunk, first, 0

    async def __aiter__(self):
        sent = 0
        while sent < self.total:
            piece = (self.first if sent == 0 and self.first else b"x" * self.chunk)[: self.total - sent]
            self.yielded += 1
            sent += len(piece)
            yield piece


async def _post(app, path: str, body: CountingBody, content_type: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(path, content=body, headers={"content-type": content_type, **headers})


@pytest.mark.parametrize("path, content_type", [
    ("/v1/generation/image-to-3d", "application/json"),
    ("/v1/generation/image-to-3d", "multipart/form-data; boundary=b"),
    ("/v1/generation/multiview", "application/x-www-form-urlencoded"),
    ("/v1/generation/views-to-3d", "multipart/form-data; boundary=b"),
])
def test_chunked_body_over_the_limit_is_cut_off_while_streaming(app, service, path, content_type):
    body = CountingBody(total=50 * MiB, chunk=64 * 1024,
                        first=b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
                        if "multipart" in content_type else b"")
    response = asyncio.run(_post(app, path, body, content_type))
    assert "content-length" not in response.request.headers  # chunked: the size is learnt while reading
    body_json = assert_envelope(response, 413, "payload_too_large")
    assert "MiB" in body_json["errors"][0]
    # the limit is 1 MiB × 4/3 + 64 KiB (submissions) or 1 MiB + 64 KiB (views): passed within 24 of 800 pieces
    limit = MiB * 4 // 3 + 64 * 1024
    assert body.yielded <= limit // body.chunk + 2, body.yielded
    assert service.queued == []


def test_declared_length_over_the_limit_is_refused_before_reading(app, service):
    body = CountingBody(total=50 * MiB)
    response = asyncio.run(_post(app, "/v1/generation/text-to-3d", body, "application/json",
                                 **{"content-length": str(50 * MiB)}))
    assert_envelope(response, 413, "payload_too_large")
    assert body.yielded == 0


def test_bodies_within_the_limit_still_pass(client, service):
    response = client.post("/v1/generation/image-to-3d", files={"image": ("a.png", png((64, 64)))},
                           data={"seed": "3"})
    assert response.status_code == 202, response.text
    assert service.queued == [response.json()["id"]]
    assert service.jobs.get(service.queued[0]).params.seed == 3


# ------------------------------------------------------------------------------------------------ 2. JSON depth
def test_json_depth_counts_brackets_outside_strings_only():
    assert json_depth(b'{"a": [1, {"b": "]]"}]}') == 3
    assert json_depth(b'{"a": "[[[[\\"[[", "b": [1]}') == 2
    assert json_depth(b"7") == 0
    assert json_depth(b"[" * 100_000) == 100_000


def test_deeply_nested_json_is_a_bad_request_not_a_crash(client, service):
    response = client.post("/v1/generation/text-to-3d", content=b"[" * 100_000 + b"]" * 100_000,
                           headers={"content-type": "application/json"})
    body = assert_envelope(response, 400, "bad_request")
    assert body["errors"] == [f"JSON body is nested 100000 levels deep; at most {MAX_JSON_DEPTH} are accepted"]
    too_deep = b'{"prompt": "x", "seed": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"
    assert_envelope(client.post("/v1/generation/text-to-3d", content=too_deep,
                                headers={"content-type": "application/json"}), 400, "bad_request")
    deep_enough = b'{"prompt": "x", "seed": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    body = assert_envelope(client.post("/v1/generation/text-to-3d", content=deep_enough,
                                       headers={"content-type": "application/json"}), 422, "invalid_parameters")
    assert body["errors"][0].startswith("seed:")
    assert service.queued == []


# ------------------------------------------------------------------------------------------------ 3. 405 + Allow
@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/v1/generation/" + "0" * 32, "DELETE, GET, HEAD"),  # HEAD wherever GET (issue 23)
    ("PATCH", "/v1/generation/" + "0" * 32, "DELETE, GET, HEAD"),
    ("TRACE", "/v1/generation/text-to-3d", "POST"),
    ("PUT", "/v1/generation/views-to-3d", "POST"),
    ("POST", "/healthz", "GET, HEAD"),
    ("DELETE", "/v1/generation/" + "0" * 32 + "/artifacts/model.glb", "GET, HEAD"),
])
def test_unknown_methods_get_405_with_allow(client, method, path, allow):
    response = client.request(method, path)
    body = assert_envelope(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow
    assert body["errors"] == [f"{method} is not allowed here; use {allow}"]


# ------------------------------------------------------------------------------------------------ 4. job errors
class FakeRayTaskError(Exception):
    """Shaped like Ray's RayTaskError: the wrapper text names the process; ``cause`` holds the real error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("\x1b[36mray::ServeReplica:lift3d:TextToImage.handle_request()\x1b[39m (pid=4242, "
                         "ip=10.1.2.3, actor_id=8d5a6f0e2b1c, repr=<TextToImageDeployment>)\n  File \"x.py\", "
                         f"line 1\n{type(cause).__name__}: {cause}")
        self.cause = cause


class FakeDualRayTaskError(FakeRayTaskError, InvalidInputError):
    """Ray also makes the wrapper an instance of the cause's class (``as_instanceof_cause``)."""


REASON = "\x1b[31mguidance_scale must be in [1, 50] (SDXL default 5-8), got 60\x1b[0m"


@pytest.mark.parametrize("wrapper", [FakeRayTaskError, FakeDualRayTaskError])
def test_wrapped_errors_of_ours_are_reported_by_their_own_message(wrapper):
    cause = InvalidInputError(REASON)
    exc = wrapper(cause)
    assert "pid=4242" in str(exc) and "10.1.2.3" in str(exc)
    assert find_cause(exc) is cause
    assert describe_error(exc) == "guidance_scale must be in [1, 50] (SDXL default 5-8), got 60"
    try:
        raise RuntimeError("remote call failed at 10.1.2.3") from exc
    except RuntimeError as chained:
        assert find_cause(chained) is cause


def test_other_errors_are_reported_as_internal_without_details():
    exc = FakeRayTaskError(OSError("disk full at /var/lib/secret"))
    assert find_cause(exc) is None
    assert describe_error(exc) == INTERNAL_ERROR_MESSAGE
    assert describe_error(ConnectionError("actor 8d5a6f0e2b1c at 10.1.2.3 died")) == INTERNAL_ERROR_MESSAGE
    assert describe_error(InvalidInputError("")) == "InvalidInputError"


def test_a_failed_job_reports_the_reason_not_the_wrapper(client, service):
    jobs = service.jobs
    record = jobs.create(JobRecord.new("text-to-3d", GenerationParams(prompt="a robot"), max_attempts=1))

    def attempt(job_id):
        raise FakeDualRayTaskError(InvalidInputError(REASON))

    assert consume_job(record.id, jobs, attempt, "w1") == "failed"
    body = client.get(f"/v1/generation/{record.id}").json()
    assert body["errors"] == ["guidance_scale must be in [1, 50] (SDXL default 5-8), got 60 (after 1 attempts)"]
    text = json.dumps(body)
    assert not any(leak in text for leak in ("pid=", "10.1.2.3", "actor_id", "\\u001b", "ray::"))


def test_worker_triages_wrapped_stage_errors_as_final(tmp_path, monkeypatch):
    from lift3d.presets import get_preset
    from lift3d.service.worker import runner as worker
    from lift3d.costs import CostModel

    jobs = make_jobs(tmp_path)

    def run_job(*args, **kwargs):
        raise FakeRayTaskError(InvalidInputError(REASON))  # a remote stage's error, not a subclass of ours

    monkeypatch.setattr(worker, "run_job", run_job)
    runner = worker.JobRunner(jobs, stages=None, preset=get_preset("tiny"), cost_model=CostModel(1.0, {}),
                              heartbeat_s=0.05)
    record = jobs.create(JobRecord.new("text-to-3d", GenerationParams(prompt="a robot")))
    jobs.begin_attempt(record.id, "w1")
    result = runner.attempt(record.id)
    assert (result.status, result.error_name) == ("failed", "invalid_parameters")
    assert result.message == "guidance_scale must be in [1, 50] (SDXL default 5-8), got 60"
    assert jobs.get(record.id).error.message == result.message

    def broken_run_job(*args, **kwargs):
        raise FakeRayTaskError(RuntimeError("CUDA error at 10.1.2.3"))

    monkeypatch.setattr(worker, "run_job", broken_run_job)
    other = jobs.create(JobRecord.new("text-to-3d", GenerationParams(prompt="a robot")))
    jobs.begin_attempt(other.id, "w1")
    retried = runner.attempt(other.id)
    assert (retried.status, retried.message) == ("retry", INTERNAL_ERROR_MESSAGE)


# ------------------------------------------------------------------------------------------------ 5. guidance scale
def test_guidance_scale_range_is_the_sdxl_stage_range_at_the_door(client, service):
    from lift3d.stages.sdxl.text_to_image import TextToImage

    low, high = SDXL_GUIDANCE_SCALE_RANGE
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/generation/text-to-3d"]["post"]["requestBody"]["content"]
    for media_type in ("application/json", "multipart/form-data"):
        field = content[media_type]["schema"]["properties"]["guidance_scale"]
        assert (field["minimum"], field["maximum"]) == (low, high), media_type
    for scale in (low, high):  # the stage accepts the API's bounds...
        TextToImage.check_inputs(None, "a robot", "", scale, 30, 1024, 1024)
    for scale in (low - 0.01, high + 0.01):  # ...and the API refuses what the stage would
        with pytest.raises(InvalidInputError, match="guidance_scale"):
            TextToImage.check_inputs(None, "a robot", "", scale, 30, 1024, 1024)
        body = assert_envelope(client.post("/v1/generation/text-to-3d", json={"prompt": "x", "guidance_scale": scale}),
                               422, "invalid_parameters")
        assert body["errors"][0].startswith("guidance_scale:")
        assert_envelope(client.post("/v1/generation/text-to-3d", data={"prompt": "x", "guidance_scale": str(scale)}),
                        422, "invalid_parameters")
    assert service.queued == []
    accepted = client.post("/v1/generation/text-to-3d", json={"prompt": "x", "guidance_scale": high})
    assert accepted.status_code == 202 and service.jobs.get(accepted.json()["id"]).params.guidance_scale == high


def test_whitespace_prompt_is_refused_at_the_door_like_the_stage_would(client, service):
    body = assert_envelope(client.post("/v1/generation/text-to-3d", json={"prompt": " \t\u3000"}), 422,
                           "invalid_parameters")
    assert body["errors"] == ["prompt: must contain a non-space character, e.g. 'a wooden toy robot'"]
    assert service.queued == []


# ------------------------------------------------------------------------------------------------ 6. artifacts
ARTIFACTS = {"model.glb": (b"glTF-bytes", "model/gltf-binary"), "views/000_az000_el0.png": (png(), "image/png"),
             "metadata.json": (b'{"seed": 1}', "application/json")}


def finished_job(service: GenerationService) -> JobRecord:
    jobs = service.jobs
    record = jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=1)))
    record = jobs.get(record.id)
    for name, (data, content_type) in ARTIFACTS.items():
        jobs.store.put(record.prefix + name, data, content_type)
    jobs.store.put(record.prefix + "upload.png", png(), "image/png")  # stored, but not an artifact
    jobs.begin_attempt(record.id, "w")
    jobs.succeed(record.id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                       artifacts=list(ARTIFACTS)))
    return record


def test_artifact_urls_are_api_paths_that_serve_the_bytes(client, service, tmp_path):
    record = finished_job(service)
    response = client.get(f"/v1/generation/{record.id}", headers={"Accept": "application/json"})
    assert response.status_code == 200
    urls = {a["name"]: a["url"] for a in response.json()["artifacts"]}
    assert urls == {name: f"/v1/generation/{record.id}/artifacts/{name}" for name in ARTIFACTS}
    assert "file:" not in response.text and str(tmp_path) not in response.text
    for name, (data, content_type) in ARTIFACTS.items():
        served = client.get(urls[name])
        assert served.status_code == 200 and served.content == data
        assert served.headers["content-type"].split(";")[0] == content_type
        assert served.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["upload.png", "%2E%2E/%2E%2E/lift3d.db", "views/%2E%2E/model.glb",
                                  "/etc/passwd", "views%5C..%5Cmodel.glb", "missing.png"])
def test_artifacts_outside_the_outcome_are_not_found(client, service, name):
    record = finished_job(service)
    response = client.get(f"/v1/generation/{record.id}/artifacts/{name}")
    body = assert_envelope(response, 404, "artifact_not_found")
    assert body["id"] == record.id


def test_artifacts_of_unknown_or_unfinished_jobs_are_not_found(client, service):
    assert_envelope(client.get("/v1/generation/" + "0" * 32 + "/artifacts/model.glb"), 404, "generation_not_found")
    queued = service.jobs.create(JobRecord.new("text-to-3d", GenerationParams(prompt="x")))
    body = assert_envelope(client.get(f"/v1/generation/{queued.id}/artifacts/model.glb"), 404, "artifact_not_found")
    assert body["errors"] == [f"generation {queued.id} has no artifact 'model.glb' (the generation is queued)"]


def test_presigned_store_urls_are_passed_through(tmp_path):
    class PresigningStore(LocalStore):
        def url(self, key: str, expires_s: int = 3600) -> str:
            return f"https://bucket.example/{key}?X-Amz-Expires={expires_s}"

    service = GenerationService(make_jobs(tmp_path, PresigningStore(tmp_path / "store")), lambda job_id: None,
                                url_expires_s=60)
    record = finished_job(service)
    result = service.status(record.id)
    assert [a.url for a in result.artifacts] == [f"https://bucket.example/generations/{record.id}/{name}"
                                                 "?X-Amz-Expires=60" for name in ARTIFACTS]


# ------------------------------------------------------------------------------------------------ 7. contract details
def test_cancel_of_a_finished_job_is_a_documented_409(client, service):
    record = finished_job(service)
    body = assert_envelope(client.delete(f"/v1/generation/{record.id}"), 409, "generation_finished")
    assert body["id"] == record.id
    responses = client.get("/openapi.json").json()["paths"]["/v1/generation/{id}"]["delete"]["responses"]
    assert set(responses) == {"200", "202", "404", "409", "500"}


def test_spec_states_the_input_rules(client):
    paths = client.get("/openapi.json").json()["paths"]
    image = paths["/v1/generation/image-to-3d"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert image["required"] == ["image"] and image["properties"]["prompt"]["type"] == "null"
    assert image["properties"]["image"]["format"] == "byte"
    assert image["properties"]["image"]["contentEncoding"] == "base64"
    assert "kind" not in image["properties"] and image["additionalProperties"] is False
    text = paths["/v1/generation/text-to-3d"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert text["required"] == ["prompt"] and "image" not in text["properties"]
    multiview = paths["/v1/generation/multiview"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [branch["required"] for branch in multiview["anyOf"]] == [["image"], ["prompt"]]
    assert multiview["properties"]["return_3d"]["enum"] == [False]
    post = paths["/v1/generation/image-to-3d"]["post"]
    # 200: Prefer: wait; 402 credits; 409 Idempotency-Key in use; 429 rate limited (401 joins with auth on)
    assert set(post["responses"]) == {"200", "202", "400", "402", "409", "413", "415", "422", "429", "500", "503"}
    assert {p["name"] for p in post["parameters"] if p["in"] == "header"} == {"Idempotency-Key", "Prefer"}


@pytest.mark.parametrize("kwargs, code, name, error", [
    ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type",
     "send multipart/form-data (image file + fields) or application/json"),
    ({"json": {"prompt": "x", "num_views": "8"}}, 422, "invalid_parameters", "num_views: Input should be a valid "
     "integer"),
    ({"json": {"prompt": "x", "texture": 1}}, 422, "invalid_parameters", "texture: Input should be a valid boolean"),
    ({"data": {"prompt": "x", "texture": "1"}}, 422, "invalid_parameters", "texture: Input should be a valid "
     "boolean"),
    ({"data": {"prompt": ""}}, 422, "invalid_parameters", "prompt: String should have at least 1 character"),
    ({"data": {"prompt": "x", "seed": ["1", "2"]}}, 422, "invalid_parameters", "seed: given more than once"),
])
def test_values_must_have_their_schema_types(client, service, kwargs, code, name, error):
    body = assert_envelope(client.post("/v1/generation/text-to-3d", **kwargs), code, name)
    assert body["errors"] == [error]
    assert service.queued == []


def test_typed_values_in_json_and_forms_are_accepted(client, service):
    for kwargs in ({"json": {"prompt": "x", "num_views": 6.0, "texture": False, "guidance_scale": 5}},
                   {"data": {"prompt": "x", "num_views": "6", "texture": "false", "guidance_scale": "5"}}):
        response = client.post("/v1/generation/text-to-3d", **kwargs)
        assert response.status_code == 202, response.text
        params = service.jobs.get(response.json()["id"]).params
        assert (params.num_views, params.texture, params.guidance_scale) == (6, False, 5.0)
