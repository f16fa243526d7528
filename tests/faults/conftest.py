"""The fault tests' graph (``fault_graph``, one per module, on the session's Ray cluster): see ``fault_graph.py``."""

from __future__ import annotations

import os
import time

import pytest
from fault_graph import FAULT_DEPLOYMENT_OPTIONS, FaultGraph
from support import free_port, wait_healthy
from support.redis_server import RedisServer
from support.s3 import AWS_TEST_ENV, S3Server


@pytest.fixture(scope="module")
def fault_graph(ray_cluster, tmp_path_factory):
    """A fresh graph for the module (S3 on moto, the queue on redis-server, short leases); the cluster is claimed
    for it (any other graph stopped first) and given back, with the servers stopped, at the module's end."""
    base = tmp_path_factory.mktemp("faults")
    graph = ray_cluster.use("fault-graph", lambda: _start_graph(base), _stop_graph)
    yield graph
    ray_cluster.release("fault-graph")


def _start_graph(base) -> FaultGraph:
    from ray import serve

    from graph import APP_NAME, ServiceConfig, build_app
    from lift3d.service.config import QueueConfig
    from lift3d.service.state import open_state

    os.environ.update(AWS_TEST_ENV)  # this process's S3 client (the cluster's workers have them already)
    s3 = S3Server().start()
    redis = RedisServer(base / "redis", appendonly=True).start()
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    config = ServiceConfig(
        preset="tiny", store_url=f"s3://lift3d-faults/store?endpoint_url={s3.url}&create_bucket=true",
        queue=QueueConfig(broker_url=redis.url, max_attempts=3, visibility_timeout_s=20),
        heartbeat_s=0.5, lease_s=3.0, sweep_interval_s=1.0, store_retry_s=120.0, gpu_type="A10G",
        database_url=f"sqlite:///{base / 'lift3d.db'}",
        default_rate_limit_per_min=100_000, default_max_concurrent_jobs=0, max_queue_depth=0,
        torch_threads=1, deployment_options=FAULT_DEPLOYMENT_OPTIONS,
    )
    started = time.monotonic()
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    state = open_state(config)
    created = state.keys.create(name="fault-tests", credits=1_000_000)
    graph = FaultGraph(f"http://127.0.0.1:{http_port}", config, state.jobs, created.key, created.id, s3, redis)
    wait_healthy(graph.url, timeout_s=180)
    print(f"\nfault graph up in {time.monotonic() - started:.1f} s")
    return graph


def _stop_graph(graph: FaultGraph) -> None:
    import ray
    from ray import serve

    try:
        if ray.is_initialized():  # else the cluster is gone, and the graph with it
            serve.shutdown()
    finally:
        graph.redis.close()
        graph.s3.stop()
