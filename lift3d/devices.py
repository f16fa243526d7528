"""Choosing the torch device and the process's CPU resources (kept free of the diffusion imports so every CLI
command can use it quickly)."""

from __future__ import annotations

import ctypes

import torch

from lift3d.errors import InvalidInputError

__all__ = ["release_free_memory", "resolve_device", "set_torch_threads"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; otherwise the named device (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        InvalidInputError: for an unknown device name, or a CUDA device on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInputError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {name!r} requested but CUDA is not available here")
    return device


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads for this process; None leaves torch's default (the physical cores, or
    ``OMP_NUM_THREADS``, which Ray sets per replica).

    CPU results depend on the thread count in their last bits (reductions are split per thread), so a generation
    reproduces bit for bit only with the same count: ``lift3d generate --threads N`` matches a Serve graph whose
    ``torch_threads`` is N.

    Raises:
        InvalidInputError: ``threads`` < 1.
    """
    if threads is None:
        return
    if threads < 1:
        raise InvalidInputError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def release_free_memory() -> bool:
    """Give the pages that the C heap holds free back to the operating system: glibc's ``malloc_trim(0)``.

    Call it between jobs in a process that runs job after job (a ``NerfTrainer`` replica). glibc keeps what a job
    freed inside its arenas and gives back on its own only the free space at the top of each heap, so a trainer's
    RSS rose from 0.5 GB to 1.0–1.15 GB over its first jobs and swung by ±100 MB from job to job, while the memory
    in use stayed at ~0.2 GB (issue 11; ``benchmarks/bench_trainer_memory.py``). Safe from any thread while others
    allocate (it takes each arena's lock in turn); 15–60 ms after a tiny job.

    Returns:
        True if glibc returned memory; False if there was none to return, or no glibc (musl, macOS).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False
