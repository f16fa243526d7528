"""What every batch actor needs: its GPU share and its torch device and threads."""

from __future__ import annotations

import ray
import torch

from lift3d.devices import set_torch_threads

__all__ = ["actor_device", "assigned_gpu_fraction", "local_gpus", "torch_threads"]


def assigned_gpu_fraction() -> float:
    """GPUs Ray assigned to this actor (fractions included; 0.0 without GPUs)."""
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def local_gpus() -> int:
    """CUDA devices of this machine (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def torch_threads(num_cpus: float) -> int:
    """Torch CPU threads of an actor holding ``num_cpus`` CPUs: at least one."""
    return max(1, int(num_cpus))


def actor_device(device: str, threads: int) -> str:
    """This actor's torch device, its CPU threads set: ``auto`` → ``cuda`` when it holds a GPU and CUDA works (fake
    GPU counts give ``cpu``), else the device named."""
    set_torch_threads(threads)
    if device != "auto":
        return device
    return "cuda" if assigned_gpu_fraction() > 0 and torch.cuda.is_available() else "cpu"
