"""What the model and trainer replicas share: their GPU share, their torch device and threads, timed calls."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

import torch

from lift3d.devices import set_torch_threads
from lift3d.pipeline.providers import Timed

__all__ = ["assigned_gpu_fraction", "replica_device", "run_timed"]

T = TypeVar("T")


def assigned_gpu_fraction() -> float:
    """GPUs assigned to this replica by Ray (fractions included; 0.0 outside Ray or without GPUs)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def replica_device(device: str = "auto", torch_threads: int | None = None) -> str:
    """The torch device of this replica, with its CPU thread count set when ``torch_threads`` is given.

    ``auto`` → ``cuda`` when this replica holds a GPU and CUDA works (fake GPU counts give ``cpu``).
    """
    set_torch_threads(torch_threads)  # per process: each replica is its own process
    if device != "auto":
        return device
    return "cuda" if assigned_gpu_fraction() > 0 and torch.cuda.is_available() else "cpu"


async def run_timed(fn: Callable[..., T], *args, gpu_fraction: float | None = None) -> Timed[T]:
    """``fn(*args)`` in a worker thread (never on the replica's event loop), with its busy seconds."""
    def call() -> Timed[T]:
        start = time.perf_counter()
        value = fn(*args)
        return Timed(value, time.perf_counter() - start, gpu_fraction)

    return await asyncio.to_thread(call)
