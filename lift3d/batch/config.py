"""Settings of a batch run: one typed config, one section per stage pool, with documented defaults.

The defaults size one node with one 24 GB A10G (8 vCPU, 32 GiB), the GPU of the Serve pools
(``serve_config.yaml``): SDXL fp16 ~10 GB, one Stable Zero123 fp16 ~6 GB shared by the views and every item's SDS,
two hash-grid NeRFs ~3 GB each. The GPU fractions add up to one GPU; the CPUs to 6.5 of 8, leaving Ray Data and
the driver room. The feed-forward pool (TripoSR) starts only when some item's ``method`` is ``fast`` or
``fast+sds``, and the Zero123, views and training pools only when some item's is ``sds`` or ``fast+sds``; a run
holding every pool at once on one GPU (prompts, SDS and fast items) asks for 1.1 GPUs: give one pool less
(``--stage text_to_image.num_gpus=0.3``) or run it on two.

==============  =======  ========  ===========  ==========  =====================================================
pool            GPUs     CPUs      actors       batch       what
==============  =======  ========  ===========  ==========  =====================================================
text_to_image   0.4      1         1 per GPU    1 row       SDXL, prompt rows only (not started without prompts)
background      0        1         1 per GPU    1 row       rembg ONNX on the CPU, as in Serve; recentring
novel_views     0        0.25      1 per GPU    1 row       calls the Zero123 pool (holds no model)
zero123         0.3      1         1 per GPU    8 SDS reqs  Stable Zero123: conditions, views, SDS of all trainers
training        0.15     1.5       2 per GPU    1 row       NeRF + SDS (guidance from the Zero123 pool), GLB export
feedforward     0.1      1         1 per GPU    1 row       TripoSR: fast+sds items' fields; fast items' whole run
                                                            (field, marching cubes, texture bake, GLB export)
publish         0        0.25      1 per GPU    1 row       writes each item's outputs (local rename or S3 PUTs)
==============  =======  ========  ===========  ==========  =====================================================

``batch_size`` is rows per actor call. The stages run a call's rows one after another (only Zero123's SDS is
batched across items, by ``zero123.max_batch_size``), so a larger ``batch_size`` saves per-call overhead but makes
rows wait for company; after such a stage the runner splits blocks back to one row each so that later stages
still stream.

``--num-gpus N`` multiplies every pool's actor count by N (:meth:`BatchConfig.for_gpus`); per-stage overrides
(``--stage training.concurrency=6``) then replace single fields. On an 80 GB H100 one GPU holds more: e.g.
``--stage training.concurrency=6 --stage training.num_gpus=0.1 --stage zero123.max_batch_size=16``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lift3d.errors import InvalidInputError

__all__ = ["BatchConfig", "BatchStages", "StageOptions", "Zero123PoolOptions", "parse_stage_override"]


class StageOptions(BaseModel):
    """Resources of one stage's actor pool."""

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(0.0, ge=0, le=1, description="GPU fraction each actor holds (0–1).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each actor holds (also its torch threads, at least 1).")
    concurrency: int = Field(1, ge=1, description="Actors in the pool (per GPU before for_gpus scales them).")
    batch_size: int = Field(1, ge=1, description="Rows per call of an actor (run one after another).")


class Zero123PoolOptions(StageOptions):
    """The Stable Zero123 pool: plain actors called by the novel-views stage and by every training actor."""

    max_batch_size: int = Field(8, ge=1, description="Most SDS requests (of different items) per UNet forward.")
    batch_wait_s: float = Field(0.01, ge=0, le=1, description="Seconds the first SDS request waits for others.")


class BatchStages(BaseModel):
    """One :class:`StageOptions` per pool; defaults for one A10G (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    text_to_image: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.4, num_cpus=1))
    background: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.0, num_cpus=1))
    novel_views: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.0, num_cpus=0.25))
    zero123: Zero123PoolOptions = Field(default_factory=lambda: Zero123PoolOptions(num_gpus=0.3, num_cpus=1))
    training: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.15, num_cpus=1.5, concurrency=2))
    publish: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.0, num_cpus=0.25))
    feedforward: StageOptions = Field(default_factory=lambda: StageOptions(num_gpus=0.1, num_cpus=1))

    def pools(self, with_text_to_image: bool = True, with_feedforward: bool = False, with_sds: bool = True
              ) -> dict[str, StageOptions]:
        """The pools a run starts, by name: SDXL's only when prompt rows exist, the feed-forward model's only for
        ``fast`` / ``fast+sds`` items, Zero123's, the views' and the trainers' only for ``sds`` / ``fast+sds``."""
        skip = ({"text_to_image"} if not with_text_to_image else set()) | (
            {"feedforward"} if not with_feedforward else set()) | (
            {"novel_views", "zero123", "training"} if not with_sds else set())
        return {n: getattr(self, n) for n in type(self).model_fields if n not in skip}

    def gpus_needed(self, with_text_to_image: bool = True, with_feedforward: bool = False,
                    with_sds: bool = True) -> float:
        """GPUs all started pools hold at once."""
        pools = self.pools(with_text_to_image, with_feedforward, with_sds)
        return sum(p.num_gpus * p.concurrency for p in pools.values())

    def cpus_needed(self, with_text_to_image: bool = True, with_feedforward: bool = False,
                    with_sds: bool = True) -> float:
        """CPUs all started pools hold at once."""
        pools = self.pools(with_text_to_image, with_feedforward, with_sds)
        return sum(p.num_cpus * p.concurrency for p in pools.values())


