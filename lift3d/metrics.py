"""The project's metrics, defined once: :data:`METRICS` names every metric (kind, help text, labels, buckets).

Two exporters record them: in the Ray Serve graph ``deployments/metrics.py`` (Ray's metrics pipeline; Ray prefixes
exported names with ``ray_``), elsewhere (the local server, tests) :class:`lift3d.service.metrics.ServiceMetrics` in a
``prometheus_client`` registry. :func:`exported_series` gives the series names a Prometheus scrape of Ray shows for
each metric (what ``dashboards/lift3d.json`` queries). Plain data: no exporter is imported here.

Examples:
    >>> METRICS["lift3d_request_cost_usd"].kind
    'histogram'
    >>> exported_series(METRICS["lift3d_requests"])
    ('ray_lift3d_requests_total',)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["COST_BUCKETS_USD", "METRICS", "MetricSpec", "RAY_PREFIX", "STAGE_BUCKETS_S", "exported_series"]

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
