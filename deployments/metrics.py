"""The project's metrics (:data:`lift3d.metrics.METRICS`) recorded through Ray's metrics pipeline.

Ray Serve tags each sample with ``deployment``, ``replica`` and ``application`` and exports it, prefixed
``ray_``, on every node's metrics port (``ray start --metrics-export-port``), which KubeRay's PodMonitor scrapes.
One :class:`RayMetrics` per replica (metrics objects are per instance, not module globals). The series a scrape
shows are :func:`lift3d.metrics.exported_series` of each metric (counters end in ``_total``); the Grafana
dashboard over them is ``dashboards/lift3d.json``.

Examples:
    >>> metrics = RayMetrics()            # inside a replica
    >>> metrics.count_request("/v1/generation/{id}", "GET", 202)
"""

from __future__ import annotations

from ray.serve import metrics as serve_metrics

from lift3d.metrics import METRICS

__all__ = ["RayMetrics"]


class RayMetrics:
    """Ray Serve counters, gauges and histograms named and shaped as in :data:`METRICS`."""

    def __init__(self) -> None:
        self._metrics = {}
        for spec in METRICS.values():
            if spec.kind == "counter":
                metric = serve_metrics.Counter(spec.name, spec.description, tag_keys=spec.labels)
            elif spec.kind == "gauge":
                metric = serve_metrics.Gauge(spec.name, spec.description, tag_keys=spec.labels)
            else:
                metric = serve_metrics.Histogram(spec.name, spec.description, boundaries=list(spec.buckets),
                                                 tag_keys=spec.labels)
            self._metrics[spec.name] = metric

    def __getitem__(self, name: str):
        return self._metrics[name]

    def count_request(self, route: str, method: str, status: int) -> None:
        self["lift3d_requests"].inc(tags={"route": route, "method": method, "status": str(status)})

    def observe_stage(self, stage: str, busy_s: float, gpu_seconds: float) -> None:
        self["lift3d_stage_seconds"].observe(busy_s, tags={"stage": stage})
        if gpu_seconds > 0:
            self["lift3d_gpu_seconds"].inc(gpu_seconds, tags={"stage": stage})

    def observe_job(self, kind: str, status: str, seconds: float, busy_s: dict[str, float],
                    gpu_seconds: dict[str, float], cost_usd: float | None) -> None:
        """A finished job: its duration, each stage's latency and GPU-seconds, and (if it succeeded) its cost."""
        self["lift3d_job_seconds"].observe(seconds, tags={"kind": kind, "status": status})
        for stage, seconds_busy in busy_s.items():
            self.observe_stage(stage, seconds_busy, gpu_seconds.get(stage, 0.0))
        if cost_usd is not None:
            self["lift3d_request_cost_usd"].observe(cost_usd, tags={"kind": kind})
            if cost_usd > 0:  # Ray counters refuse increments <= 0
                self["lift3d_spent_usd"].inc(cost_usd, tags={"kind": kind})

    def count_finished_job(self, kind: str, status: str, error: str | None = None) -> None:
        """One job reached the final ``status`` (``error``: its error name when it failed); see
        :func:`lift3d.service.metrics.count_finished_jobs` for the job-store hook that calls this."""
        self["lift3d_jobs_finished"].inc(tags={"kind": kind, "status": status, "error": error or ""})

    def count_credits(self, key_id: str, credits: float) -> None:
        """Credits charged to a key (a settled job)."""
        if credits > 0:
            self["lift3d_credits_spent"].inc(credits, tags={"key_id": key_id})

    def set_queue_depth(self, queued: int, running: int) -> None:
        self["lift3d_queue_depth"].set(queued, tags={"status": "queued"})
        self["lift3d_queue_depth"].set(running, tags={"status": "running"})

    def observe_sds_batch(self, size: int) -> None:
        self["lift3d_sds_batch_size"].observe(size)
        if size > 0:
            self["lift3d_sds_requests"].inc(size)
