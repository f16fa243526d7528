"""Ray Serve deployments: thin wrappers over the ``lift3d`` stage classes, bound together in ``graph.py``.

- :mod:`deployments.text_to_image` — ``TextToImage`` (SDXL)
- :mod:`deployments.background` — ``BackgroundRemoval`` (rembg + recentring)
- :mod:`deployments.multiview` — ``MultiView`` (Stable Zero123: condition encoding, novel views, batched SDS)
- :mod:`deployments.nerf_trainer` — ``NerfTrainer`` (runs one job: calls the others, trains, exports, uploads)
- :mod:`deployments.tasks` — ``JobConsumer`` (Ray Serve asynchronous inference: the job queue's consumer)
- :mod:`deployments.ingress` — ``Ingress`` (FastAPI: validation, submission, status, results; handle API)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StageResult", "assigned_gpu_fraction", "stage_device"]


@dataclass
class StageResult:
    """What a model deployment returns: the value, the seconds it computed (excluding queueing) and the GPU
    fraction its replica holds (for the cost model)."""

    value: object
    busy_s: float
    gpu_fraction: float


def assigned_gpu_fraction() -> float:
    """GPUs assigned to this replica by Ray (fractions included; 0.0 outside Ray or without GPUs)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def stage_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when this replica holds a GPU and CUDA works (fake GPU counts give ``cpu``)."""
    import torch

    if device != "auto":
        return device
    return "cuda" if assigned_gpu_fraction() > 0 and torch.cuda.is_available() else "cpu"
