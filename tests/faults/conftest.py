"""The fault tests' graph (``fault_graph``, one per module): see ``fault_graph.py``."""

from __future__ import annotations

import os
import time

import pytest

from fault_graph import (AWS_ENV, FAULT_DEPLOYMENT_OPTIONS, ROOT, FaultGraph, RedisServer, S3Server, free_port,
                         wait_healthy)


@pytest.fixture(scope="module")
def fault_graph(tmp_path_factory):
    import ray
    from ray import serve

    if ray.is_initialized():
        pytest.fail("the fault tests start their own Ray cluster; run them in a process without one")
    from graph import APP_NAME, ServiceConfig, build_app
    from lift3d.service.config import QueueConfig
    from lift3d.service.state import open_state

    base = tmp_path_factory.mktemp("faults")
    for name, value in AWS_ENV.items():
        os.environ[name] = value
    s3 = S3Server().start()
    redis = RedisServer(base / "redis", appendonly=True).start()
    http_port = free_port()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, namespace="serve",
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "RAY_SERVE_LOG_TO_STDERR": "0", **AWS_ENV}},
             configure_logging=False, log_to_driver=False)
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
    wait_healthy(graph.url)
    print(f"\nfault graph up in {time.monotonic() - started:.1f} s")
    yield graph
    serve.shutdown()
    ray.shutdown()
    redis.stop()
    if s3.server is not None:
        s3.stop()


