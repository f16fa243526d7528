"""Choosing the torch device (kept free of the diffusion imports so every CLI command can use it quickly)."""

from __future__ import annotations

import torch

from lift3d.errors import InvalidInputError

__all__ = ["resolve_device", "set_torch_threads"]


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
