"""``MultiView`` deployment: Stable Zero123 condition encoding, novel views, and SDS batched across jobs.

SDS requests of concurrent jobs (each with its own condition and seed) are gathered by ``@serve.batch`` (at most
``max_batch_size`` requests) and served by :func:`~lift3d.stages.zero123.sds_batch_settled`: one
:meth:`Zero123.sds_batch` call, UNet forwards of at most ``max_batch_views`` views, so a request's result does not
depend on which other requests share its batch beyond the last bits of the batched forward, and a failing request
fails only itself (its caller gets its exception; the others their results).

Examples:
    >>> condition = handle.encode_condition.remote(rgb).result().value
    >>> response = handle.guidance.remote(SDSRequest(rgb[None], el, az, step=0, seed=7, guidance_scale=3.0,
    ...                                              condition=condition)).result()
    >>> response.value.grad_rgb.shape == rgb[None].shape
    True
"""

from __future__ import annotations

import asyncio
import time

import torch
from ray import serve

from deployments.metrics import RayMetrics
from deployments.replica import assigned_gpu_fraction, replica_device, run_timed
from lift3d.logs import install_job_log_filter
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import NovelViewsRequest
from lift3d.pipeline.steps import NovelView, encode_condition, generate_views
from lift3d.stages.loading import load_stage
from lift3d.stages.zero123 import ConditionEmbedding, SDSRequest, SDSResult, Zero123, sds_batch_settled

__all__ = ["MultiViewDeployment"]


@serve.deployment(
    name="MultiView",
    ray_actor_options={"num_gpus": 0.5, "num_cpus": 2, "memory": 8 * 1024**3},
    max_ongoing_requests=32,
    autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 8},
)
class MultiViewDeployment:
    """Loads Stable Zero123 once per replica.

    Args:
        source: diffusers-format Stable Zero123 hub id or directory, or ``"tiny"``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        max_batch_size: most SDS requests gathered into one batch.
        batch_wait_timeout_s: how long the first request of a batch waits for others.
        torch_threads: CPU threads of torch in this replica (None: as Ray sets them).
        max_batch_views: most views (renders) per UNet forward of a batch (None: one forward per group).
    """

    def __init__(self, source: str, device: str = "auto", max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.01, torch_threads: int | None = None,
                 max_batch_views: int | None = None) -> None:
        install_job_log_filter()
        self.model = load_stage(Zero123, source, replica_device(device, torch_threads))
        self.gpu_fraction = assigned_gpu_fraction()
        self.metrics = RayMetrics()
        self.max_batch_views = max_batch_views
        self._guidance_batch.set_max_batch_size(max_batch_size)
        self._guidance_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def encode_condition(self, rgb: torch.Tensor) -> Timed[ConditionEmbedding]:
        """``rgb`` (3, H, W) in [0, 1], composited on white → the job's condition, on the CPU."""
        return await run_timed(lambda: encode_condition(self.model, rgb).cpu(), gpu_fraction=self.gpu_fraction)

    async def novel_views(self, request: NovelViewsRequest) -> Timed[list[NovelView]]:
        """One view per azimuth; each is PNG-encoded once, here, when the reply is serialised."""
        def generate() -> list[NovelView]:
            return generate_views(self.model, request.condition, request.azimuths_deg,
                                  elevation_deg=request.elevation_deg, num_inference_steps=request.num_inference_steps,
                                  guidance_scale=request.guidance_scale, seed=request.seed)

        return await run_timed(generate, gpu_fraction=self.gpu_fraction)

    async def guidance(self, request: SDSRequest) -> Timed[SDSResult]:
        """One job's SDS step, served in a batch with other jobs' steps; raises this request's own error only."""
        outcome = await self._guidance_batch(request)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _guidance_batch(self, requests: list[SDSRequest]) -> list[Timed[SDSResult] | Exception]:
        """Batched SDS, one item per request: its result or its exception (Ray 2.60's batch queue sets each item
        as that caller's result and fails every caller only when this raises). Busy time is shared out by the
        views of the requests served."""
        start = time.perf_counter()
        outcomes = await asyncio.to_thread(sds_batch_settled, self.model, requests,
                                           max_batch_views=self.max_batch_views)
        seconds = time.perf_counter() - start
        views = [r.rgb.shape[0] if isinstance(o, SDSResult) else 0 for r, o in zip(requests, outcomes)]
        self.metrics.observe_sds_batch(len(requests))
        return [Timed(o, seconds * n / max(sum(views), 1), self.gpu_fraction) if isinstance(o, SDSResult) else o
                for o, n in zip(outcomes, views)]

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
