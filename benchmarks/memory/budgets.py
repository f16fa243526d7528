"""What each GPU replica may use: its ``num_gpus`` share of its pool's card, the issue's targets, and the margin.

- **Replicas** come from ``serve_config.yaml`` (each deployment's ``ray_actor_options``: ``num_gpus`` and the pool
  resource it asks for, ``max_ongoing_requests``; ``args.sds_max_batch_size``).
- **Pools** come from ``k8s/rayservice.yaml``: each worker group offers one custom resource (``rayStartParams
  resources``) and runs on the instance type of its ``nodeSelector``; :data:`INSTANCE_CARDS` names the card of
  each instance type and :data:`CARD_MEMORY_MIB` its memory.
- **Card memory** is what ``nvidia-smi`` reports as total (= NVML / ``torch.cuda.mem_get_info`` total) with ECC
  on, as on AWS: A10G 23028 MiB (22.49 GiB), L4 23034 MiB (lists of ``nvidia-smi`` totals per GPU type in
  modal-labs/modal-client#2797 and an A10G's ``nvidia-smi`` in NVIDIA/DCGM#232). Marketing's "24 GB" is 24 GiB
  of chips before ECC; the driver's own reserve is part of the CUDA context below.
- **Targets** (issue 20): one SDS job's trainer side ≤ 10 GiB, a MultiView replica serving a full SDS batch
  ≤ 10 GiB, the SDXL replica ≤ 16 GiB.
- **Margin**: the model counts tensor storages, i.e. what ``torch.cuda.memory_allocated`` counts. A process also
  holds its CUDA context (driver, loaded kernels, cuBLAS/cuDNN handles: ~300 MB with CUDA ≥ 11.7's lazy module
  loading, pytorch/pytorch#107667; :data:`CONTEXT_GIB` = 0.5 GiB), and the caching allocator reserves more than is
  allocated (block rounding, split blocks, cuDNN/cuBLAS workspaces, which the model does not see: reserved /
  allocated ≈ 1.11–1.12 in pytorch/pytorch#40989; :data:`ALLOCATOR_FRACTION` = 12 %). A replica's modelled peak
  is ``allocated × (1 + ALLOCATOR_FRACTION) + CONTEXT_GIB``; it fits when that × :data:`SAFETY` (1.15, the
  issue's rule) ≤ its budget.

Examples:
    >>> config = ServeConfig.load(ROOT / "serve_config.yaml", ROOT / "k8s" / "rayservice.yaml")
    >>> round(config.replica("MultiView").budget_gib, 2)
    11.24
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ALLOCATOR_FRACTION",
    "CARD_MEMORY_MIB",
    "CONTEXT_GIB",
    "INSTANCE_CARDS",
    "SAFETY",
    "TARGETS_GIB",
    "Replica",
    "ServeConfig",
    "budget_gib",
    "check_items",
    "fits",
    "jobs_peak_gib",
    "modelled_gib",
]

GIB = 2**30

CARD_MEMORY_MIB: dict[str, int] = {"A10G": 23028, "L4": 23034}
"""Total memory per card, MiB, as ``nvidia-smi`` and ``torch.cuda.mem_get_info`` report it (ECC on)."""

INSTANCE_CARDS: dict[str, str] = {"g5.xlarge": "A10G", "g5.2xlarge": "A10G", "g5.4xlarge": "A10G",
                                  "g6.xlarge": "L4", "g6.2xlarge": "L4", "g6.4xlarge": "L4"}
"""The one GPU of each single-GPU instance type the pools may run on (AWS G5: A10G, G6: L4)."""

CONTEXT_GIB = 0.5
"""Per-process device memory outside PyTorch's allocator: CUDA context, kernels, library handles."""

ALLOCATOR_FRACTION = 0.12
"""Caching-allocator overhead on top of the allocated bytes (fragmentation, rounding, library workspaces)."""

SAFETY = 1.15
"""Issue 20: a replica fits when its modelled peak × 1.15 ≤ its share of the card."""

TARGETS_GIB: dict[str, float] = {"sds_job_trainer": 10.0, "zero123_sds_batch": 10.0, "multiview_replica": 10.0,
                                  "sdxl": 16.0}
"""Issue 20's targets, by item-name prefix (a MultiView replica serving a full SDS batch: both MultiView items)."""


def modelled_gib(allocated_bytes: int) -> float:
    """A replica's modelled device memory, GiB: ``allocated × (1 + ALLOCATOR_FRACTION) + CONTEXT_GIB``."""
    return allocated_bytes * (1.0 + ALLOCATOR_FRACTION) / GIB + CONTEXT_GIB


def fits(peak_gib: float, budget: float) -> bool:
    """The issue's rule: ``peak × SAFETY ≤ budget``."""
    return peak_gib * SAFETY <= budget


