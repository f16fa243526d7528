"""``MultiView`` deployment: Stable Zero123 condition encoding, novel views, and SDS batched across jobs.

SDS requests of concurrent jobs (each with its own condition and seed) are gathered by ``@serve.batch`` and
served by :meth:`Zero123.sds_batch` (one UNet forward per group), so a request's result does not depend on which
other requests share its batch beyond the last bits of the batched forward.

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
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import NovelViewsRequest
from lift3d.pipeline.steps import NovelView, encode_condition, generate_views
from lift3d.stages.loading import load_stage
from lift3d.stages.zero123 import ConditionEmbedding, SDSRequest, SDSResult, Zero123
from lift3d.service.logs import install_job_log_filter

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
        max_batch_size: most SDS requests per UNet forward.
        batch_wait_timeout_s: how long the first request of a batch waits for others.
        torch_threads: CPU threads of torch in this replica (None: as Ray sets them).
    """

    def __init__(self, source: str, device: str = "auto", max_batch_size: int = 8,
                 batch_wait_timeout_s: float = 0.01, torch_threads: int | None = None) -> None:
        install_job_log_filter()
        self.model = load_stage(Zero123, source, replica_device(device, torch_threads))
        self.gpu_fraction = assigned_gpu_fraction()
        self.metrics = RayMetrics()
        self.guidance.set_max_batch_size(max_batch_size)
        self.guidance.set_batch_wait_timeout_s(batch_wait_timeout_s)

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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def guidance(self, requests: list[SDSRequest]) -> list[Timed[SDSResult]]:
        """Batched SDS; busy time is shared out by each request's number of views."""
        start = time.perf_counter()
        results = await asyncio.to_thread(self.model.sds_batch, requests)
        seconds = time.perf_counter() - start
        views = [r.rgb.shape[0] for r in requests]
        self.metrics.observe_sds_batch(len(requests))
        return [Timed(result, seconds * n / sum(views), self.gpu_fraction) for result, n in zip(results, views)]

    def describe(self) -> dict:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}