class BatchConfig(BaseModel):
    """A batch run: input, output, defaults of every row, models and the pools.

    Raises (on construction):
        pydantic.ValidationError: a field out of range.
    """

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="Manifest: JSONL, CSV or Parquet; a path, file:// or s3://bucket/key URI.")
    out: str = Field(description="Output: a directory or s3://bucket/prefix; OUT/<id>/ per item, OUT/results.jsonl.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Generation parameters of every row "
                                     "(`lift3d generate`'s; a row's own columns override them).")
    preset: str = Field("auto", description="Model preset: default, tiny or auto (as `lift3d generate`).")
    models: dict[str, str] = Field(default_factory=dict, description="Model source overrides: text_to_image, "
                                   "zero123, background, feedforward.")
    device: str = Field("auto", description="Torch device of the model and training actors: auto, cpu or cuda.")
    num_gpus: float | None = Field(None, ge=0, description="GPUs the run uses; scales the pools (for_gpus). 0: CPU "
                                   "only; None: the cluster's GPUs (a local cluster: this machine's CUDA devices).")
    stages: BatchStages = Field(default_factory=BatchStages, description="The pools, before scaling by num_gpus.")
    address: str | None = Field(None, description="Ray cluster to join (`auto`, `ray://host:10001`); None: start "
                                "a local one for the run (or use the one this process already joined).")
    s3_endpoint_url: str | None = Field(None, description="S3-protocol endpoint for every s3:// URI (MinIO, "
                                        "moto); None: boto3's (AWS_ENDPOINT_URL or AWS).")
    results_parquet: bool = Field(False, description="Also write OUT/results.parquet at the end.")
    gpu_type: str = Field("A10G", description="GPU type priced by the service's cost model (lift3d.costs).")
    price_per_gpu_hour: float | None = Field(None, ge=0, description="USD per GPU-hour; None: gpu_type's price.")
    validate_workers: int = Field(8, ge=1, le=64, description="Threads reading and checking inputs before the run.")

    def for_gpus(self, num_gpus: float) -> BatchStages:
        """The pools for ``num_gpus`` GPUs: every actor count × max(1, round(num_gpus)); with 0 GPUs, no GPU
        fractions (everything on the CPU)."""
        factor = max(1, round(num_gpus))
        scaled = {}
        for name in BatchStages.model_fields:
            stage = getattr(self.stages, name)
            update: dict[str, Any] = {"concurrency": stage.concurrency * factor}
            if num_gpus == 0:
                update["num_gpus"] = 0.0
            scaled[name] = stage.model_copy(update=update)
        return BatchStages(**scaled)

    def plan_pools(self, gpus: float, cpus: float | None, with_text_to_image: bool, with_feedforward: bool = False,
                   with_sds: bool = True) -> BatchStages:
        """The pools scaled for ``gpus`` (:meth:`for_gpus`), once the ones the run starts (:meth:`BatchStages.pools`)
        fit ``gpus`` and ``cpus`` (None: any CPUs, e.g. a local cluster started with as many logical CPUs as the
        pools ask).

        Raises:
            InvalidInputError: the pools ask for more GPUs or CPUs than there are (Ray would wait forever).
        """
        stages = self.for_gpus(gpus)
        started = (with_text_to_image, with_feedforward, with_sds)
        needed = stages.gpus_needed(*started)
        if needed > gpus + 1e-6:
            raise InvalidInputError(
                f"the stage pools need {needed:g} GPUs but {gpus:g} are available: use --num-gpus, or lower a "
                "pool's num_gpus or concurrency (--stage NAME.FIELD=VALUE)")
        cpus_needed = stages.cpus_needed(*started)
        if cpus is not None and cpus_needed > cpus + 1e-6:
            raise InvalidInputError(
                f"the stage pools need {cpus_needed:g} CPUs but the cluster has {cpus:g}: lower a pool's num_cpus "
                "or concurrency (--stage NAME.FIELD=VALUE)")
        return stages


def parse_stage_override(stages: BatchStages, override: str) -> BatchStages:
    """Apply ``NAME.FIELD=VALUE`` (e.g. ``training.concurrency=4``) to ``stages``; returns a new object.

    Raises:
        InvalidInputError: bad syntax, unknown pool or field, or a value out of range.
    """
    key, sep, value = override.partition("=")
    name, dot, field = key.strip().partition(".")
    if not sep or not dot:
        raise InvalidInputError(f"--stage {override!r}: use NAME.FIELD=VALUE, e.g. training.concurrency=4")
    if name not in BatchStages.model_fields:
        raise InvalidInputError(f"--stage {override!r}: unknown pool {name!r}; pools: "
                                f"{', '.join(BatchStages.model_fields)}")
    current = getattr(stages, name)
    if field not in type(current).model_fields:
        raise InvalidInputError(f"--stage {override!r}: {name} has no field {field!r}; fields: "
                                f"{', '.join(type(current).model_fields)}")
    try:
        updated = type(current)(**{**current.model_dump(), field: value.strip()})
    except ValueError as exc:
        raise InvalidInputError(f"--stage {override!r}: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}"
                                ) from None
    return stages.model_copy(update={name: updated})
