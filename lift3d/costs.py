"""Cost of a request: each stage's busy seconds × its GPU fraction × a price per GPU-hour, summed per job.

A stage's GPU fraction is the ``num_gpus`` of the deployment that runs it (e.g. 0.5 when two replicas share a
GPU), so the cost is the share of the GPU pool a job occupied, priced at on-demand rates.

One job is priced once, by :func:`bill` (the service's worker and the batch pipeline alike): the cost model of the
replica, with the GPU fractions the run's stages reported.

Examples:
    >>> model = CostModel.for_gpu("A10G", {"sds_training": 1.0, "sds_guidance": 0.5})
    >>> round(model.cost_usd({"sds_training": 3600.0, "sds_guidance": 3600.0}), 4)
    1.509
    >>> bill(model, {"sds_training": 60.0, "novel_views": 10.0}, {"novel_views": 0.25}).gpu_seconds
    {'sds_training': 60.0, 'novel_views': 2.5}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = ["GPU_PRICES_USD_PER_HOUR", "STAGES", "Bill", "CostModel", "bill", "price_per_gpu_hour"]

STAGES = ("text_to_image", "background_removal", "novel_views", "feedforward", "sds_guidance", "sds_training",
          "mesh_export", "turntable")
"""Stages whose busy time is metered. ``feedforward`` is the feed-forward reconstruction model's forward pass
(methods ``fast`` and ``fast+sds``); ``sds_guidance`` is the Zero123 share of the SDS loop (MultiView),
``sds_training`` the NeRF's own share (NerfTrainer; with ``fast+sds`` its fit to the feed-forward field too);
``turntable`` the video (NerfTrainer)."""

# AWS EC2 on-demand price per GPU-hour: the hourly Linux price in us-east-1 of the smallest instance carrying
# that GPU, divided by its GPU count. Source: https://aws.amazon.com/ec2/pricing/on-demand/ (prices as listed
# in 2024, recorded 2025-01). AWS announced cuts of up to 45 % for P4/P5 instances in June 2025: check the page
# and override ``price_per_gpu_hour`` in the service config for current or negotiated prices.
GPU_PRICES_USD_PER_HOUR: dict[str, float] = {
    "T4": 0.526,  # g4dn.xlarge, 1 × T4 16 GB
    "A10G": 1.006,  # g5.xlarge, 1 × A10G 24 GB
    "L4": 0.8048,  # g6.xlarge, 1 × L4 24 GB
    "L40S": 1.861,  # g6e.xlarge, 1 × L40S 48 GB
    "A100-40GB": 32.7726 / 8,  # p4d.24xlarge, 8 × A100 40 GB
    "A100-80GB": 40.9657 / 8,  # p4de.24xlarge, 8 × A100 80 GB
    "H100": 98.32 / 8,  # p5.48xlarge, 8 × H100 80 GB
}


def price_per_gpu_hour(gpu_type: str) -> float:
    """On-demand USD per GPU-hour of ``gpu_type`` (a key of :data:`GPU_PRICES_USD_PER_HOUR`).

    Raises:
        ValueError: unknown GPU type; the message lists the known ones.
    """
    try:
        return GPU_PRICES_USD_PER_HOUR[gpu_type]
    except KeyError:
        known = ", ".join(GPU_PRICES_USD_PER_HOUR)
        raise ValueError(f"no price for GPU type {gpu_type!r}; known: {known} (or set price_per_gpu_hour)") from None


@dataclass(frozen=True)
class CostModel:
    """Prices stage busy time.

    Attributes:
        price_per_gpu_hour: USD for one whole GPU for one hour.
        gpu_fractions: GPUs held by the deployment running each stage (stages not listed hold none).
        gpu_type: label only, for metadata.
    """

    price_per_gpu_hour: float
    gpu_fractions: dict[str, float] = field(default_factory=dict)
    gpu_type: str | None = None

    def __post_init__(self) -> None:
        if self.price_per_gpu_hour < 0:
            raise ValueError("price_per_gpu_hour must be >= 0")
        if any(f < 0 for f in self.gpu_fractions.values()):
            raise ValueError("GPU fractions must be >= 0")

    @classmethod
    def for_gpu(cls, gpu_type: str, gpu_fractions: dict[str, float], price: float | None = None) -> "CostModel":
        """The model for ``gpu_type`` at its AWS on-demand price, unless ``price`` (USD/GPU-hour) is given."""
        return cls(price if price is not None else price_per_gpu_hour(gpu_type), dict(gpu_fractions), gpu_type)

    def gpu_seconds(self, busy_s: dict[str, float]) -> dict[str, float]:
        """Per stage: busy seconds × GPU fraction."""
        return {stage: seconds * self.gpu_fractions.get(stage, 0.0) for stage, seconds in busy_s.items()}

    def cost_usd(self, busy_s: dict[str, float]) -> float:
        """Σ over stages of busy seconds × GPU fraction × price per GPU-hour / 3600."""
        return sum(self.gpu_seconds(busy_s).values()) * self.price_per_gpu_hour / 3600.0

    def describe(self) -> dict:
        return {"gpu_type": self.gpu_type, "price_per_gpu_hour": self.price_per_gpu_hour,
                "gpu_fractions": dict(self.gpu_fractions)}


@dataclass(frozen=True)
class Bill:
    """What one job cost.

    Attributes:
        busy_s: busy seconds per stage (as measured).
        gpu_seconds: per stage, busy seconds × the GPU fraction it was priced at.
        cost_usd: Σ GPU-seconds × price per GPU-hour / 3600.
        model: the cost model that priced it, run-reported fractions included.
    """

    busy_s: dict[str, float]
    gpu_seconds: dict[str, float]
    cost_usd: float
    model: CostModel

    def metadata(self) -> dict:
        """The ``cost`` entry of ``metadata.json``: ``usd``, ``gpu_seconds`` and the model's ``gpu_type``,
        ``price_per_gpu_hour`` and ``gpu_fractions``."""
        return {"usd": self.cost_usd, "gpu_seconds": self.gpu_seconds, **self.model.describe()}


def bill(cost_model: CostModel, busy_s: Mapping[str, float], gpu_fractions: Mapping[str, float] | None = None
         ) -> Bill:
    """Price one job: ``busy_s`` (seconds per stage) at ``cost_model``'s price, each stage at the GPU fraction
    the run reported for it in ``gpu_fractions`` (a remote stage reports its deployment's ``num_gpus``), else at
    the model's.

    Raises:
        ValueError: a negative fraction in ``gpu_fractions``.
    """
    model = replace(cost_model, gpu_fractions={**cost_model.gpu_fractions, **(gpu_fractions or {})})
    busy = dict(busy_s)
    return Bill(busy_s=busy, gpu_seconds=model.gpu_seconds(busy), cost_usd=model.cost_usd(busy), model=model)