def jobs_peak_gib(job_peak_gib: float, jobs: int) -> float:
    """Modelled peak of ``jobs`` requests of ``job_peak_gib`` each in one process (one CUDA context, the
    allocated bytes added: their peaks may coincide)."""
    allocated = (job_peak_gib - CONTEXT_GIB) / (1.0 + ALLOCATOR_FRACTION)
    return jobs * allocated * (1.0 + ALLOCATOR_FRACTION) + CONTEXT_GIB


@dataclass(frozen=True)
class Replica:
    """One GPU deployment of ``serve_config.yaml``.

    Attributes:
        name: deployment name; num_gpus: its GPU share; max_ongoing_requests: requests it serves at once.
        pool: the custom resource it asks for (``pool_sdxl`` …); card: the GPU of that pool's nodes.
        card_gib: that card's memory; budget_gib: ``num_gpus × card_gib``.
    """

    name: str
    num_gpus: float
    max_ongoing_requests: int
    pool: str
    card: str
    card_gib: float

    @property
    def budget_gib(self) -> float:
        return self.num_gpus * self.card_gib


def budget_gib(item_name: str, replica: Replica) -> float:
    """An item's budget: its replica's share, lowered to the issue's target for the items it names."""
    targets = [gib for prefix, gib in TARGETS_GIB.items() if item_name.startswith(prefix)]
    return min([replica.budget_gib, *targets])


def _pool_cards(rayservice: dict[str, Any]) -> dict[str, str]:
    """Custom resource offered by each worker group → the card of its instance type."""
    cards = {}
    for group in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        offered = group.get("rayStartParams", {}).get("resources")
        if not offered:
            continue
        resources = json.loads(offered.strip("'\""))
        instance = group["template"]["spec"].get("nodeSelector", {}).get("node.kubernetes.io/instance-type")
        for resource in resources:
            if instance in INSTANCE_CARDS:
                cards[resource] = INSTANCE_CARDS[instance]
    return cards


@dataclass(frozen=True)
class ServeConfig:
    """The GPU replicas of ``serve_config.yaml`` on the pools of ``k8s/rayservice.yaml``.

    Attributes:
        replicas: by deployment name, those with ``num_gpus`` > 0.
        args: the application's ``args`` (``sds_max_batch_size`` …).
    """

    replicas: dict[str, Replica]
    args: dict[str, Any]

    @classmethod
    def load(cls, serve_config: Path, rayservice: Path) -> ServeConfig:
        """Read both files.

        Raises:
            KeyError: a GPU deployment asks for no pool resource, or its pool runs on no known card.
        """
        serve = yaml.safe_load(Path(serve_config).read_text())
        (app,) = [a for a in serve["applications"] if a.get("name") == "lift3d"] or serve["applications"][:1]
        documents = [d for d in yaml.safe_load_all(Path(rayservice).read_text()) if d and d.get("kind") == "RayService"]
        cards = _pool_cards(documents[0])
        replicas = {}
        for deployment in app["deployments"]:
            options = deployment.get("ray_actor_options", {})
            num_gpus = float(options.get("num_gpus", 0) or 0)
            if num_gpus <= 0:
                continue
            pools = [r for r in options.get("resources", {}) if r in cards]
            if not pools:
                raise KeyError(f"{deployment['name']} asks for no pool resource of k8s/rayservice.yaml: "
                               f"{options.get('resources')}")
            card = cards[pools[0]]
            replicas[deployment["name"]] = Replica(
                deployment["name"], num_gpus, int(deployment.get("max_ongoing_requests", 1)), pools[0], card,
                CARD_MEMORY_MIB[card] / 1024)
        return cls(replicas, dict(app.get("args", {})))

    def replica(self, name: str) -> Replica:
        return self.replicas[name]


def check_items(items: list[dict[str, Any]], serve: ServeConfig) -> list[str]:
    """What does not fit, against ``serve``'s replicas (not the budgets written beside the peaks): one line per
    item whose ``peak_gib × SAFETY`` exceeds its budget. ``nerf_trainer_replica`` is recomputed for the trainer's
    current ``max_ongoing_requests`` from the worst one-job item (``sds_job_trainer``, ``mesh_export``)."""
    peaks = {item["name"]: item["peak_gib"] for item in items}
    job_items = [peaks[name] for name in ("sds_job_trainer", "mesh_export") if name in peaks]
    failures = []
    for item in items:
        replica = serve.replica(item["replica"])
        peak = item["peak_gib"]
        if item["name"] == "nerf_trainer_replica" and job_items:
            peak = jobs_peak_gib(max(job_items), replica.max_ongoing_requests)
        budget = budget_gib(item["name"], replica)
        if not fits(peak, budget):
            failures.append(f"{item['name']} ({item['replica']}): {peak:.2f} GiB × {SAFETY} = {peak * SAFETY:.2f} GiB "
                            f"> budget {budget:.2f} GiB ({replica.num_gpus:g} × {replica.card} {replica.card_gib:.2f} "
                            f"GiB, issue targets)")
    return failures
