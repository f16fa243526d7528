"""The service's metrics: one definition, two exporters.

:data:`METRICS` names every metric once. The Ray Serve graph records them through Ray's metrics pipeline
(``deployments/metrics.py``; Ray prefixes exported names with ``ray_``). Where Ray's pipeline does not reach (the
CLI and batch path, tests) :class:`ServiceMetrics` records the same metrics in a ``prometheus_client`` registry.
:func:`exported_series` gives the series names a Prometheus scrape of Ray shows for each metric (what
``dashboards/lift3d.json`` queries).

Examples:
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_job({"sds_training": 12.0}, {"sds_training": 12.0}, cost_usd=0.003)
    >>> parse_exposition(metrics.exposition())["lift3d_request_cost_usd"][0].name
    'lift3d_request_cost_usd_bucket'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = [
    "COST_BUCKETS_USD",
    "FinishedJobCounter",
    "METRICS",
    "MetricSpec",
    "RAY_PREFIX",
    "STAGE_BUCKETS_S",
    "ServiceMetrics",
    "count_finished_jobs",
    "exported_series",
    "parse_exposition",
]

STAGE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
"""Stage latency buckets, seconds: from a status poll to a 4-hour CPU job."""
COST_BUCKETS_USD = (1e-5, 1e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Per-request cost buckets, USD."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (without Ray's ``ray_`` prefix), kind, help text, labels and buckets."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("lift3d_requests", "counter", "HTTP requests by route template and status code.",
                   ("route", "method", "status")),
        MetricSpec("lift3d_stage_seconds", "histogram", "Busy seconds of one pipeline stage for one job.",
                   ("stage",), STAGE_BUCKETS_S),
        MetricSpec("lift3d_job_seconds", "histogram", "Seconds from submission to a finished job, by outcome.",
                   ("kind", "status"), STAGE_BUCKETS_S),
        MetricSpec("lift3d_queue_depth", "gauge", "Jobs accepted and not yet finished (queued or running).",
                   ("status",)),
        MetricSpec("lift3d_gpu_seconds", "counter", "GPU-seconds (busy seconds x GPU fraction) spent per stage.",
                   ("stage",)),
        MetricSpec("lift3d_request_cost_usd", "histogram",
                   "Cost of one finished job in USD (GPU-seconds x price per GPU-hour / 3600).",
                   ("kind",), COST_BUCKETS_USD),
        MetricSpec("lift3d_sds_batch_size", "histogram", "SDS requests served by one batched Zero123 forward.",
                   (), (1, 2, 3, 4, 6, 8, 12, 16)),
        MetricSpec("lift3d_credits_spent", "counter", "Credits charged per API key (settled jobs; refunds "
                   "excluded).", ("key_id",)),
        MetricSpec("lift3d_jobs_finished", "counter", "Jobs that reached a final state (succeeded, failed, "
                   "canceled), by kind; error: the failure's error name, empty otherwise.",
                   ("kind", "status", "error")),
        MetricSpec("lift3d_spent_usd", "counter", "Measured cost of succeeded jobs in USD (the exact total; under "
                   "Ray the cost histogram's _sum is rebuilt from bucket midpoints).", ("kind",)),
        MetricSpec("lift3d_sds_requests", "counter", "SDS requests served by batched Zero123 forwards (the exact "
                   "total of the batch-size histogram).", ()),
    )
}

RAY_PREFIX = "ray_"
"""What Ray's metrics agent puts before every metric name it exports (its namespace)."""


def exported_series(spec: MetricSpec, prefix: str = RAY_PREFIX) -> tuple[str, ...]:
    """The Prometheus series names a scrape shows for ``spec`` (Ray's exporter: ``prefix`` = ``"ray_"``).

    Counters gain ``_total`` (OpenMetrics; Ray >= 2.10 exports counters as counters), histograms are their
    ``_bucket``, ``_sum`` and ``_count`` series, gauges keep their name. ``dashboards/README.md`` traces this
    through Ray's exporter; ``tests/test_dashboard.py`` checks it against that exporter.

    Examples:
        >>> exported_series(METRICS["lift3d_requests"])
        ('ray_lift3d_requests_total',)
        >>> exported_series(METRICS["lift3d_sds_batch_size"], prefix="")
        ('lift3d_sds_batch_size_bucket', 'lift3d_sds_batch_size_sum', 'lift3d_sds_batch_size_count')
    """
    name = prefix + spec.name
    if spec.kind == "counter":
        return (name + "_total",)
    if spec.kind == "histogram":
        return (name + "_bucket", name + "_sum", name + "_count")
    return (name,)


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
