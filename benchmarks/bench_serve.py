"""The same tiny job in process (the CLI's path) and through the Ray Serve graph over HTTP; then status-poll
throughput through the Serve proxy.

    python benchmarks/bench_serve.py                 # local Ray: 2 CPUs, 2 fake GPUs, tiny preset
    python benchmarks/bench_serve.py --runs 3 --poll-seconds 20 --concurrency 32
    python benchmarks/bench_serve.py --polls-only --ceiling   # polls only, and the same load on a no-op app
    python benchmarks/bench_serve.py --polls-only --ceiling --database-url postgresql://…  # on PostgreSQL

Prints wall seconds per run for both paths (the first in-process run includes loading the tiny models; the
graph loads them at deploy time), then p50/p99 latency of ``--submits`` sequential text-to-3d submissions (each
canceled right after, so none runs), then requests/s and p50/p99 latency of ``GET /v1/generation/{id}`` on a
queued job (a 202 JSON body), from ``--concurrency`` clients on loopback. The graph runs as deployed: with API
keys (one is created for the benchmark, with limits high enough not to throttle it) where the service has them.

The in-process runs use ``--torch-threads`` intra-op threads (default 1: Ray starts replicas with less than one
CPU with ``OMP_NUM_THREADS=1``, so 1 compares like with like; on a busy 2-core machine, 2 threads were 3-4×
slower than 1 here). ``--omp-threads`` sets ``OMP_NUM_THREADS`` of the in-process run (default 1, as Ray sets it
in a replica with one CPU or less: the mesh export's non-torch libraries follow it).

``--ceiling`` adds the same poll load against a second Serve application whose one route returns a constant
(``GET /ceiling/v1/x``, no auth, no database): what Ray Serve's proxy and a replica cost on this machine with
nothing of lift3d's in the path, the most the real poll could reach here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DRAGON = ROOT / "examples" / "dragon2_rgba.png"
JOB = {"num_views": 4, "num_multiview_steps": 2, "num_3d_max_steps": 12, "seed": 3}
HEADERS: dict[str, str] = {}
BENCH_KEY: dict[str, str] = {}  # the id of the key this run created
"""Sent with every request (the API key, once the graph has one)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_in_process(runs: int, out: Path, threads: int) -> list[float]:
    import torch

    from lift3d.io.images import load_image
    from lift3d.params import GenerationParams
    from lift3d.presets import get_preset
    from lift3d.cli.generate import run_generation

    torch.set_num_threads(threads)
    times = []
    for index in range(runs):
        start = time.perf_counter()
        run_generation(get_preset("tiny"), GenerationParams(**JOB), load_image(DRAGON), out / f"cli{index}")
        times.append(time.perf_counter() - start)
    return times


def start_graph(base: Path, database_url: str | None = None):
    import ray
    from ray import serve

    from lift3d.service.config import QueueConfig
    from graph import APP_NAME, ServiceConfig, build_app

    one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
    options = {
        "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": one},
        "JobConsumer": {"ray_actor_options": {"num_cpus": 0.1}},
        "TextToImage": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": one},
        "BackgroundRemoval": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.1}, "autoscaling_config": one},
        "MultiView": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.5}, "autoscaling_config": one},
        "FeedForward": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": one},
        "NerfTrainer": {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}, "autoscaling_config": one},
    }
    port = _free_port()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": pythonpath}
    if os.environ.get("LIFT3D_ENCRYPTION_KEY"):  # a PostgreSQL database's secret columns (--database-url)
        env["LIFT3D_ENCRYPTION_KEY"] = os.environ["LIFT3D_ENCRYPTION_KEY"]
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, namespace="serve", log_to_driver=False,
             runtime_env={"env_vars": env})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    extra = {}
    if "database_url" in ServiceConfig.model_fields:  # the service with a database, API keys and limits
        extra = dict(database_url=database_url or f"sqlite:///{base / 'lift3d.db'}",
                     default_rate_limit_per_min=10_000_000,
                     default_max_concurrent_jobs=0, max_queue_depth=0)
    config = ServiceConfig(preset="tiny", store_url=f"file://{base / 'store'}",
                           queue=QueueConfig(queue_dir=str(base / "queue"), polling_interval_s=0.1),
                           heartbeat_s=1.0, deployment_options=options, **extra)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    if extra:
        from lift3d.service.state import open_state

        created = open_state(config).keys.create(name="bench", credits=10**9)
        HEADERS["Authorization"], BENCH_KEY["id"] = "Bearer " + created.key, created.id
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url, config
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("graph not healthy")


def bench_http(url: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/generation/image-to-3d", files={"image": DRAGON.read_bytes()},
                              data={k: str(v) for k, v in JOB.items()}, headers=HEADERS, timeout=60)
        response.raise_for_status()
        job_id = response.json()["id"]
        while True:
            result = httpx.get(f"{url}/v1/generation/{job_id}", headers=HEADERS, timeout=60)
            if result.status_code != 202:
                break
            time.sleep(0.1)
        if result.status_code != 200 or result.content[:4] != b"glTF":
            raise RuntimeError(f"job {job_id} ended {result.status_code}: {result.text[:300]}")
        times.append(time.perf_counter() - start)
    return times


