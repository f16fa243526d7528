"""Issue 23, the service's own logic: one test per finding, named after it (finding 1, the job limits under
concurrent submits, is in test_admission.py: ``test_8_concurrent_submits_on_a_max_concurrent_1_key_give_one_202``
and its neighbours). The app is the one the Serve ingress builds (lift3d.service.server.build_api) over SQLite; jobs
are played by hand through the job store, except the failing views job of finding 7, which the real job runner
runs."""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import serve_in_thread, wait_until

from lift3d.costs import bill
from lift3d.params import GenerationParams
from lift3d.service.config import ServiceConfig
from lift3d.service.db.models import IdempotencyRecord, WebhookDelivery
from lift3d.service.jobs.store import JobOutcome, JobRecord
from lift3d.service.jobs.uploads import ReconstructParams
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service, local_cost_model
from lift3d.service.state import open_state

OUTCOME = dict(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb"])


@pytest.fixture
def stack(tmp_path):
    """``(config, state, client)``: the whole HTTP stack with API keys on SQLite in ``tmp_path``."""
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'lift3d.db'}", default_rate_limit_per_min=1000,
                           default_max_concurrent_jobs=0)
    state = open_state(config)
    api = build_api(config, state, build_service(config, state, [].append), ServiceMetrics())
    with TestClient(api, raise_server_exceptions=False) as client:
        yield config, state, client
    state.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, key: str, **body) -> str:
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot", **body}, headers=bearer(key))
    assert response.status_code == 202, response.text
    return response.json()["id"]


