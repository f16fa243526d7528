"""Job records, the queue-side job logic, the cost model, metrics and the HTTP API over fakes — no Ray."""

import base64
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import Clock

from lift3d.costs import GPU_PRICES_USD_PER_HOUR, CostModel, bill, price_per_gpu_hour
from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.io.storage import LocalStore
from lift3d.params import GenerationParams
from lift3d.errors import INTERNAL_ERROR_MESSAGE
from lift3d.service.worker.consumer import AttemptResult, RetryJob, consume_job, sweep_stale_jobs
from lift3d.service.jobs.store import InvalidTransition, JobNotFound, JobOutcome, JobRecord, JobStore
from lift3d.service.metrics import ServiceMetrics, parse_exposition
from lift3d.service.schemas import BadRequestError, GenerationRequest, decode_image

DRAGON = Path(__file__).resolve().parents[1] / "examples" / "dragon2_rgba.png"


@pytest.fixture
def jobs(database, tmp_path):
    """A job store on SQLite or PostgreSQL (the ``database`` fixture) with artifacts in ``tmp_path``."""
    return JobStore(database, LocalStore(tmp_path), clock=Clock(1000.0))


def sqlite_jobs(tmp_path, store=None) -> JobStore:
    from lift3d.service.db import Database, migrate

    database = Database(f"sqlite:///{tmp_path / 'lift3d.db'}")
    migrate(database)
    return JobStore(database, store or LocalStore(tmp_path / "store"))


def new_job(jobs: JobStore, max_attempts: int = 3, kind: str = "image-to-3d") -> JobRecord:
    return jobs.create(JobRecord.new(kind, GenerationParams(), max_attempts=max_attempts, now=jobs.clock()))


# ------------------------------------------------------------------------------------------------ job records
def test_record_fixes_the_seed_and_lives_in_the_database(jobs):
    record = new_job(jobs)
    assert record.params.seed is not None and record.status == "queued"
    assert jobs.get(record.id).params.seed == record.params.seed
    assert jobs.get(record.id) == record
    assert jobs.active_ids() == [record.id]


