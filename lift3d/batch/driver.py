"""``lift3d batch``'s driver: read and check the manifest, skip what is done, hand the rest to a runner, record each
finished item as it arrives, and summarise.

A runner (:class:`BatchRunner`) moves checked items through the stages and yields each one once it is published.
Runners are found by name in the ``lift3d.batch_runners`` entry-point group (:func:`load_runner`): ``serial`` (this
module's :class:`SerialRunner`, no Ray) and ``ray`` (``batch_jobs.runner:RayDataRunner``, the Ray Data pipeline,
installed with ``lift3d[batch]``). ``lift3d/`` never imports Ray: the Ray runner is loaded only by name, at run time.

Examples:
    >>> config = BatchConfig(input="examples/batch.jsonl", out="out/batch", preset="tiny")
    >>> summary = run_batch(config, load_runner("serial"))
    >>> summary.succeeded + summary.skipped + summary.failed + summary.invalid == summary.rows
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol

from rich.console import Console

from lift3d.batch.config import BatchConfig, BatchStages
from lift3d.batch.item import (ItemState, background_step, feedforward_step, needs_sds, text_to_image_step,
                               training_step, views_step)
from lift3d.batch.locations import Reader, open_output
from lift3d.batch.manifest import BatchItem, check_rows, read_manifest
from lift3d.batch.outputs import ResultsLog, bad_row_result, plan_resume, publish_step, result_row
from lift3d.batch.progress import BatchProgress, BatchSummary, bad_rows_table, summary_table
from lift3d.errors import Lift3DError
from lift3d.presets import ModelPreset, resolve_preset
from lift3d.costs import CostModel

__all__ = ["RUNNER_GROUP", "BatchJob", "BatchRunner", "SerialRunner", "cost_model_for", "load_runner",
           "pools_started", "run_batch"]

RUNNER_GROUP = "lift3d.batch_runners"
"""Entry-point group of batch runners (``pyproject.toml``: ``[project.entry-points."lift3d.batch_runners"]``)."""


@dataclass(frozen=True)
class BatchJob:
    """What a runner needs besides the items: the run's config and its resolved model preset."""

    config: BatchConfig
    preset: ModelPreset


class BatchRunner(Protocol):
    """Runs items through the stages; yields each item's state once published (or failed), in any order."""

    def run(self, items: list[BatchItem], job: BatchJob) -> Iterator[ItemState]: ...


def cost_model_for(config: BatchConfig, pools: BatchStages) -> CostModel:
    """The service's cost model with each stage priced at its pool's GPU fraction (a ``fast`` item's
    ``mesh_export`` runs in the feed-forward pool: its stage prices it there, ``batch_jobs/stages.py``)."""
    fractions = {"text_to_image": pools.text_to_image.num_gpus, "background_removal": pools.background.num_gpus,
                 "novel_views": pools.zero123.num_gpus, "sds_guidance": pools.zero123.num_gpus,
                 "sds_training": pools.training.num_gpus, "mesh_export": pools.training.num_gpus,
                 "feedforward": pools.feedforward.num_gpus}
    return CostModel.for_gpu(config.gpu_type, fractions, config.price_per_gpu_hour)


def pools_started(items: list[BatchItem]) -> dict[str, bool]:
    """The optional pools a run of ``items`` starts (:meth:`BatchStages.pools`' flags): SDXL for prompt rows, the
    feed-forward model for ``fast`` / ``fast+sds`` items, Zero123, the views and the trainers for ``sds`` /
    ``fast+sds`` items."""
    return {"with_text_to_image": any(item.image is None for item in items),
            "with_feedforward": any(item.params.method != "sds" for item in items),
            "with_sds": any(item.params.method != "fast" for item in items)}