# ------------------------------------------------------------------------------------------ finding 7
def views_zip_without_camera_angle() -> bytes:
    """A views ZIP whose transforms.json lacks ``camera_angle_x``: valid at the door, fails in the worker."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("transforms.json", json.dumps({"frames": [{"file_path": "./a", "transform_matrix": [
            [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]}]}))
        archive.writestr("a.png", base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
    return buffer.getvalue()


def test_finding_7_no_error_message_names_a_server_path(stack, tmp_path):
    from lift3d.presets import get_preset
    from lift3d.service.worker.runner import JobRunner

    config, state, client = stack
    key = state.keys.create(name="k", credits=1000)
    forbidden = [tempfile.gettempdir(), str(tmp_path), str(Path.home()), str(Path(config.store_url))]
    answers: list[str] = []

    # a views job whose transforms.json is bad, run by the real runner: it fails in the job's temporary folder
    record = JobRecord.new("views-to-3d", GenerationParams(seed=1), owner_id=key.id,
                           webhook_url="https://hooks.example.com/lift3d")
    record = record.model_copy(update={"input_key": f"{record.prefix}upload.zip", "reconstruct": ReconstructParams()})
    state.store.put(record.input_key, views_zip_without_camera_angle(), "application/zip")
    state.jobs.create(record)
    state.jobs.begin_attempt(record.id, "test")
    result = JobRunner(state.jobs, None, get_preset("tiny"), local_cost_model(config)).attempt(record.id)
    assert result.status == "failed"
    failed = client.get(f"/v1/generation/{record.id}", headers={**bearer(key.key), "Accept": "application/json"})
    assert failed.status_code == 422 and "transforms.json" in failed.text  # still says which file was wrong
    answers.append(failed.text)
    with client.stream("GET", f"/v1/generation/{record.id}/events", headers=bearer(key.key)) as events:
        answers.append("\n".join(events.iter_lines()))
    assert "event: failed" in answers[-1]
    with state.database.read() as session:  # what the webhook receiver will be sent
        answers += list(session.execute(select(WebhookDelivery.payload)).scalars())
    assert any("generation.completed" in answer and "transforms.json" in answer for answer in answers)

    # a worker's failure message naming the store root and the home directory
    job_id = submit(client, key.key)
    state.jobs.begin_attempt(job_id, "test")
    state.jobs.fail(job_id, "internal_error", f"could not read {tmp_path / 'store'}/generations/{job_id}/upload.png "
                    f"or {Path.home()}/.cache/lift3d/weights.bin")
    answers.append(client.get(f"/v1/generation/{job_id}", headers={**bearer(key.key), "Accept": "application/json"}).text)

    # every other error the routes answer
    headers = bearer(key.key)
    for method, path, kwargs in (
            ("GET", "/v1/nothing-here", {}),
            ("DELETE", "/v1/generations", {}),
            ("GET", f"/v1/generation/{'0' * 32}", {}),
            ("GET", f"/v1/generation/{job_id}/artifacts/model.glb", {}),
            ("GET", f"/v1/generation/{job_id}/artifacts/{tmp_path}/x/y.png", {}),
            ("DELETE", f"/v1/generation/{job_id}", {}),
            ("POST", "/v1/generation/text-to-3d", {"content": b"{not json", "headers": {
                **headers, "Content-Type": "application/json"}}),
            ("POST", "/v1/generation/image-to-3d", {"files": {"image": ("a.png", b"not an image")}}),
            ("POST", "/v1/generation/image-to-3d", {"json": {"image": "!!!not base64"}}),
            ("POST", "/v1/generation/text-to-3d", {"json": {"prompt": "x", "num_3d_max_steps": -1}}),
            ("POST", "/v1/generation/views-to-3d", {"files": {"views": ("v.zip", b"not a zip")}}),
            ("GET", "/v1/generations?limit=0", {})):
        response = client.request(method, path, **{"headers": headers, **kwargs})
        assert response.status_code >= 400, (method, path, response.text)
        answers.append(response.text)
    poor = state.keys.create(name="poor", credits=0)
    answers.append(client.post("/v1/generation/text-to-3d", json={"prompt": "x"}, headers=bearer(poor.key)).text)

    leaks = [(answer[:300], place) for answer in answers for place in forbidden if place in answer]
    assert leaks == []
    assert f"lift3d-{record.id[:8]}" not in "".join(answers)  # not even the temporary folder's name


# ------------------------------------------------------------------------------------------ finding 8
def test_finding_8_an_event_stream_closes_within_seconds_of_its_key_revocation(stack):
    config, state, client = stack
    key = state.keys.create(name="k", credits=1000)
    job_id = submit(client, key.key)  # stays queued: nothing runs it
    with serve_in_thread(client.app) as base:
        with httpx.stream("GET", f"{base}/v1/generation/{job_id}/events", headers=bearer(key.key),
                          timeout=httpx.Timeout(10.0)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: status"
            state.keys.revoke(key.id)
            revoked_at = time.monotonic()
            for _ in lines:  # until the server ends the stream (a read timeout would fail the test)
                pass
            closed_after_s = time.monotonic() - revoked_at
    assert closed_after_s < 3.0, closed_after_s


# ------------------------------------------------------------------------------------------ finding 12
class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_finding_12_the_playground_bills_sends_webhooks_and_expires(tmp_path):
    from lift3d.service.local_server import LocalServer

    receiver = Receiver()
    config = ServiceConfig(preset="tiny", auth=True, store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'lift3d.db'}", result_ttl_s=1.0,
                           sweep_interval_s=0.5, allow_private_webhooks=True,
                           webhook_allowed_ports=[receiver.port])
    try:
        with LocalServer(config) as server:
            jobs, keys = server.state.jobs, server.state.keys
            key = keys.create(name="k", credits=100)
            # the runner prices what a job ran (it priced everything at 0 before: every job settled at 0 credits)
            cost = bill(server.runner.cost_model, {"novel_views": 20.0, "sds_training": 40.0}).cost_usd
            assert cost == pytest.approx(60.0 * server.runner.cost_model.price_per_gpu_hour / 3600)
            record = JobRecord.new("text-to-3d", GenerationParams(prompt="a robot"), owner_id=key.id,
                                   webhook_url=f"http://127.0.0.1:{receiver.port}/hook")
            jobs.create(record, reserve_mc=5000)
            attempt = jobs.begin_attempt(record.id, "local").attempts
            server.state.store.put(f"{record.prefix}model.glb", b"glTF")
            jobs.succeed(record.id, JobOutcome(**OUTCOME, cost_usd=cost), attempt=attempt)
            assert cost > 0 and jobs.charged_credits(record.id) == pytest.approx(cost / config.usd_per_credit, abs=1e-3)
            with server.state.database.transaction() as session:  # an idempotency row past its TTL
                session.add(IdempotencyRecord(owner_id=key.id, idempotency_key="k1", request_hash="0" * 64,
                                              state="done", created_at=0.0, expires_at=1.0))

            wait_until(lambda: {"generation.started", "generation.completed"} <= {b["type"] for b in receiver.bodies},
                       10, "the webhooks arrive")
            wait_until(lambda: jobs.get(record.id).status == "expired", 10, "the result expires")
            response = httpx.get(f"{server.url}/v1/generation/{record.id}", headers=bearer(key.key), timeout=10)
            assert response.status_code == 410 and response.json()["name"] == "generation_expired"
            with server.state.database.read() as session:
                assert session.execute(select(IdempotencyRecord)).first() is None
    finally:
        receiver.server.shutdown()


# ------------------------------------------------------------------------------------------ finding 13
def test_finding_13_an_unknown_route_is_a_generic_not_found(stack):
    config, state, client = stack
    key = state.keys.create(name="k", credits=1)
    for path in ("/v1/nothing-here", "/nothing-here"):
        response = client.get(path, headers=bearer(key.key))
        assert response.status_code == 404 and response.json()["name"] == "not_found", path
        assert response.json()["errors"] == [f"nothing is served at {path}"]
    missing = client.get(f"/v1/generation/{'0' * 32}", headers=bearer(key.key))  # a job: still its own name
    assert missing.status_code == 404 and missing.json()["name"] == "generation_not_found"


def test_finding_13_head_is_answered_wherever_get_is(stack):
    config, state, client = stack
    key = state.keys.create(name="k", credits=1000)
    job_id = submit(client, key.key)
    for path in (f"/v1/generation/{job_id}", "/v1/generations", "/healthz", "/openapi.json",
                 f"/v1/generation/{job_id}/events"):
        get = client.get(path, headers=bearer(key.key)) if not path.endswith("/events") else None
        head = client.head(path, headers=bearer(key.key))
        assert head.status_code == (get.status_code if get is not None else 200), path
        assert head.content == b"", path
        if get is not None:
            assert head.headers["content-length"] == str(len(get.content)), path
    refused = client.head("/v2beta/3d/stable-fast-3d", headers=bearer(key.key))  # POST only
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert refused.content == b"" and refused.headers["content-type"] == "application/json"
    not_allowed = client.put(f"/v1/generation/{job_id}", headers=bearer(key.key))
    assert not_allowed.headers["allow"] == "DELETE, GET, HEAD"


def test_finding_13_a_key_without_credits_gets_402_before_its_image_is_decoded(stack, monkeypatch):
    import lift3d.service.jobs.generation as generation

    config, state, client = stack
    poor, rich = state.keys.create(name="poor", credits=0), state.keys.create(name="rich", credits=1000)
    decoded: list[bytes] = []
    real_load_image = generation.load_image
    monkeypatch.setattr(generation, "load_image", lambda data, *a, **k: decoded.append(data) or real_load_image(
        data, *a, **k))
    garbage = b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096  # a PNG signature and nothing decodable behind it
    for body in ({"files": {"image": ("a.png", garbage)}}, {"json": {"image": base64.b64encode(garbage).decode()}}):
        refused = client.post("/v1/generation/image-to-3d", headers=bearer(poor.key), **body)
        assert refused.status_code == 402 and refused.json()["name"] == "insufficient_credits", refused.text
        assert "balance is 0.000 credits" in refused.json()["errors"][0]
    assert decoded == []
    decodes = client.post("/v1/generation/image-to-3d", headers=bearer(rich.key), files={"image": ("a.png", garbage)})
    assert decodes.status_code in (400, 422) and decoded == [garbage]  # the same body is decoded for a payer


def test_finding_13_get_right_after_delete_shows_canceling(stack):
    config, state, client = stack
    key = state.keys.create(name="k", credits=1000)
    job_id = submit(client, key.key)
    attempt = state.jobs.begin_attempt(job_id, "w").attempts  # running, stage "starting"
    stopping = client.delete(f"/v1/generation/{job_id}", headers=bearer(key.key))
    assert stopping.status_code == 202 and stopping.json()["stage"] == "canceling"
    status = client.get(f"/v1/generation/{job_id}", headers={**bearer(key.key), "Accept": "application/json"})
    assert status.status_code == 202 and status.json()["status"] == "running"
    assert status.json()["stage"] == "canceling"
    state.jobs.heartbeat(job_id, attempt=attempt, stage="sds_training")  # the worker's next beat, before it stops
    assert state.jobs.get(job_id).stage == "canceling"
