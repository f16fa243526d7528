"""The Stable Zero123 pool of a batch: plain Ray actors that the novel-views stage and every training actor call.

One model per actor serves conditions, novel views and SDS guidance, with the methods of the Serve ``MultiView``
deployment, so :class:`lift3d.pipeline.remote.RemoteStages` (and its ``RemoteGuidance``) call it unchanged through
:class:`PoolHandle`. SDS requests of the items training at the same time are gathered (``max_batch_size``,
``batch_wait_s``) and served by one :meth:`Zero123.sds_batch` call: one UNet forward per group, as in Serve.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import ray

from batch_jobs.actors import actor_device, assigned_gpu_fraction
from lift3d.pipeline.providers import Timed
from lift3d.pipeline.remote import NovelViewsRequest, RemoteStages
from lift3d.pipeline.steps import NovelView, encode_condition, generate_views
from lift3d.stages.loading import load_stage
from lift3d.stages.zero123 import ConditionEmbedding, SDSRequest, SDSResult, Zero123

__all__ = ["PoolHandle", "Zero123PoolStages", "Zero123Server"]


@ray.remote
class Zero123Server:
    """Loads Stable Zero123 once (``source``: hub id, directory or ``tiny``) on ``device`` with ``threads`` torch
    CPU threads; batches up to ``max_batch_size`` SDS requests, waiting ``batch_wait_s`` seconds for company."""

    def __init__(self, source: str, device: str, threads: int, max_batch_size: int, batch_wait_s: float) -> None:
        self.model = load_stage(Zero123, source, actor_device(device, threads))
        self.gpu_fraction = assigned_gpu_fraction()
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.pending: list[tuple[SDSRequest, asyncio.Future]] = []
        self.drainer: asyncio.Task | None = None
        self.batches = self.requests = 0

    async def _timed(self, fn) -> Timed:
        def call() -> Timed:
            start = time.perf_counter()
            value = fn()
            return Timed(value, time.perf_counter() - start, self.gpu_fraction)

        return await asyncio.to_thread(call)

    async def encode_condition(self, rgb) -> Timed[ConditionEmbedding]:
        """``rgb`` (3, H, W) in [0, 1] on white → the item's condition, on the CPU."""
        return await self._timed(lambda: encode_condition(self.model, rgb).cpu())

    async def novel_views(self, request: NovelViewsRequest) -> Timed[list[NovelView]]:
        """One view per azimuth of ``request`` (degrees), PNG-encoded."""
        return await self._timed(lambda: generate_views(
            self.model, request.condition, request.azimuths_deg, elevation_deg=request.elevation_deg,
            num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
            seed=request.seed))

    async def guidance(self, request: SDSRequest) -> Timed[SDSResult]:
        """One SDS step of one item, served in a batch with the other items' pending steps."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if self.drainer is None or self.drainer.done():
            self.drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.pending:
            if len(self.pending) < self.max_batch_size:
                await asyncio.sleep(self.batch_wait_s)
            batch, self.pending = self.pending[:self.max_batch_size], self.pending[self.max_batch_size:]
            requests = [request for request, _ in batch]
            start = time.perf_counter()
            try:
                results = await asyncio.to_thread(self.model.sds_batch, requests)
            except Exception as exc:  # noqa: BLE001 - a bad request must not fail its batch-mates
                if len(batch) == 1:
                    batch[0][1].set_exception(exc)
                    continue
                results = [await self._alone(request, future) for request, future in batch]
                batch = [(r, f) for (r, f), result in zip(batch, results) if result is not None]
                results = [result for result in results if result is not None]
            seconds = time.perf_counter() - start
            views = [request.rgb.shape[0] for request, _ in batch]
            self.batches, self.requests = self.batches + 1, self.requests + len(batch)
            for (_, future), result, n in zip(batch, results, views):
                future.set_result(Timed(result, seconds * n / sum(views), self.gpu_fraction))

    async def _alone(self, request: SDSRequest, future: asyncio.Future) -> SDSResult | None:
        try:
            (result,) = await asyncio.to_thread(self.model.sds_batch, [request])
            return result
        except Exception as exc:  # noqa: BLE001 - this request's own error, to its caller
            future.set_exception(exc)
            return None

    def describe(self) -> dict[str, Any]:
        return {"source": self.model.source, "random_weights": bool(self.model.random_weights)}

    def stats(self) -> dict[str, int]:
        """SDS batches served and requests in them (mean batch size = requests / batches)."""
        return {"batches": self.batches, "requests": self.requests}


class PoolHandle:
    """A deployment-handle look-alike over actors: ``pool.method.remote(*args).result()``, actors taken in turn."""

    def __init__(self, actors: list) -> None:
        self.actors, self._turn = list(actors), itertools.count()

    def __getattr__(self, name: str) -> _PoolMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _PoolMethod(self, name)


class _PoolMethod:
    def __init__(self, pool: PoolHandle, name: str) -> None:
        self.pool, self.name = pool, name

    def remote(self, *args, **kwargs) -> _Response:
        actor = self.pool.actors[next(self.pool._turn) % len(self.pool.actors)]
        return _Response(getattr(actor, self.name).remote(*args, **kwargs))


class _Response:
    def __init__(self, ref) -> None:
        self.ref = ref

    def result(self, timeout_s: float | None = None) -> Any:
        return ray.get(self.ref, timeout=timeout_s)


class Zero123PoolStages(RemoteStages):
    """:class:`RemoteStages` with the Zero123 pool only (conditions, views, guidance)."""

    def __init__(self, pool: PoolHandle) -> None:
        super().__init__(text_to_image=None, background=None, multiview=pool)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {"zero123": self.handles["zero123"].describe.remote().result()}
