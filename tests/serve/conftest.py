"""ONE local Ray cluster per test session (2 CPUs, fake GPUs) running the tiny graph, shut down at the end.

Every address is loopback.
"""

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_GPUS = 2
# Small logical shares so that six replicas fit on 2 CPUs and 2 fake GPUs; one replica each.
_ONE = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
TEST_DEPLOYMENT_OPTIONS = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": _ONE},
    "JobConsumer": {"ray_actor_options": {"num_cpus": 0.1}},
    "TextToImage": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": _ONE},
    "BackgroundRemoval": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.1}, "autoscaling_config": _ONE},
    "MultiView": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.5}, "autoscaling_config": _ONE},
    "NerfTrainer": {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}, "autoscaling_config": _ONE,
                    "max_ongoing_requests": 2},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServeGraph:
    """The running test graph."""

    url: str
    metrics_url: str
    handle: object
    store_dir: Path
    config: object
    jobs: object
    key: str
    key_id: str


@pytest.fixture(scope="session")
def serve_graph(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from ray import serve

    from graph import APP_NAME, ServiceConfig, build_app
    from lift3d.service.config import QueueConfig

    base = tmp_path_factory.mktemp("serve")
    http_port, metrics_port = free_port(), free_port()
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # inherited by the cluster's processes
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, num_gpus=FAKE_GPUS, include_dashboard=False, namespace="serve",
             _metrics_export_port=metrics_port,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "RAY_SERVE_LOG_TO_STDERR": "0"}},
             configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    config = ServiceConfig(
        preset="tiny", store_url=f"file://{base / 'store'}",
        queue=QueueConfig(queue_dir=str(base / "queue"), max_attempts=2, polling_interval_s=0.1),
        heartbeat_s=0.5, sweep_interval_s=2.0, gpu_type="A10G",
        database_url=f"sqlite:///{base / 'lift3d.db'}",  # API keys on (the default): tests send HTTP.key
        default_rate_limit_per_min=100_000, default_max_concurrent_jobs=0, max_queue_depth=0,
        allow_private_webhooks=True,  # the webhook test receives on 127.0.0.1
        torch_threads=1,  # `lift3d generate --threads 1` reproduces the graph's jobs bit for bit
        deployment_options=TEST_DEPLOYMENT_OPTIONS,
    )
    started = time.monotonic()
    handle = serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    from keyed import HTTP
    from lift3d.service.state import open_state

    state = open_state(config)  # the same database and store as the replicas
    created = state.keys.create(name="serve-tests", credits=1_000_000)
    HTTP.key = created.key
    graph = ServeGraph(f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{metrics_port}/metrics", handle,
                       base / "store", config, state.jobs, created.key, created.id)
    _wait_healthy(graph.url)
    print(f"\nserve graph up in {time.monotonic() - started:.1f} s")
    yield graph
    serve.shutdown()
    ray.shutdown()


def _wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/healthz", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"graph not healthy after {timeout_s} s: {getattr(last, 'text', last)}")
