"""The shared test helpers (``tests/support``): the fake clock, condition waits, free ports, and the Ray cluster's
one-tenant-at-a-time lending (whatever order the modules that use it run in)."""

from __future__ import annotations

import socket
import time

import pytest
from fastapi import FastAPI
from support import Clock, free_port, serve_in_thread, wait_until
from support.ray_cluster import RayCluster


def test_clock_stays_put_until_moved():
    clock = Clock(1000.0)
    assert (clock(), clock()) == (1000.0, 1000.0)
    assert clock.advance(2.5) == 1002.5 and clock() == 1002.5
    clock.now = 5.0
    assert clock() == 5.0
    assert Clock()() == 1_700_000_000.0


def test_wait_until_returns_the_first_truthy_value_and_times_out_with_what_it_waited_for():
    answers = iter([0, None, [], 7, 8])
    assert wait_until(lambda: next(answers), 5, interval_s=0.001) == 7
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"the moon not reached in 0.2 s \(last: False\)"):
        wait_until(lambda: False, 0.2, "the moon", interval_s=0.05)
    assert 0.2 <= time.monotonic() - started < 2.0


def test_free_port_is_free_and_a_served_app_answers_on_its_own_port():
    port = free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # nothing holds it
    api = FastAPI()
    api.get("/ping")(lambda: {"pong": True})
    import httpx

    with serve_in_thread(api) as url:
        assert httpx.get(f"{url}/ping", timeout=5).json() == {"pong": True}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/ping", timeout=5)


def test_the_ray_cluster_is_lent_to_one_tenant_at_a_time_in_any_order():
    cluster, log = RayCluster(), []  # not started: lending needs no Ray

    def tenant(name: str):
        def start():
            log.append(f"start {name}")
            return f"{name} value"

        return start, lambda value: log.append(f"stop {value}")

    serve_start, serve_stop = tenant("serve")
    batch_start, batch_stop = tenant("batch")
    assert cluster.use("serve", serve_start, serve_stop) == "serve value"
    assert cluster.use("serve", serve_start, serve_stop) == "serve value"  # still its: no restart
    assert cluster.use("batch", batch_start, batch_stop) == "batch value"  # the graph is stopped first
    cluster.release("serve")  # not the tenant: nothing happens
    assert cluster.use("serve", serve_start, serve_stop) == "serve value"  # started again
    cluster.release("serve")
    cluster.release()
    assert cluster.tenant is None
    assert log == ["start serve", "stop serve value", "start batch", "stop batch value", "start serve",
                   "stop serve value"]
