"""Helpers of the fault tests: the graph's handle (:class:`FaultGraph`), pollers. The tiny graph runs on the
session's ONE local Ray cluster (the ``ray_cluster`` fixture: 2 CPUs, fake GPUs), on the parts a cluster runs on:
the artifact store on an S3-protocol server (moto, in this process: stoppable), the job queue on a real
``redis-server`` (append-only file: restartable without losing messages), the database in SQLite. Leases are short
(3 s) so that lost holders are noticed in seconds.

The module claims the cluster for itself (``ray_cluster.use``: any other graph is stopped first) and gives it back
at its end, so the fault graph never shares the cluster with the serve tests' graph.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support.redis_server import RedisServer
from support.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]

_ONE = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
FAULT_DEPLOYMENT_OPTIONS = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": _ONE},
    "JobConsumer": {"ray_actor_options": {"num_cpus": 0.1}, "graceful_shutdown_timeout_s": 1},
    "TextToImage": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": _ONE},
    "BackgroundRemoval": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.1}, "autoscaling_config": _ONE},
    "MultiView": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.5}, "autoscaling_config": _ONE},
    "FeedForward": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": _ONE},
    # A stopped app must not wait 10 minutes for a running job (the cluster's setting): the job's lease runs out
    # and the restarted app requeues it.
    "NerfTrainer": {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}, "autoscaling_config": _ONE,
                    "max_ongoing_requests": 2, "graceful_shutdown_timeout_s": 1},
}
FAST = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 12, "seed": 3,
        "texture": False}
"""Parameters of the jobs here: the serve tests' sizes, without the texture bake (the slowest part of a tiny job's
export on 2 cores; nothing here is about textures)."""


@dataclass
class FaultGraph:
    url: str
    config: object
    jobs: object
    key: str
    key_id: str
    s3: S3Server
    redis: RedisServer
    accepted: list[str] = field(default_factory=list)
    """Every job id the graph answered 202 to, over the whole module (checked at the end)."""

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    def submit(self, body: dict | None = None) -> str:
        response = httpx.post(f"{self.url}/v1/generation/text-to-3d", headers=self.headers(), timeout=60,
                              json={"prompt": "a wooden toy robot", **FAST, **(body or {})})
        assert response.status_code == 202, response.text
        self.accepted.append(response.json()["id"])
        return response.json()["id"]

    def status(self, job_id: str) -> dict:
        return self.jobs.get(job_id).model_dump()

    def wait_for(self, job_id: str, predicate, timeout_s: float = 240.0, what: str = "condition") -> dict:
        """Poll the job's record in the database (not HTTP: parts may be down) until ``predicate(record)``."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.jobs.get(job_id)
            if predicate(record):
                return record
            assert time.monotonic() < deadline, f"job {job_id}: {what} not reached in {timeout_s} s: {record}"
            time.sleep(0.2)

    def wait_finished(self, job_id: str, timeout_s: float = 300.0):
        return self.wait_for(job_id, lambda r: r.terminal, timeout_s, "a final status")

    def wait_training(self, job_id: str):
        return self.wait_for(job_id, lambda r: r.status == "running" and r.stage == "sds_training",
                             what="sds_training")


@dataclass
class Response:
    started: float
    ended: float
    status: int | None        # None: no HTTP answer (connection refused or reset, timeout)
    error: str | None
    retry_after: str | None
    body: str


class Pollers:
    """``threads`` clients polling ``GET path`` (with the key) until stopped; every outcome is recorded."""

    def __init__(self, graph: FaultGraph, path: str, threads: int = 4, pause_s: float = 0.05) -> None:
        self.graph, self.path, self.pause_s = graph, path, pause_s
        self.responses: list[Response] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Pollers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.get(f"{self.graph.url}{self.path}",
                                        headers=self.graph.headers(Accept="application/json"))
                    outcome = Response(started, time.monotonic(), answer.status_code, None,
                                       answer.headers.get("retry-after"), answer.text[:300])
                except httpx.HTTPError as exc:
                    outcome = Response(started, time.monotonic(), None, type(exc).__name__, None, "")
                with self._lock:
                    self.responses.append(outcome)
                self._stop.wait(self.pause_s)

    def codes(self) -> dict:
        counts: dict = {}
        for response in self.responses:
            key = response.status if response.status is not None else response.error
            counts[key] = counts.get(key, 0) + 1
        return counts


def cluster_log_lines(*needles: str, since: float = 0.0) -> list[str]:
    """Lines of the Ray cluster's log files (every worker's and replica's, written since ``since``, a
    ``time.time()``) that contain all ``needles``: what the replicas say happened to them (e.g. ``RetryingStore``'s
    "artifact store unavailable during put generations/<id>/…")."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for path in logs.rglob("*"):
        try:
            if not path.is_file() or path.stat().st_mtime < since:
                continue
            with path.open("r", errors="replace") as lines:
                found += [line for line in lines if all(needle in line for needle in needles)]
        except OSError:  # rotated or removed meanwhile
            continue
    return found