def test_status_only_moves_forward(jobs):
    record = new_job(jobs)
    jobs.begin_attempt(record.id, "w1")
    with pytest.raises(InvalidTransition):
        jobs.update(record.id, status="queued")
    jobs.succeed(record.id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary", artifacts=[]))
    for status in ("running", "failed", "canceled", "succeeded"):
        with pytest.raises(InvalidTransition):
            jobs.update(record.id, status=status)
    assert jobs.get(record.id).status == "succeeded"
    assert jobs.active_ids() == []


def test_unknown_and_malformed_ids_are_not_found(jobs):
    for job_id in ("0" * 32, "../../etc/passwd", "ABC"):
        with pytest.raises(JobNotFound):
            jobs.get(job_id)


def test_cancel_marks_queued_job_canceled_and_running_job_for_its_worker(jobs):
    queued = new_job(jobs)
    assert jobs.request_cancel(queued.id).status == "canceled"
    running = new_job(jobs)
    jobs.begin_attempt(running.id, "w1")
    assert jobs.request_cancel(running.id).status == "running"
    assert jobs.cancel_requested(running.id)
    with pytest.raises(InvalidTransition):
        jobs.request_cancel(queued.id)


# ------------------------------------------------------------------------------------------------ queue side
def test_retries_are_bounded_and_the_job_ends_failed_with_the_reason(jobs):
    record = new_job(jobs, max_attempts=3)
    calls = []

    def attempt(job_id):
        calls.append(job_id)
        return AttemptResult("retry", "internal_error", "RuntimeError: CUDA error: out of memory")

    for _ in range(2):
        with pytest.raises(RetryJob):
            consume_job(record.id, jobs, attempt, "w1")
        assert jobs.get(record.id).stage == "retrying"
    assert consume_job(record.id, jobs, attempt, "w1") == "failed"
    final = jobs.get(record.id)
    assert len(calls) == 3 and final.attempts == 3
    assert final.error.name == "internal_error" and "out of memory" in final.error.message
    assert "after 3 attempts" in final.error.message
    assert consume_job(record.id, jobs, attempt, "w1") == "failed" and len(calls) == 3  # late redelivery


def test_attempt_that_raises_counts_as_retryable(jobs):
    record = new_job(jobs, max_attempts=1)

    def attempt(job_id):
        raise ConnectionError("trainer replica died")

    assert consume_job(record.id, jobs, attempt, "w1") == "failed"
    message = jobs.get(record.id).error.message  # the details (a replica's address, pid) stay in the logs
    assert message == f"{INTERNAL_ERROR_MESSAGE} (after 1 attempts)" and "replica" not in message


def test_duplicate_delivery_of_a_running_job_is_dropped(jobs):
    record = new_job(jobs)
    jobs.begin_attempt(record.id, "w1")
    assert consume_job(record.id, jobs, lambda job_id: pytest.fail("ran twice"), "w2") == "duplicate"


def test_cancel_before_start_never_runs_the_job(jobs):
    record = new_job(jobs)
    jobs.request_cancel(record.id)
    assert consume_job(record.id, jobs, lambda job_id: pytest.fail("ran"), "w1") == "canceled"


def test_sweep_requeues_jobs_whose_worker_vanished_then_fails_them(jobs):
    record = new_job(jobs, max_attempts=2)
    jobs.begin_attempt(record.id, "w1")
    queued: list[str] = []
    jobs.clock.now += 301
    assert sweep_stale_jobs(jobs, queued.append, stale_after_s=300) == {record.id: "requeued"}
    assert queued == [record.id]
    assert sweep_stale_jobs(jobs, queued.append, stale_after_s=300) == {}  # heartbeat refreshed by the requeue
    jobs.begin_attempt(record.id, "w2")
    jobs.clock.now += 301
    assert sweep_stale_jobs(jobs, queued.append, stale_after_s=300) == {record.id: "failed"}
    assert "worker lost" in jobs.get(record.id).error.message
    assert jobs.active_ids() == []


def test_sweep_fails_jobs_queued_too_long(jobs):
    record = new_job(jobs)
    jobs.clock.now += 11
    assert sweep_stale_jobs(jobs, lambda job_id: None, queued_timeout_s=10) == {record.id: "failed"}


# ------------------------------------------------------------------------------------------------ costs
def test_cost_is_busy_seconds_times_gpu_fraction_times_price():
    model = CostModel(2.0, {"sds_training": 0.5, "novel_views": 0.25})
    busy = {"sds_training": 3600.0, "novel_views": 720.0, "background_removal": 10.0}
    assert model.gpu_seconds(busy) == {"sds_training": 1800.0, "novel_views": 180.0, "background_removal": 0.0}
    assert model.cost_usd(busy) == pytest.approx((1800 + 180) * 2.0 / 3600)


def test_default_price_is_the_aws_on_demand_price_of_the_gpu_type():
    assert price_per_gpu_hour("A10G") == pytest.approx(1.006)
    assert CostModel.for_gpu("H100", {}).price_per_gpu_hour == pytest.approx(98.32 / 8)
    assert CostModel.for_gpu("A10G", {}, price=0.5).price_per_gpu_hour == 0.5
    assert all(price > 0 for price in GPU_PRICES_USD_PER_HOUR.values())
    with pytest.raises(ValueError, match="A10G"):
        price_per_gpu_hour("TPU")


def test_one_bill_prices_busy_seconds_at_the_fractions_the_run_reported():
    # 3.6 USD per GPU-hour = 0.001 USD per GPU-second; the run reports novel_views on a quarter GPU
    model = CostModel(3.6, {"sds_training": 0.5, "novel_views": 1.0}, "T4")
    cost = bill(model, {"sds_training": 100.0, "novel_views": 20.0, "views_zip": 1.0}, {"novel_views": 0.25})
    # 100 × 0.5 + 20 × 0.25 + 1 × 0 (a stage without a fraction holds no GPU) = 55 GPU-seconds → 0.055 USD
    assert cost.gpu_seconds == {"sds_training": 50.0, "novel_views": 5.0, "views_zip": 0.0}
    assert cost.cost_usd == pytest.approx(0.055, abs=1e-12)
    assert cost.busy_s == {"sds_training": 100.0, "novel_views": 20.0, "views_zip": 1.0}
    assert cost.metadata() == {"usd": cost.cost_usd, "gpu_seconds": cost.gpu_seconds, "gpu_type": "T4",
                               "price_per_gpu_hour": 3.6, "gpu_fractions": {"sds_training": 0.5, "novel_views": 0.25}}
    assert model.gpu_fractions == {"sds_training": 0.5, "novel_views": 1.0}  # the replica's model is unchanged
    assert bill(model, {"sds_training": 7200.0}).cost_usd == pytest.approx(3.6)  # 2 h at half a GPU
    with pytest.raises(ValueError, match="fractions"):
        bill(model, {"novel_views": 1.0}, {"novel_views": -0.5})


def test_metrics_exposition_has_cost_histogram_with_hour_buckets():
    metrics = ServiceMetrics()
    metrics.observe_job({"sds_training": 40.0}, {"sds_training": 20.0}, cost_usd=0.0056)
    metrics.count_request("/v1/generation/{id}", "GET", 202)
    families = parse_exposition(metrics.exposition())
    buckets = [s for s in families["lift3d_request_cost_usd"] if s.name.endswith("_bucket")]
    assert any(s.labels["le"] == "0.01" and s.value == 1 for s in buckets)
    stage_les = {s.labels["le"] for s in families["lift3d_stage_seconds"] if s.name.endswith("_bucket")}
    assert "14400.0" in stage_les
    assert families["lift3d_gpu_seconds"][0].value == 20.0
    assert families["lift3d_requests"][0].labels == {"route": "/v1/generation/{id}", "method": "GET", "status": "202"}


# ------------------------------------------------------------------------------------------------ schemas
def test_request_kinds_check_their_inputs():
    GenerationRequest.with_image(b"x").check()
    GenerationRequest(kind="text-to-3d", prompt="a robot").check()
    for bad in (GenerationRequest(kind="image-to-3d"), GenerationRequest(kind="text-to-3d"),
                GenerationRequest(kind="multiview", image="eA==", prompt="both"),
                GenerationRequest(kind="multiview", image="eA==", return_3d=True)):
        with pytest.raises(InvalidInputError):
            bad.check()
    assert GenerationRequest(kind="multiview", prompt="p").params().return_3d is False


def test_decode_image_limits_and_errors():
    assert decode_image("data:image/png;base64," + base64.b64encode(b"abc").decode(), 10) == b"abc"
    with pytest.raises(PayloadTooLargeError):
        decode_image(base64.b64encode(b"x" * 100).decode(), 10)
    with pytest.raises(BadRequestError):
        decode_image("not base64!", 100)


# ------------------------------------------------------------------------------------------------ HTTP, fakes
@pytest.fixture
def api(tmp_path):
    from lift3d.service.api.app import create_api
    from lift3d.service.jobs.generation import GenerationService

    queued: list[str] = []
    jobs = sqlite_jobs(tmp_path)
    service = GenerationService(jobs, queued.append)
    metrics = ServiceMetrics()
    client = TestClient(create_api(service, metrics), raise_server_exceptions=False)
    return client, jobs, queued, metrics


def finish(jobs: JobStore, job_id: str, main_key: str = "model.glb", content_type: str = "model/gltf-binary"):
    jobs.store.put(f"generations/{job_id}/{main_key}", b"glTF-bytes")
    jobs.begin_attempt(job_id, "w")
    jobs.succeed(job_id, JobOutcome(main_key=main_key, content_type=content_type, artifacts=[main_key],
                                    cost_usd=0.01, gpu_seconds={"sds_training": 36.0}))


def test_http_submit_poll_and_negotiate(api):
    client, jobs, queued, metrics = api
    response = client.post("/v1/generation/image-to-3d", files={"image": DRAGON.read_bytes()},
                           data={"seed": "7", "num_views": "4", "remove_background": "false"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert queued == [job_id] and response.headers["location"] == f"/v1/generation/{job_id}"
    record = jobs.get(job_id)
    assert (record.params.seed, record.params.num_views, record.params.remove_background) == (7, 4, False)
    polled = client.get(f"/v1/generation/{job_id}")
    assert polled.status_code == 202
    assert polled.json() == {"id": job_id, "status": "queued", "stage": "queued", "progress": None, "eta_s": None}
    finish(jobs, job_id)
    binary = client.get(f"/v1/generation/{job_id}")
    assert binary.status_code == 200 and binary.headers["content-type"] == "model/gltf-binary"
    assert binary.content == b"glTF-bytes"
    body = client.get(f"/v1/generation/{job_id}", headers={"Accept": "application/json"}).json()
    assert base64.b64decode(body["content"]) == b"glTF-bytes"
    assert body["seed"] == 7 and body["finish_reason"] == "SUCCESS" and body["cost_usd"] == 0.01
    assert body["artifacts"][0]["url"] == f"/v1/generation/{job_id}/artifacts/model.glb"  # never a server path
    assert client.get(body["artifacts"][0]["url"]).content == b"glTF-bytes"
    families = parse_exposition(metrics.exposition())
    routes = {(s.labels["route"], s.labels["status"]) for s in families["lift3d_requests"]}
    assert ("/v1/generation/{id}", "202") in routes and ("/v1/generation/image-to-3d", "202") in routes


def test_http_json_submission_with_base64_image(api):
    client, jobs, queued, _ = api
    image = base64.b64encode(DRAGON.read_bytes()).decode()
    response = client.post("/v1/generation/multiview", json={"image": image, "num_views": 6})
    assert response.status_code == 202, response.text
    record = jobs.get(response.json()["id"])
    assert record.kind == "multiview" and record.params.return_3d is False and record.input_key.endswith(".png")


@pytest.mark.parametrize(
    "route, kwargs, code, name",
    [
        ("image-to-3d", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         "bad_request"),
        ("image-to-3d", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("image-to-3d", {"json": {"image": "%%%"}}, 400, "bad_request"),
        ("image-to-3d", {"json": {"num_views": 13, "image": "eA=="}}, 422, "invalid_parameters"),
        ("image-to-3d", {"data": {"seed": "-1"}, "files": {"image": b"png"}}, 422, "invalid_parameters"),
        ("image-to-3d", {"files": {"image": b"GIF89a not supported"}}, 422, "invalid_parameters"),
        ("image-to-3d", {"json": {"prompt": "no image"}}, 422, "invalid_parameters"),
        ("text-to-3d", {"json": {"prompt": "x", "unknown_field": 1}}, 422, "invalid_parameters"),
        ("image-to-3d", {"files": {"image": b"\x89PNG" + b"0" * (21 * 1024 * 1024)}}, 413, "payload_too_large"),
    ],
)
def test_http_submission_errors_use_the_envelope(api, route, kwargs, code, name):
    client, _, queued, _ = api
    response = client.post(f"/v1/generation/{route}", **kwargs)
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == name and body["errors"]
    assert queued == []


def test_http_not_found_failed_canceled(api):
    client, jobs, _, _ = api
    missing = client.get("/v1/generation/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["name"] == "generation_not_found"
    assert client.get("/v1/nothing-here").status_code == 404
    failed = new_job(jobs)
    jobs.begin_attempt(failed.id, "w")
    jobs.fail(failed.id, "internal_error", "RuntimeError: boom (after 3 attempts)")
    body = client.get(f"/v1/generation/{failed.id}").json()
    assert body == {"id": failed.id, "name": "internal_error", "errors": ["RuntimeError: boom (after 3 attempts)"]}
    canceled = new_job(jobs)
    assert client.delete(f"/v1/generation/{canceled.id}").status_code == 200
    assert client.get(f"/v1/generation/{canceled.id}").status_code == 410


def test_unexpected_errors_give_500_without_traceback(tmp_path):
    from lift3d.service.api.app import create_api
    from lift3d.service.jobs.generation import GenerationService

    class BrokenStore(LocalStore):
        def get(self, key):
            raise OSError("disk on fire at /secret/path")

    jobs = sqlite_jobs(tmp_path, BrokenStore(tmp_path / "store"))
    record = jobs.create(JobRecord.new("text-to-3d", GenerationParams()))
    finish(jobs, record.id)  # the record is readable; its artifact is not
    service = GenerationService(jobs, lambda job_id: None)
    client = TestClient(create_api(service, ServiceMetrics()), raise_server_exceptions=False)
    response = client.get("/v1/generation/" + record.id)
    assert response.status_code == 500
    body = response.json()
    assert body["name"] == "internal_error" and "secret" not in json.dumps(body) and "Traceback" not in response.text


def test_queue_failure_fails_the_job_instead_of_losing_it(tmp_path):
    from lift3d.service.api.app import create_api
    from lift3d.service.jobs.generation import GenerationService

    def enqueue(job_id):
        raise ConnectionError("broker down")

    jobs = sqlite_jobs(tmp_path)
    client = TestClient(create_api(GenerationService(jobs, enqueue), ServiceMetrics()),
                        raise_server_exceptions=False)
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"})
    assert response.status_code == 503 and response.json()["name"] == "service_unavailable"
    assert jobs.active_ids() == []
    (job_id,) = [key.split("/")[1] for key in jobs.store.list("generations/")] or [None]
    assert job_id is None  # a prompt job has no upload: nothing in the store; the record says failed


def test_openapi_documents_the_routes(api):
    client = api[0]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/generation/image-to-3d", "/v1/generation/text-to-3d", "/v1/generation/multiview",
            "/v1/generation/{id}", "/healthz"} <= set(paths)
    assert client.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------------------ in process
def _png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_views_only_job_runs_in_process_and_writes_zip_and_metadata(jobs):
    from lift3d.service.worker.runner import JobRunner
    from lift3d.pipeline.providers import InProcessStages
    from lift3d.presets import get_preset

    preset = get_preset("tiny")
    params = GenerationParams(seed=1, num_views=4, num_multiview_steps=2, return_3d=False)
    record = JobRecord.new("multiview", params, now=jobs.clock())
    record = record.model_copy(update={"input_key": record.prefix + "upload.png"})
    jobs.store.put(record.input_key, DRAGON.read_bytes())
    jobs.create(record)
    runner = JobRunner(jobs, InProcessStages(preset), preset, CostModel(1.0, {"novel_views": 0.5}), heartbeat_s=0.2)
    assert consume_job(record.id, jobs, runner.attempt, "local") == "succeeded"
    outcome = jobs.get(record.id).outcome
    assert outcome.main_key == "views.zip" and outcome.random_weights
    assert outcome.gpu_seconds["novel_views"] == pytest.approx(outcome.busy_s["novel_views"] * 0.5)
    metadata = json.loads(jobs.store.get(record.prefix + "metadata.json"))
    assert metadata["cost"]["usd"] == pytest.approx(outcome.cost_usd) and metadata["seed"] == 1
    assert len(metadata["views"]) == 4
