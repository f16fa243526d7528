"""The test session's ONE local Ray cluster, lent to one user at a time.

The Serve tests (``tests/serve``), the fault tests (``tests/faults``) and the Ray Data batch tests
(``tests/batch/test_batch_ray.py``) all run on the same cluster, started once per session with one configuration
that serves all three: 2 CPUs and 2 fake GPUs (every test graph and the batch pools fit), namespace ``serve``,
a metrics port, and an environment for the workers (``PYTHONPATH`` to this checkout, moto's S3 credentials).

What does not fit twice is *what runs on it*: a Serve graph reserves most of the 2 CPUs, so two graphs, or a graph
and the batch pools, would wait on each other forever. So each user *claims* the cluster with :meth:`RayCluster.use`:
a claim by another user first stops the current one (its ``stop``), and a claim by the current user returns its
running value without a restart. Whatever order pytest runs the modules in, each finds the cluster free for it.

Examples:
    >>> graph = ray_cluster.use("serve-graph", start=start_graph, stop=stop_graph)   # starts it
    >>> ray_cluster.use("serve-graph", start_graph, stop_graph) is graph               # still running: no restart
    True
    >>> ray_cluster.use("batch", start=lambda: None)   # stops the graph first
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.net import free_port
from support.s3 import AWS_TEST_ENV

__all__ = ["RayCluster"]

ROOT = Path(__file__).resolve().parents[2]
NUM_CPUS = 2
NUM_GPUS = 2
"""Fake GPUs: Ray only counts them, so GPU fractions are scheduled (and priced) as on a real GPU node."""


class RayCluster:
    """``ray.init`` on :meth:`start`, ``ray.shutdown`` on :meth:`shutdown`; one user (a *tenant*) at a time.

    Attributes:
        metrics_url: the cluster's Prometheus endpoint (``http://127.0.0.1:<port>/metrics``).
        tenant: the name of the current user, or None.
    """

    def __init__(self) -> None:
        self.metrics_port = free_port()
        self.tenant: str | None = None
        self._value: Any = None
        self._stop: Callable[[Any], None] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "RayCluster":
        import ray

        if ray.is_initialized():
            raise RuntimeError("Ray is already initialized in this test process: the tests share ONE cluster "
                               "(the ray_cluster fixture); nothing else may call ray.init")
        os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # inherited by the cluster's processes
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        # The cluster's processes inherit this environment: no real AWS profile or session beside moto's keys.
        hidden = {name: os.environ.pop(name) for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN") if name in os.environ}
        try:
            ray.init(num_cpus=NUM_CPUS, num_gpus=NUM_GPUS, include_dashboard=False, namespace="serve",
                     _metrics_export_port=self.metrics_port,
                     runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "RAY_SERVE_LOG_TO_STDERR": "0",
                                               **AWS_TEST_ENV}},
                     configure_logging=False, log_to_driver=False)
        finally:
            os.environ.update(hidden)
        return self

    def use(self, tenant: str, start: Callable[[], Any], stop: Callable[[Any], None] | None = None) -> Any:
        """The cluster for ``tenant``: if it is the current tenant, its value as ``start()`` returned it; else the
        current tenant is stopped (:meth:`release`), ``start()`` runs, and ``stop(value)`` is kept for later (called
        on handover, on :meth:`release`, and at :meth:`shutdown` after Ray is gone)."""
        if self.tenant == tenant:
            return self._value
        self.release()
        value = start()
        self.tenant, self._value, self._stop = tenant, value, stop
        return value

    def release(self, tenant: str | None = None) -> None:
        """Stop the current tenant (only if it is ``tenant``, when given); the cluster stays up."""
        if self.tenant is None or (tenant is not None and tenant != self.tenant):
            return
        stop, value = self._stop, self._value
        self.tenant, self._value, self._stop = None, None, None
        if stop is not None:
            stop(value)

    def shutdown(self) -> None:
        """``ray.shutdown()`` (it ends every process of the cluster: no graceful Serve shutdown to wait for), then
        the current tenant's ``stop`` for what it runs outside the cluster; ``stop`` functions skip their Ray calls
        when ``ray.is_initialized()`` is False."""
        import ray

        try:
            ray.shutdown()
        finally:
            self.release()
