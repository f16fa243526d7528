"""Choosing the torch device (kept free of the diffusion imports so every CLI command can use it quickly)."""

from __future__ import annotations

import torch

from lift3d.errors import InvalidInputError

__all__ = ["resolve_device"]


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
