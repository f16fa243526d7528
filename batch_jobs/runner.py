"""``lift3d batch --runner ray``: the items through Ray Data, one actor pool per stage.

::

    prompt rows ─ TextToImage (SDXL) ─┐
    image rows ───────────────────────┴─ Background ─ FeedForward ─ NovelViews ─ Training (NeRF + SDS) ─ Publish
                                                                        │               │ SDS steps, batched
                                                                        └── Zero123 pool (plain actors) ──┘

By ``method``: ``sds`` items pass through FeedForward; ``fast`` ones are done there (field → mesh → GLB) and pass
NovelViews and Training; ``fast+sds`` ones get their field there, their NeRF (started from it) in Training. Pools no
item needs are not started (:func:`lift3d.batch.driver.pools_started`). Each map stage has its pool's
``concurrency`` actors holding ``num_gpus`` and ``num_cpus`` each, ``batch_size`` rows per call
(:class:`lift3d.batch.config.BatchStages`); one row per block, so items stream through the stages one by one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator

import ray
import ray.data

from batch_jobs.actors import local_gpus, torch_threads
from batch_jobs.stages import (BackgroundStage, FeedForwardStage, NovelViewsStage, PublishStage, TextToImageStage,
                               TrainingStage, as_batch)
from batch_jobs.zero123 import PoolHandle, Zero123Server
from lift3d.batch.config import StageOptions
from lift3d.batch.driver import BatchJob, cost_model_for, pools_started
from lift3d.batch.item import ItemState
from lift3d.batch.manifest import BatchItem
from lift3d.errors import Lift3DError

__all__ = ["RayDataRunner"]


def _stage(ds, cls, kwargs: dict, stage: StageOptions, rows: int, in_flight: int = 2):
    """``ds`` through ``cls`` on a fixed pool of the stage's actors (never more than ``rows``), each holding
    ``in_flight`` calls at most."""
    compute = ray.data.ActorPoolStrategy(size=max(1, min(stage.concurrency, rows)),
                                         max_tasks_in_flight_per_actor=in_flight)
    return ds.map_batches(cls, fn_constructor_kwargs=kwargs, compute=compute, num_gpus=stage.num_gpus or None,
                          num_cpus=stage.num_cpus, batch_size=stage.batch_size, batch_format="numpy")


class RayDataRunner:
    """Runs a batch on Ray Data: uses the cluster this process is connected to, else joins ``config.address`` (or
    ``RAY_ADDRESS``, set by ``ray job submit``), else starts a local cluster for the run with as many logical CPUs
    as the pools ask (stopped at the end).

    Raises:
        InvalidInputError: the pools need more GPUs or CPUs than the cluster has.
        Lift3DError: no cluster at the address.
    """

    def __init__(self) -> None:
        self.zero123: list = []
        self.sds_stats: list[dict[str, int]] = []
        """Per Zero123 actor of the last run: SDS batches and requests served (mean batch = requests / batches)."""

    def run(self, items: list[BatchItem], job: BatchJob) -> Iterator[ItemState]:
        config = job.config
        prompts = [item for item in items if item.image is None]
        started = pools_started(items)
        started_here = not ray.is_initialized()
        if started_here and config.address is None and not os.environ.get("RAY_ADDRESS"):  # `ray job submit` sets it
            gpus = config.num_gpus if config.num_gpus is not None else local_gpus()
            pools = config.plan_pools(gpus, None, **started)
            cpus = max(os.cpu_count() or 1, math.ceil(pools.cpus_needed(**started) + 1))
            ray.init(num_cpus=cpus, num_gpus=math.ceil(gpus), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            if started_here:
                try:
                    ray.init(address=config.address, log_to_driver=False, configure_logging=False)
                except ConnectionError as exc:
                    raise Lift3DError(f"no Ray cluster at {config.address or os.environ.get('RAY_ADDRESS')}: "
                                      f"{exc}") from None
            resources = ray.cluster_resources()
            gpus = config.num_gpus if config.num_gpus is not None else float(resources.get("GPU", 0.0))
            pools = config.plan_pools(gpus, float(resources.get("CPU", 0.0)), **started)
        try:
            yield from self._run(items, prompts, job, pools)
        finally:
            if self.zero123:
                self.sds_stats = ray.get([actor.stats.remote() for actor in self.zero123])
            for actor in self.zero123:
                ray.kill(actor)
            self.zero123 = []
            if started_here:
                ray.shutdown()

    def _run(self, items: list[BatchItem], prompts: list[BatchItem], job: BatchJob, pools) -> Iterator[ItemState]:
        # One item per block, also after a stage with batch_size > 1 (blocks are sliced to this many bytes, at
        # least a row each), so every stage streams item by item; the driver draws its own progress bar.
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        saved = (context.target_max_block_size, context.enable_progress_bars, context.print_on_execution_start)
        context.target_max_block_size, context.enable_progress_bars, context.print_on_execution_start = 1, False, False
        try:
            yield from self._stream(items, prompts, job, pools)
        finally:
            context.target_max_block_size, context.enable_progress_bars, context.print_on_execution_start = saved

    def _stream(self, items: list[BatchItem], prompts: list[BatchItem], job: BatchJob, pools
                ) -> Iterator[ItemState]:
        config, preset = job.config, job.preset
        sds, fast = [i for i in items if i.params.method != "fast"], [i for i in items if i.params.method != "sds"]
        cost_model = cost_model_for(config, pools)

        def model(pool: StageOptions, **more) -> dict:  # constructor arguments of a stage holding a model
            return {"preset": preset, "device": config.device, "threads": torch_threads(pool.num_cpus), **more}

        # 1. the Zero123 pool (items with SDS only): plain actors, shared by the views stage and every trainer
        z = pools.zero123
        self.zero123 = [Zero123Server.options(num_gpus=z.num_gpus, num_cpus=z.num_cpus).remote(
            preset.zero123, config.device, torch_threads(z.num_cpus), z.max_batch_size, z.batch_wait_s)
            for _ in range(min(z.concurrency, len(sds)))]
        zero123 = PoolHandle(self.zero123)
        # 2. rows: one per block; prompt rows through SDXL first
        def dataset(subset: list[BatchItem]):
            rows = as_batch([ItemState(item) for item in subset])
            return ray.data.from_items([{"id": i, "state": s} for i, s in zip(rows["id"], rows["state"])],
                                       override_num_blocks=len(subset))

        images = [item for item in items if item.image is not None]
        parts = [_stage(dataset(prompts), TextToImageStage, model(pools.text_to_image), pools.text_to_image,
                        len(prompts))] if prompts else []
        if images:
            parts.append(dataset(images))
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        # 3. the stages the methods need; a trainer or feed-forward actor takes its next item only when free
        b, f, t = pools.background, pools.feedforward, pools.training
        ds = _stage(ds, BackgroundStage, model(b, s3_endpoint_url=config.s3_endpoint_url), b, len(items))
        if fast:
            ds = _stage(ds, FeedForwardStage, model(f, cost_model=cost_model), f, len(fast), 1)
        if sds:
            ds = _stage(ds, NovelViewsStage, {"zero123": zero123}, pools.novel_views, len(sds))
            ds = _stage(ds, TrainingStage, model(t, zero123=zero123, cost_model=cost_model), t, len(sds), 1)
        ds = _stage(ds, PublishStage, {"out": config.out, "s3_endpoint_url": config.s3_endpoint_url}, pools.publish,
                    len(items))
        # 4. each item as soon as it is published
        for row in ds.iter_rows():
            yield ItemState.from_bytes(bytes(row["state"]))
