"""The metrics of :data:`lift3d.metrics.METRICS` in a ``prometheus_client`` registry (:class:`ServiceMetrics`), for
where Ray's pipeline does not reach (the local server, the CLI, tests), and the job-store hook that counts finished
jobs (:func:`count_finished_jobs`). The Ray Serve graph records the same metrics with ``deployments/metrics.py``.

Examples:
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_job({"sds_training": 12.0}, {"sds_training": 12.0}, cost_usd=0.003)
    >>> parse_exposition(metrics.exposition())["lift3d_request_cost_usd"][0].name
    'lift3d_request_cost_usd_bucket'
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lift3d.metrics import METRICS

__all__ = ["FinishedJobCounter", "ServiceMetrics", "count_finished_jobs", "parse_exposition"]


class ServiceMetrics:
    """The :data:`METRICS` in a ``prometheus_client`` registry (a fresh one per instance unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._metrics = {}
        for spec in METRICS.values():
            if spec.kind == "counter":
                metric = Counter(spec.name, spec.description, spec.labels, registry=self.registry)
            elif spec.kind == "gauge":
                metric = Gauge(spec.name, spec.description, spec.labels, registry=self.registry)
            else:
                metric = Histogram(spec.name, spec.description, spec.labels, buckets=spec.buckets,
                                   registry=self.registry)
            self._metrics[spec.name] = metric

    def __getitem__(self, name: str):
        return self._metrics[name]

    def count_request(self, route: str, method: str, status: int) -> None:
        self["lift3d_requests"].labels(route=route, method=method, status=str(status)).inc()

    def observe_job(self, busy_s: dict[str, float], gpu_seconds: dict[str, float], cost_usd: float,
                    kind: str = "image-to-3d") -> None:
        """Record one finished job: stage latencies, GPU-seconds and its cost."""
        for stage, seconds in busy_s.items():
            self["lift3d_stage_seconds"].labels(stage=stage).observe(seconds)
        for stage, seconds in gpu_seconds.items():
            self["lift3d_gpu_seconds"].labels(stage=stage).inc(seconds)
        self["lift3d_request_cost_usd"].labels(kind=kind).observe(cost_usd)
        self["lift3d_spent_usd"].labels(kind=kind).inc(cost_usd)

    def count_finished_job(self, kind: str, status: str, error: str | None = None) -> None:
        """One job reached the final ``status`` (``error``: its error name when it failed)."""
        self["lift3d_jobs_finished"].labels(kind=kind, status=status, error=error or "").inc()

    def observe_sds_batch(self, size: int) -> None:
        """One batched SDS forward served ``size`` requests."""
        self["lift3d_sds_batch_size"].observe(size)
        self["lift3d_sds_requests"].inc(size)

    def count_credits(self, key_id: str, credits: float) -> None:
        """Add ``credits`` (>= 0) charged to key ``key_id`` (call after a job's credits are settled)."""
        if credits > 0:
            self["lift3d_credits_spent"].labels(key_id=key_id).inc(credits)

    def exposition(self) -> str:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry).decode()


class FinishedJobCounter(Protocol):
    """What :func:`count_finished_jobs` records into: :class:`ServiceMetrics` or ``deployments.metrics.RayMetrics``."""

    def count_finished_job(self, kind: str, status: str, error: str | None = None) -> None: ...


def count_finished_jobs(metrics: FinishedJobCounter) -> Callable[[Any, Any, Any], None]:
    """A job-store write hook (``JobStore(on_write=...)``, called as ``hook(session, before, after)``) that counts
    each job once, on its first transition to a final state, in ``metrics`` (:class:`ServiceMetrics` or
    ``deployments.metrics.RayMetrics``).

    Every path that ends a job writes through the job store (the trainer, the consumer's last retry, the stale-job
    sweep, a cancel, a failed enqueue), so the count covers them all. The hook runs inside the write's transaction:
    when that transaction fails to commit after the hook ran, the job is counted once more when it does end (rare).

    Examples:
        >>> metrics = ServiceMetrics()
        >>> hook = count_finished_jobs(metrics)   # JobStore(database, store, on_write=hook)
    """

    def hook(session: Any, before: Any, after: Any) -> None:
        if after.terminal and not before.terminal:
            metrics.count_finished_job(after.kind, after.status, after.error.name if after.error else None)

    return hook


def parse_exposition(text: str) -> dict[str, list[Sample]]:
    """Samples of a Prometheus text exposition, grouped by metric family name.

    Counter families are named without ``_total`` (``prometheus_client``'s parser convention); a histogram's
    samples are its ``_bucket``, ``_count`` and ``_sum`` series.
    """
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}
