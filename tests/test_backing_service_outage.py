"""A backing service that cannot be reached: ``503`` + ``Retry-After`` at the door, patience in the workers.

The real-server versions (S3 stopped for 30 s, Redis restarted, replicas killed) are in ``tests/faults/``."""

import io

import pytest
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.exc import OperationalError

from lift3d.io.images import ImageLimits
from lift3d.io.storage import LocalStore, StoredObjectNotFound
from lift3d.io.storage.retrying import RetryingStore, is_unavailable_error
from lift3d.params import GenerationParams
from lift3d.service.api.app import create_api
from lift3d.service.db import Database, migrate
from lift3d.service.jobs.generation import GenerationService
from lift3d.service.jobs.store import JobOutcome, JobRecord, JobStore
from lift3d.service.metrics import ServiceMetrics

S3_DOWN = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket")


class FlakyStore:
    """A LocalStore whose calls fail as an unreachable S3 would while ``down`` > 0 (each call uses one)."""

    def __init__(self, root, down: int = 0) -> None:
        self.inner, self.down, self.calls = LocalStore(root), down, 0

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.down > 0:
                self.down -= 1
                raise S3_DOWN
            return method(*args, **kwargs)

        return call


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(111, "Connection refused"),
    S3_DOWN,
    OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
    TimeoutError("timed out"),
])
def test_unreachable_services_are_recognised_also_when_wrapped(exc):
    assert is_unavailable_error(exc)
    try:
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("writing the artifact failed") from inner
    except RuntimeError as wrapped:
        assert is_unavailable_error(wrapped)


@pytest.mark.parametrize("exc", [StoredObjectNotFound("generations/x/model.glb"), ValueError("bad key"),
                                 KeyError("x"), PermissionError("denied")])
def test_errors_about_the_request_are_not_outages(exc):
    assert not is_unavailable_error(exc)


def test_retrying_store_waits_with_backoff_until_the_store_is_back(tmp_path):
    flaky, waits, now = FlakyStore(tmp_path, down=4), [], [0.0]

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    store = RetryingStore(flaky, budget_s=30, sleep=sleep, clock=lambda: now[0])
    store.put("generations/a/model.glb", b"glb")
    assert waits == [0.5, 1.0, 2.0, 4.0] and flaky.calls == 5
    assert store.get("generations/a/model.glb") == b"glb"  # no waiting once it is up
    assert waits == [0.5, 1.0, 2.0, 4.0]


def test_retrying_store_gives_up_after_its_budget_and_passes_other_errors_at_once(tmp_path):
    flaky, waits, now = FlakyStore(tmp_path, down=100), [], [0.0]

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    store = RetryingStore(flaky, budget_s=10, max_wait_s=4, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(EndpointConnectionError):
        store.put("generations/a/model.glb", b"glb")
    assert waits == [0.5, 1.0, 2.0, 4.0] and sum(waits) <= 10  # the next wait (4 s) would pass the budget
    flaky.down, waits[:] = 0, []
    with pytest.raises(StoredObjectNotFound):
        store.get("generations/missing")
    assert waits == []


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def outage(tmp_path):
    """An API over a store that is up until ``flaky.down`` is set (SQLite stays up)."""
    database = Database(f"sqlite:///{tmp_path / 'lift3d.db'}")
    migrate(database)
    flaky = FlakyStore(tmp_path / "store")
    jobs = JobStore(database, flaky)
    service = GenerationService(jobs, lambda job_id: None, limits=ImageLimits())
    client = TestClient(create_api(service, ServiceMetrics(), limits=service.limits), raise_server_exceptions=False)
    return client, jobs, flaky


def test_the_door_answers_503_with_retry_after_while_the_store_is_down(outage):
    client, jobs, flaky = outage
    done = jobs.create(JobRecord.new("image-to-3d", GenerationParams()))
    jobs.begin_attempt(done.id, "w")
    flaky.inner.put(f"{done.prefix}model.glb", b"glTF")
    jobs.succeed(done.id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb"]))

    flaky.down = 10**6
    for response in (client.get(f"/v1/generation/{done.id}"),                       # the result's bytes
                     client.get(f"/v1/generation/{done.id}/artifacts/model.glb"),
                     client.post("/v1/generation/image-to-3d", files={"image": ("a.png", _png(), "image/png")})):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "5"
        body = response.json()
        assert body["name"] == "service_unavailable" and "unavailable" in body["errors"][0]
        assert "127.0.0.1" not in response.text  # the endpoint stays in the log
    flaky.down = 0
    assert client.get(f"/v1/generation/{done.id}").content == b"glTF"
    assert jobs.active_ids() == []  # the refused upload left no job behind
