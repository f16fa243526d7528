"""The tiny graph on the session's ONE local Ray cluster (the ``ray_cluster`` fixture: 2 CPUs, fake GPUs), started
once and shared by every module here while no other user (the fault or batch tests) claims the cluster.

Every address is loopback.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port, wait_healthy

# Small logical shares so that seven replicas fit on the cluster's 2 CPUs and 2 fake GPUs; one replica each.
_ONE = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
TEST_DEPLOYMENT_OPTIONS = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.1}, "autoscaling_config": _ONE},
    # A stopped graph need not wait 20 s (Serve's default) for the consumer's loop or a running job.
    "JobConsumer": {"ray_actor_options": {"num_cpus": 0.1}, "graceful_shutdown_timeout_s": 1},
    "TextToImage": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": _ONE},
    "BackgroundRemoval": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.1}, "autoscaling_config": _ONE},
    "MultiView": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.5}, "autoscaling_config": _ONE},
    "FeedForward": {"ray_actor_options": {"num_cpus": 0.2, "num_gpus": 0.25}, "autoscaling_config": _ONE},
    "NerfTrainer": {"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}, "autoscaling_config": _ONE,
                    "max_ongoing_requests": 2, "graceful_shutdown_timeout_s": 1},
}


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


@pytest.fixture(scope="module")
def serve_graph(ray_cluster, tmp_path_factory):
    """The running graph: started on the first module's request, then the same one for every module until another
    user claims the cluster (then the next module here starts a new one)."""
    return ray_cluster.use("serve-graph", lambda: _start_graph(ray_cluster, tmp_path_factory.mktemp("serve")),
                           _stop_graph)


def _start_graph(ray_cluster, base: Path) -> ServeGraph:
    from ray import serve

    from graph import APP_NAME, ServiceConfig, build_app
    from lift3d.service.config import QueueConfig

    http_port = free_port()
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
    graph = ServeGraph(f"http://127.0.0.1:{http_port}", ray_cluster.metrics_url, handle, base / "store", config,
                       state.jobs, created.key, created.id)
    wait_healthy(graph.url, timeout_s=120)
    print(f"\nserve graph up in {time.monotonic() - started:.1f} s")
    return graph


def _stop_graph(graph: ServeGraph) -> None:
    import ray
    from ray import serve

    if ray.is_initialized():  # else the cluster is gone, and the graph with it
        serve.shutdown()