def load_runner(name: str) -> BatchRunner:
    """The runner registered as ``name`` in :data:`RUNNER_GROUP`, constructed without arguments.

    Raises:
        Lift3DError: no runner of that name, or it cannot be imported (e.g. ``ray`` without ``lift3d[batch]``).
    """
    found = {ep.name: ep for ep in entry_points(group=RUNNER_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise Lift3DError(f"no batch runner {name!r} (installed: {known}); the Ray Data runner comes with "
                          "`pip install 'lift3d[batch]'`")
    try:
        return found[name].load()()
    except ImportError as exc:
        raise Lift3DError(f"batch runner {name!r} cannot be loaded ({exc}); install `lift3d[batch]`") from None


class SerialRunner:
    """Every stage in this process, one item after another (no Ray): small runs and debugging."""

    def run(self, items: list[BatchItem], job: BatchJob) -> Iterator[ItemState]:
        from lift3d.devices import resolve_device
        from lift3d.pipeline import InProcessStages

        device = resolve_device(job.config.device)
        stages, reader = InProcessStages(job.preset, device), Reader(job.config.s3_endpoint_url)
        store = open_output(job.config.out, job.config.s3_endpoint_url)
        cost_model = cost_model_for(job.config, job.config.for_gpus(1.0 if device.type == "cuda" else 0.0))
        for item in items:
            state = text_to_image_step(ItemState(item), stages)
            state = background_step(state, stages, reader, job.preset.input_size)
            state = feedforward_step(state, stages, job.preset.fast.foreground_ratio)  # fast, fast+sds
            state = views_step(state, stages)  # sds, fast+sds
            state = training_step(state, job.preset, stages, cost_model, device,
                                  "sds_training" if needs_sds(item.params) else "mesh_export")
            yield publish_step(state, store)


def run_batch(config: BatchConfig, runner: BatchRunner, console: Console | None = None) -> BatchSummary:
    """Run a batch: every row checked first (bad rows reported at once and recorded as failed), items already done
    skipped, the rest run by ``runner`` with one ``results.jsonl`` row appended per finished item.

    Raises:
        InvalidInputError: unreadable manifest, unknown column or format, bad preset name.
        Lift3DError: from the runner (e.g. no cluster); rows of items finished before are kept.
    """
    console = console or Console(stderr=True)
    # 1. read and check every row before any GPU work
    reader = Reader(config.s3_endpoint_url)
    rows = read_manifest(config.input, reader)
    checked = check_rows(rows, config.input, config.defaults, reader, workers=config.validate_workers)
    summary = BatchSummary(rows=len(rows), invalid=len(checked.bad), out=config.out)
    store = open_output(config.out, config.s3_endpoint_url)
    log = ResultsLog(store)
    if checked.bad:
        console.print(bad_rows_table(checked.bad))
    for bad in checked.bad:
        log.append(bad_row_result(bad))
        summary.failures.append(log.rows[-1])
    # 2. skip what an earlier run finished
    by_id = {item.id: item for item in checked.items}
    todo_ids, done_ids = plan_resume(list(by_id), log, store)
    todo, summary.skipped = [by_id[i] for i in todo_ids], len(done_ids)
    # 3. run the rest, recording each item as it finishes
    started = time.monotonic()
    try:
        if todo:
            pools = pools_started(todo)
            preset = resolve_preset(config.preset, **config.models, needs_text_to_image=pools["with_text_to_image"],
                                    needs_zero123=pools["with_sds"], needs_feedforward=pools["with_feedforward"])
            with BatchProgress(console, len(todo)) as progress:
                for state in runner.run(todo, BatchJob(config, preset)):
                    row = result_row(state)
                    log.append(row)
                    progress.advance(row)
                    _count(summary, row)
    finally:
        summary.seconds = time.monotonic() - started
        log.close(parquet=config.results_parquet)
    console.print(summary_table(summary))
    return summary


def _count(summary: BatchSummary, row) -> None:
    if row.status == "succeeded":
        summary.succeeded += 1
    else:
        summary.failed += 1
        summary.failures.append(row)
    summary.gpu_seconds += row.gpu_seconds
    summary.cost_usd += row.cost_usd
