"""Exceptions with messages meant for users (CLI prints them as one line; HTTP maps them to error bodies)."""

from __future__ import annotations


class Lift3DError(Exception):
    """Base class of every error lift3d raises on purpose. ``name`` is the API error name."""

    name = "internal_error"


class InvalidInputError(Lift3DError, ValueError):
    """The user's input (image, prompt, parameter) is unusable; the message says why."""

    name = "invalid_parameters"


class PayloadTooLargeError(InvalidInputError):
    """An uploaded image exceeds the size limits (bytes or pixels)."""

    name = "payload_too_large"


class ModelNotFoundError(Lift3DError, FileNotFoundError):
    """Model weights or files are missing; the message names what and where it looked."""

    name = "model_not_found"
