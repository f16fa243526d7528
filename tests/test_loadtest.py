"""``make loadtest`` (loadtest/run.py + loadtest/locustfile.py) against the in-process API, without Ray: the HTTP
stack as the ingress builds it over SQLite, served by uvicorn on a loopback port, and a fake worker that ends
jobs quickly (most succeed with artifacts, some fail, some are canceled), so that every route of the mix runs.
The report's figures must agree with each other; the bounds must refuse what they promise to refuse."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import free_port, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]


def _load_run_module():
    """loadtest/run.py (not a package; it does not import locust, so no gevent patching in this process)."""
    spec = importlib.util.spec_from_file_location("lift3d_loadtest_run", ROOT / "loadtest" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loadtest_run = _load_run_module()

if importlib.util.find_spec("locust") is None:
    pytest.fail("locust is not installed: pip install -e '.[load]' (the load-test tests must not be skipped)",
                pytrace=False)


class FakeWorker:
    """Ends each enqueued job ``delay_s`` after it was enqueued, in turn: succeeded (artifacts written), succeeded,
    succeeded, failed, canceled."""

    def __init__(self, state, delay_s: float = 0.4) -> None:
        self.state, self.delay_s = state, delay_s
        self.queue: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def enqueue(self, job_id: str) -> None:
        self.queue.put((time.monotonic() + self.delay_s, job_id))

    def _loop(self) -> None:
        from lift3d.service.jobs.store import InvalidTransition

        while not self.stop.is_set():
            try:
                due, job_id = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self._end(job_id)
            except InvalidTransition:  # canceled meanwhile (the load test cancels what is pending at its end)
                pass

    def _end(self, job_id: str) -> None:
        from lift3d.service.jobs.store import JobOutcome

        jobs, turn = self.state.jobs, self.count % 5
        self.count += 1
        if turn == 4:
            jobs.request_cancel(job_id)
            return
        record = jobs.begin_attempt(job_id, "fake-worker")
        if turn == 3:
            jobs.fail(job_id, "internal_error", "CUDA out of memory (fake)", attempt=record.attempts)
            return
        if record.params.return_3d:
            main, media, content = "model.glb", "model/gltf-binary", b"glTF" + bytes(60)
        else:
            main, media, content = "views.zip", "application/zip", b"PK\x03\x04" + bytes(60)
        jobs.store.put(record.prefix + main, content)
        jobs.store.put(record.prefix + "metadata.json", json.dumps({"id": job_id, "kind": record.kind}).encode())
        jobs.succeed(job_id, JobOutcome(main_key=main, content_type=media, artifacts=[main, "metadata.json"]),
                     attempt=record.attempts)


@contextlib.contextmanager
def served_api(tmp_path: Path):
    """The production HTTP stack on a free port of 127.0.0.1; yields ``(base URL, database URL)``."""
    from lift3d.service.config import ServiceConfig
    from lift3d.service.metrics import ServiceMetrics
    from lift3d.service.server import build_api, build_service
    from lift3d.service.state import open_state

    database_url = f"sqlite:///{tmp_path / 'lift3d.db'}"
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=database_url,
                           default_rate_limit_per_min=1_000_000, default_max_concurrent_jobs=0, max_queue_depth=0)
    state = open_state(config)
    worker = FakeWorker(state)
    api = build_api(config, state, build_service(config, state, worker.enqueue), ServiceMetrics())
    worker.thread.start()
    try:
        with serve_in_thread(api) as url:
            yield url, database_url
    finally:
        worker.stop.set()
        worker.thread.join(10)
        state.close()


def test_a_short_run_reports_consistent_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LIFT3D_API_KEY", raising=False)
    monkeypatch.setenv("LIFT3D_POLL_INTERVAL_S", "0.2")
    out = tmp_path / "reports"
    with served_api(tmp_path) as (url, database_url):
        # 6 creators and 2 watchers; the key allows 3 jobs at once, so some submissions get 429 + Retry-After
        code = loadtest_run.main(["--host", url, "--users", "8", "--spawn-rate", "8", "--run-time", "6s",
                                  "--out", str(out), "--database-url", database_url, "--max-concurrent", "3"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    (folder,) = out.iterdir()
    report = json.loads((folder / "report.json").read_text())
    assert "requests/s" in (folder / "report.md").read_text()
    routes = {entry["route"]: entry for entry in report["routes"]}

    # no errors at all, in particular no 5xx; a failed job's 500 is the job's outcome, not an error
    assert report["errors"]["total"] == 0 and report["errors"]["server_errors"] == 0, report["errors"]
    assert all(entry["failures"] == 0 for entry in routes.values())

    # every submit route ran; its 202 answers are the accepted jobs
    submits = [entry for entry in routes.values() if entry["group"] == "submit"]
    assert {entry["route"] for entry in submits} == {"POST /v1/generation/image-to-3d",
                                                     "POST /v1/generation/multiview", "POST /v1/generation/text-to-3d"}
    jobs = report["jobs"]
    assert sum(entry["statuses"].get("202", 0) for entry in submits) == jobs["accepted"] > 0
    assert sum(jobs["accepted_by_kind"].values()) == jobs["accepted"]
    # 429s are back-pressure: counted apart, every one honoured (Retry-After: 10 s each)
    refused = sum(entry["statuses"].get("429", 0) for entry in submits)
    assert refused == report["back_pressure"]["429"] >= 1
    assert report["back_pressure"]["retry_after_waited_s"] == pytest.approx(10.0 * refused)
    assert sum(entry["requests"] for entry in submits) == jobs["accepted"] + refused

    # every accepted job either finished (by outcome) or is pending
    finished = jobs["finished"]
    assert jobs["finished_total"] == sum(finished.values())
    assert jobs["accepted"] == jobs["finished_total"] + jobs["pending"]
    assert finished["succeeded"] >= 1 and finished["lost"] == 0
    assert jobs["canceled_after_run"] <= jobs["pending"]  # one may end between the last poll and the cancel

    # poll and download routes, with sane percentiles
    for group in ("submit", "poll", "download"):
        entries = [entry for entry in routes.values() if entry["group"] == group]
        assert entries and all(entry["requests"] > 0 for entry in entries), group
        for entry in entries:
            assert 0 <= entry["p50_ms"] <= entry["p99_ms"], entry  # Locust's percentiles: 2 significant digits
    assert routes["GET /v1/generation/{id} (content)"]["requests"] == finished["succeeded"]
    assert routes["GET /v1/generation/{id}/artifacts/metadata.json"]["requests"] == finished["succeeded"]
    assert report["totals"]["rps"] > 0 and report["downloaded_bytes"] > 0


@pytest.mark.parametrize("args, message", [
    (["--host", "http://192.0.2.1:8000", "-u", "1", "-t", "1s"], "loopback only"),
    (["--host", "http://127.0.0.1:9", "-u", "1"], "without --run-time"),
    (["--host", "http://127.0.0.1:9", "-u", "201", "-t", "1s"], "at most 200"),
])
def test_the_locustfile_refuses_unbounded_or_remote_runs(args, message):
    done = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
                           "--headless", *args], capture_output=True, text=True, timeout=60,
                          env={**_environ(), "LIFT3D_API_KEY": "sk-unused"})
    assert done.returncode != 0 and message in done.stdout + done.stderr


def test_run_refuses_a_remote_host_before_anything_else(capsys):
    assert loadtest_run.main(["--host", "http://192.0.2.1:8000", "--api-key", "sk-unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loopback only" in err[0]
    assert loadtest_run.main(["--users", "500", "--api-key", "sk-unused"]) == 2
    assert "at most 200" in capsys.readouterr().err


def test_run_fails_with_one_line_when_nothing_listens(capsys, tmp_path):
    port = free_port()  # closed again: nothing listens there
    assert loadtest_run.main(["--host", f"http://127.0.0.1:{port}", "--api-key", "sk-unused",
                              "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make serve" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_run_fails_with_one_line_when_the_service_does_not_know_the_key(tmp_path, capsys):
    with served_api(tmp_path) as (url, _database_url):
        code = loadtest_run.main(["--host", url, "--api-key", "sk-not-a-key", "--out", str(tmp_path / "reports")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "does not know the load-test key" in err[0]


def test_run_time_syntax():
    assert [loadtest_run.run_time_seconds(t) for t in ("60s", "5m", "1h30m", "90")] == [60, 300, 5400, 90]
    for bad in ("", "0s", "5 minutes", "-1"):
        with pytest.raises(loadtest_run.SetupError):
            loadtest_run.run_time_seconds(bad)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFT3D_")}