async def bench_polls(url: str, job_id: str, seconds: float, concurrency: int,
                      path: str | None = None) -> tuple[int, list[float]]:
    """Requests answered and their latencies: ``concurrency`` clients polling ``GET path`` (default: the job's
    status) for ``seconds``."""
    path = path or f"/v1/generation/{job_id}"
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.get(path, headers={**HEADERS, "Accept": "application/json"})
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"unexpected {response.status_code}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


def bench_submits(url: str, count: int) -> list[float]:
    """Seconds per ``POST /v1/generation/text-to-3d`` (JSON), one at a time; each job is canceled at once."""
    latencies = []
    with httpx.Client(base_url=url, headers=HEADERS, timeout=60) as client:
        for index in range(count):
            start = time.perf_counter()
            response = client.post("/v1/generation/text-to-3d", json={"prompt": f"a robot {index}", **JOB})
            latencies.append(time.perf_counter() - start)
            if response.status_code != 202:
                raise RuntimeError(f"submit answered {response.status_code}: {response.text[:300]}")
            client.delete(f"/v1/generation/{response.json()['id']}")
    return latencies


def deploy_ceiling(url: str) -> str:
    """Deploy the no-op application (see the module docstring) beside lift3d; returns its poll URL path."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(name="Ceiling", max_ongoing_requests=200, ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(app)
    class Ceiling:
        @app.get("/v1/x")
        async def status(self) -> dict:
            return {"id": "0" * 32, "status": "queued", "stage": "queued", "progress": None, "eta_s": None}

    serve.run(Ceiling.bind(), name="ceiling", route_prefix="/ceiling")
    return "/ceiling/v1/x"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="jobs per path (default 2)")
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--submits", type=int, default=50, help="sequential submissions timed (default 50)")
    parser.add_argument("--torch-threads", type=int, default=1, help="in-process intra-op threads (default 1)")
    parser.add_argument("--omp-threads", type=int, default=1, help="in-process OMP_NUM_THREADS (default 1)")
    parser.add_argument("--polls-only", action="store_true", help="skip the jobs and the submissions")
    parser.add_argument("--ceiling", action="store_true", help="also poll a no-op Serve app (the proxy's cost)")
    parser.add_argument("--database-url", help="the service's database (default: a SQLite file in a temporary "
                        "folder); PostgreSQL needs LIFT3D_ENCRYPTION_KEY set")
    options = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(options.omp_threads)  # before torch and the mesh libraries load
    base = Path(tempfile.mkdtemp(prefix="lift3d-bench-"))

    cli = [] if options.polls_only else bench_in_process(options.runs, base / "cli", options.torch_threads)
    url, config = start_graph(base, options.database_url)
    http = [] if options.polls_only else bench_http(url, options.runs)
    submits = [] if options.polls_only else bench_submits(url, options.submits)
    queued = queued_job(config)
    asyncio.run(bench_polls(url, queued, 2.0, options.concurrency))  # warm-up: connections, caches
    count, latencies = asyncio.run(bench_polls(url, queued, options.poll_seconds, options.concurrency))
    polls = count
    if options.ceiling:
        path = deploy_ceiling(url)
        asyncio.run(bench_polls(url, queued, 2.0, options.concurrency, path))
        ceiling = asyncio.run(bench_polls(url, queued, options.poll_seconds, options.concurrency, path))

    if not options.polls_only:
        print(f"tiny image-to-3d job ({JOB}), wall seconds per run:")
        print(f"  in-process (CLI path, {options.torch_threads} torch thread(s), OMP_NUM_THREADS="
              f"{options.omp_threads}): {', '.join(f'{t:.1f}' for t in cli)}")
        print(f"  HTTP through Serve:    {', '.join(f'{t:.1f}' for t in http)}  (submit → poll every 0.1 s → GLB)")
        print(f"  ratio of the last runs (HTTP / in-process): {http[-1] / cli[-1]:.2f}")
    print(f"status polls, {options.concurrency} concurrent clients, {options.poll_seconds:.0f} s: "
          f"{count / options.poll_seconds:.0f} requests/s, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
    if options.ceiling:
        count, latencies = ceiling
        print(f"  the same load on a no-op Serve app (the ceiling here): {count / options.poll_seconds:.0f} "
              f"requests/s, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms")
        print(f"  poll throughput ratio, lift3d / no-op app: {polls / count:.2f} (issue 23 target: >= 0.7)")
    if submits:
        print(f"submissions (text-to-3d JSON, sequential, n={len(submits)}): p50 "
              f"{percentile(submits, 0.5) * 1000:.1f} ms, p99 {percentile(submits, 0.99) * 1000:.1f} ms")

    from ray import serve

    serve.shutdown()


def queued_job(config) -> str:
    """Id of a job that stays queued (never enqueued), owned by the benchmark's key where there are keys."""
    from lift3d.params import GenerationParams
    from lift3d.service.jobs.store import JobRecord

    record = JobRecord.new("image-to-3d", GenerationParams(**JOB))
    if "Authorization" not in HEADERS:  # the service before issue 9: records in the artifact store
        from lift3d.io.storage import make_store
        from lift3d.service.jobs.store import JobStore

        return JobStore(make_store(config.store_url)).create(record).id
    from lift3d.service.state import open_state

    state = open_state(config)
    key = next(k for k in state.keys.list() if k.id == BENCH_KEY["id"])  # this run's key (--database-url reused)
    return state.jobs.create(record.model_copy(update={"owner_id": key.id})).id


if __name__ == "__main__":
    main()
