"""Live progress: the server-sent event stream (exact events and ids, Last-Event-ID resume, throttling, keep-alive,
404s) and Prefer: wait on a job-creating POST — over fake record sources, so the timings are the test's own."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from support import serve_in_thread, wait_until

from lift3d.params import GenerationParams
from lift3d.service.jobs.events import EventStream, parse_last_event_id, parse_prefer_wait, result_summary
from lift3d.service.api.routes.events import add_event_routes, apply_prefer_wait
from lift3d.service.jobs.store import JobError, JobNotFound, JobOutcome, JobRecord
from lift3d.service.schemas import Progress

JOB = "c" * 32
OUTCOME = JobOutcome(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb", "views.png"],
                     timings_s={"sds_training": 3.5}, gpu_seconds={"sds_training": 1.75}, cost_usd=0.0005)


def lifecycle() -> list[JobRecord]:
    """queued (t=100) → running/starting (101) → sds_training 1..5/5 (102..106) → succeeded (110)."""
    queued = JobRecord.new("image-to-3d", GenerationParams(seed=7), job_id=JOB, now=100.0)
    states = [queued, queued.model_copy(update=dict(status="running", stage="starting", attempts=1, updated_at=101.0))]
    for step in range(1, 6):
        states.append(queued.model_copy(update=dict(status="running", stage="sds_training", attempts=1,
                                                    progress=Progress(step=step, total=5), eta_s=float(5 - step),
                                                    updated_at=101.0 + step)))
    states.append(queued.model_copy(update=dict(status="succeeded", stage=None, attempts=1, outcome=OUTCOME,
                                                eta_s=0.0, updated_at=110.0)))
    return states


class Source:
    """Hands out ``states`` one per read (the last one forever); only owner ``key_a`` may read ``JOB``."""

    def __init__(self, states: list[JobRecord], start: int = 0) -> None:
        self.states, self.reads = states, start

    def get(self, job_id: str, owner_id: str | None = "key_a") -> JobRecord:
        if job_id != JOB or owner_id != "key_a":
            raise JobNotFound(job_id)
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        return state


def owner(x_owner: str = Header("key_a")) -> str:
    return x_owner


def events_app(source, **options) -> TestClient:
    api = FastAPI()
    options = {"poll_interval_s": 0.001, "progress_interval_s": 0.0, **options}
    add_event_routes(api, source.get, caller=owner, **options)
    return TestClient(api)


def read_events(client: TestClient, headers: dict | None = None) -> tuple[int, str, list[tuple[str, str, dict]]]:
    """(status, content type, [(id, event, data)]); comment lines are skipped."""
    with client.stream("GET", f"/v1/generation/{JOB}/events", headers=headers or {}) as response:
        lines = list(response.iter_lines())
        status, content_type = response.status_code, response.headers.get("content-type", "")
    events, fields = [], {}
    for line in lines + [""]:
        if line == "":
            if fields:
                events.append((fields.get("id"), fields.get("event"), json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return status, content_type, events


SUCCEEDED = {"id": JOB, "status": "succeeded", "finish_reason": "SUCCESS", "seed": 7,
             "content_type": "model/gltf-binary", "timings_s": {"sds_training": 3.5},
             "gpu_seconds": {"sds_training": 1.75}, "cost_usd": 0.0005, "random_weights": False,
             "artifacts": [{"name": "model.glb", "url": f"/v1/generation/{JOB}/artifacts/model.glb"},
                           {"name": "views.png", "url": f"/v1/generation/{JOB}/artifacts/views.png"}]}


def progress(step: int) -> dict:
    return {"stage": "sds_training", "step": step, "total": 5, "eta_s": float(5 - step)}


# ------------------------------------------------------------------------------------------------ the stream
def test_stream_sends_status_progress_and_the_terminal_event_with_growing_ids():
    status, content_type, events = read_events(events_app(Source(lifecycle())))
    assert status == 200 and content_type.startswith("text/event-stream")
    # ids: 4 × updated_at in ms + (0 status, 1 progress, 2 terminal)
    assert events == [
        ("400000", "status", {"status": "queued", "stage": "queued", "eta_s": None}),
        ("404000", "status", {"status": "running", "stage": "starting", "eta_s": None}),
        ("408000", "status", {"status": "running", "stage": "sds_training", "eta_s": 4.0}),
        ("408001", "progress", progress(1)),
        ("412001", "progress", progress(2)),
        ("416001", "progress", progress(3)),
        ("420001", "progress", progress(4)),
        ("424001", "progress", progress(5)),
        ("440002", "succeeded", SUCCEEDED),
    ]


def test_last_event_id_resumes_without_repeating_what_the_client_saw():
    # the client saw up to progress 3/5 (416001); the record is still at 3/5 when it reconnects
    _, _, events = read_events(events_app(Source(lifecycle(), start=4)), {"Last-Event-ID": "416001"})
    assert [(i, e) for i, e, _ in events] == [("420001", "progress"), ("424001", "progress"),
                                              ("440002", "succeeded")]
    # it saw 2/5 (412001); the record moved on to 3/5: the newer snapshot's status and progress come first
    _, _, events = read_events(events_app(Source(lifecycle(), start=4)), {"Last-Event-ID": "412001"})
    assert [(i, e) for i, e, _ in events][:2] == [("416000", "status"), ("416001", "progress")]
    assert events[1][2] == progress(3)


def test_a_finished_job_sends_only_the_terminal_event_and_204_once_it_was_seen():
    finished = Source(lifecycle(), start=7)
    assert read_events(events_app(finished))[2] == [("440002", "succeeded", SUCCEEDED)]
    assert read_events(events_app(finished), {"Last-Event-ID": "412001"})[2] == [
        ("440002", "succeeded", SUCCEEDED)]
    status, _, events = read_events(events_app(finished), {"Last-Event-ID": "440002"})
    assert (status, events) == (204, [])
    # a Last-Event-ID that is not ours starts afresh
    assert read_events(events_app(finished), {"Last-Event-ID": "abc"})[2][0][0] == "440002"


@pytest.mark.parametrize("status, error, expected", [
    ("failed", JobError(name="invalid_parameters", message="no surface found"),
     {"id": JOB, "name": "invalid_parameters", "errors": ["no surface found"]}),
    ("canceled", None, {"id": JOB, "name": "generation_canceled", "errors": ["the generation was canceled"]}),
])
def test_failed_and_canceled_streams_end_with_the_error_envelope(status, error, expected):
    states = lifecycle()[:3] + [lifecycle()[2].model_copy(update=dict(status=status, error=error, updated_at=120.0))]
    _, _, events = read_events(events_app(Source(states)))
    assert events[-1] == ("480002", status, expected)
    assert [e for _, e, _ in events] == ["status", "status", "status", "progress", status]


def test_unknown_and_other_keys_jobs_are_404_before_the_stream():
    client = events_app(Source(lifecycle()))
    response = client.get(f"/v1/generation/{'d' * 32}/events")
    assert response.status_code == 404
    assert response.json() == {"id": "d" * 32, "name": "generation_not_found",
                               "errors": [f"no generation with id {'d' * 32!r}"]}
    response = client.get(f"/v1/generation/{JOB}/events", headers={"x-owner": "key_b"})
    assert response.status_code == 404 and response.json()["name"] == "generation_not_found"


class Ticking:
    """A job whose progress goes 1..100/100 in its first 0.1 s and that succeeds at 0.15 s (wall clock)."""

    def __init__(self, finish_s: float = 0.15) -> None:
        self.t0, self.finish_s = time.monotonic(), finish_s
        self.base = JobRecord.new("image-to-3d", GenerationParams(seed=1), job_id=JOB, now=1000.0)

    def get(self, job_id: str, owner_id=None) -> JobRecord:
        elapsed = time.monotonic() - self.t0
        if elapsed >= self.finish_s:
            return self.base.model_copy(update=dict(status="succeeded", stage=None, outcome=OUTCOME,
                                                    updated_at=1000.0 + self.finish_s))
        step = min(100, 1 + int(elapsed / 0.001))
        return self.base.model_copy(update=dict(status="running", stage="sds_training", updated_at=1000 + elapsed,
                                                progress=Progress(step=step, total=100)))


def test_progress_events_are_throttled_to_a_few_per_second():
    source = Ticking()
    api = FastAPI()
    add_event_routes(api, source.get, poll_interval_s=0.002, progress_interval_s=0.25)
    _, _, events = read_events(TestClient(api))
    names = [e for _, e, _ in events]
    # ~50 polls saw ~100 progress values; within 0.15 s at most one progress event may pass a 0.25 s throttle
    assert names[0] == "status" and names[-1] == "succeeded"
    assert names.count("progress") <= 1 and len(names) <= 3
    ids = [int(i) for i, _, _ in events]
    assert ids == sorted(set(ids))


def test_throttle_counts_from_the_last_progress_event_sent():
    clock = [0.0]
    stream = EventStream(result_summary, progress_interval_s=0.25, clock=lambda: clock[0])
    base = JobRecord.new("image-to-3d", GenerationParams(seed=1), job_id=JOB, now=1000.0)
    sent = []
    for step in range(1, 101):  # 100 updates, 1 ms apart
        clock[0] = (step - 1) * 0.001
        record = base.model_copy(update=dict(status="running", stage="sds_training", updated_at=1000 + clock[0],
                                             progress=Progress(step=step, total=100)))
        sent += [(e.event, e.data.get("step")) for e in stream.feed(record)]
    assert sent == [("status", None), ("progress", 1)]
    clock[0] = 0.25
    sent = [(e.event, e.data["step"]) for e in stream.feed(record)]  # the same snapshot, once the interval passed
    assert sent == [("progress", 100)]
    assert stream.feed(record) == []


def test_idle_streams_carry_keep_alive_comments():
    source = Ticking(finish_s=0.4)
    api = FastAPI()
    add_event_routes(api, source.get, poll_interval_s=0.05, progress_interval_s=10.0, keepalive_s=0.1)
    with TestClient(api).stream("GET", f"/v1/generation/{JOB}/events") as response:
        lines = list(response.iter_lines())
    assert response.headers["cache-control"] == "no-store"
    assert sum(line.startswith(": ping") for line in lines) >= 2
    assert "event: succeeded" in lines


def test_the_server_stops_polling_when_the_client_disconnects():
    import httpx

    class Forever:
        reads = 0

        def get(self, job_id, owner_id=None):
            self.reads += 1
            return lifecycle()[2].model_copy(update={"updated_at": 102.0 + self.reads,
                                                     "progress": Progress(step=self.reads, total=10**6)})

    source, api = Forever(), FastAPI()
    add_event_routes(api, source.get, poll_interval_s=0.01, progress_interval_s=0.0)
    with serve_in_thread(api) as base:
        with httpx.stream("GET", f"{base}/v1/generation/{JOB}/events", timeout=5) as response:
            progress_events = 0
            for line in response.iter_lines():
                progress_events += line.startswith("event: progress")
                if progress_events == 5:
                    break

        def quiet(window_s: float = 0.05) -> bool:  # no read for window_s (the stream polls every 0.01 s)
            before = source.reads
            time.sleep(window_s)
            return source.reads == before

        wait_until(quiet, 5, "the disconnect reaches the app", interval_s=0.0)
        before = source.reads
        assert quiet(0.3) and before >= 5  # and no read for 30 polls' time


def test_last_event_id_parsing():
    assert [parse_last_event_id(v) for v in (None, "", "416001", " 7 ", "-1", "1.5", "x", "9" * 31)] == [
        None, None, 416001, 7, None, None, None, None]


# ------------------------------------------------------------------------------------------------ Prefer: wait
@pytest.mark.parametrize("value, seconds", [
    ("wait=5", 5), ("respond-async, wait=10", 10), ('wait="7"', 7), ("WAIT = 3", 3), ("wait=0", 0),
    ("wait=61", 60), ("wait=100000", 60), (["handling=lenient", "wait=2"], 2), ("wait=2; foo=bar", 2),
    ("wait=-1", None), ("wait=1.5", None), ("wait=abc", None), ("wait", None), ("", None), (None, None),
    ("respond-async", None),
])
def test_prefer_wait_parsing(value, seconds):
    assert parse_prefer_wait(value) == seconds


class Clocked:
    """One job that succeeds ``finish_s`` seconds after it is created (None: never)."""

    def __init__(self, finish_s: float | None) -> None:
        self.finish_s, self.t0 = finish_s, None
        self.base = JobRecord.new("text-to-3d", GenerationParams(seed=3), job_id=JOB, now=2000.0)
        self.lock = threading.Lock()

    def create(self) -> str:
        self.t0 = time.monotonic()
        return JOB

    def get(self, job_id: str) -> JobRecord:
        if job_id != JOB or self.t0 is None:
            raise JobNotFound(job_id)
        if self.finish_s is not None and time.monotonic() - self.t0 >= self.finish_s:
            return self.base.model_copy(update=dict(status="succeeded", outcome=OUTCOME, updated_at=2001.0))
        return self.base.model_copy(update=dict(status="running", stage="sds_training"))


def submit_app(jobs: Clocked) -> TestClient:
    api = FastAPI()

    @api.post("/v1/generation/text-to-3d")
    async def submit(request: Request):
        job_id = jobs.create()
        accepted = JSONResponse({"id": job_id}, status_code=202, headers={"Location": f"/v1/generation/{job_id}"})
        return await apply_prefer_wait(request, accepted, job_id=job_id, get_record=jobs.get,
                                       result=lambda: JSONResponse(result_summary(jobs.get(job_id))),
                                       poll_interval_s=0.02)

    return TestClient(api)


def timed_post(client: TestClient, prefer: str | None):
    started = time.monotonic()
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"},
                           headers={"Prefer": prefer} if prefer else {})
    return response, time.monotonic() - started


def test_prefer_wait_returns_the_result_of_a_job_that_ends_in_time():
    response, elapsed = timed_post(submit_app(Clocked(finish_s=0.2)), "wait=1")
    assert response.status_code == 200 and 0.2 <= elapsed < 0.9
    assert response.json() == {**SUCCEEDED, "seed": 3}
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["vary"] == "Prefer"


def test_prefer_wait_gives_the_202_when_the_time_runs_out():
    response, elapsed = timed_post(submit_app(Clocked(finish_s=None)), "wait=1")
    assert response.status_code == 202 and 1.0 <= elapsed < 1.8
    assert response.json() == {"id": JOB} and response.headers["location"] == f"/v1/generation/{JOB}"
    assert response.headers["preference-applied"] == "wait=1"


@pytest.mark.parametrize("prefer", [None, "wait=soon", "respond-async"])
def test_without_a_valid_wait_the_post_answers_at_once(prefer):
    response, elapsed = timed_post(submit_app(Clocked(finish_s=None)), prefer)
    assert response.status_code == 202 and elapsed < 0.5
    assert "preference-applied" not in response.headers


# ------------------------------------------------------------------------------------------------ the real app
def test_the_api_streams_a_job_of_the_sql_job_store(database, tmp_path):
    """create_api (auth off) over GenerationService and JobStore: a worker thread moves the job while the stream
    is open, each time after the stream has read the previous state (no sleeps to tune)."""
    from lift3d.io.storage import LocalStore
    from lift3d.service.api.app import create_api
    from lift3d.service.jobs.generation import GenerationService
    from lift3d.service.jobs.store import JobStore
    from lift3d.service.metrics import ServiceMetrics

    class Watched(JobStore):
        """Counts reads, so the worker can wait until the stream has seen its last write."""

        reads, seen = 0, threading.Condition()

        def get(self, *args, **kwargs):
            record = super().get(*args, **kwargs)
            with self.seen:
                self.reads += 1
                self.seen.notify_all()
            return record

        def wait_until_seen(self):  # the second read that ends from now on began after the last write
            with self.seen:
                target = self.reads + 2
                assert self.seen.wait_for(lambda: self.reads >= target, timeout=10)

    jobs, queue = Watched(database, LocalStore(tmp_path)), []
    client = TestClient(create_api(GenerationService(jobs, queue.append), ServiceMetrics()))
    job_id = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot", "seed": 5}).json()["id"]
    assert client.get(f"/v1/generation/{'0' * 32}/events").status_code == 404
    jobs.store.put(f"generations/{job_id}/model.glb", b"glb", "model/gltf-binary")

    def worker():
        jobs.wait_until_seen()
        attempt = jobs.begin_attempt(job_id, "w1").attempts
        for step in (1, 2):
            jobs.wait_until_seen()
            jobs.heartbeat(job_id, attempt, stage="sds_training", progress=Progress(step=step, total=2))
        jobs.wait_until_seen()
        jobs.succeed(job_id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                        artifacts=["model.glb"], cost_usd=0.25), attempt)

    thread = threading.Thread(target=worker)
    thread.start()
    with client.stream("GET", f"/v1/generation/{job_id}/events") as response:
        lines = list(response.iter_lines())
    thread.join()
    events, fields = [], {}
    for line in lines:
        if line == "" and fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
            fields = {}
        elif line and not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    assert [(e, d) for _, e, d in events[:-1]] == [
        ("status", {"status": "queued", "stage": "queued", "eta_s": None}),
        ("status", {"status": "running", "stage": "starting", "eta_s": None}),
        ("status", {"status": "running", "stage": "sds_training", "eta_s": None}),
        ("progress", {"stage": "sds_training", "step": 1, "total": 2, "eta_s": None}),
        ("progress", {"stage": "sds_training", "step": 2, "total": 2, "eta_s": None}),
    ]
    last_id, terminal, summary = events[-1]
    assert terminal == "succeeded"
    assert summary == {"id": job_id, "status": "succeeded", "finish_reason": "SUCCESS", "seed": 5,
                       "content_type": "model/gltf-binary", "timings_s": {}, "gpu_seconds": {}, "cost_usd": 0.25,
                       "artifacts": [{"name": "model.glb", "url": f"/v1/generation/{job_id}/artifacts/model.glb"}],
                       "random_weights": False}
    ids = [i for i, _, _ in events]
    assert ids == sorted(set(ids))
    record = jobs.get(job_id)
    assert last_id == int(round(record.updated_at * 1000)) * 4 + 2
