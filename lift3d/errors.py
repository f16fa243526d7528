"""Exceptions with messages meant for users (CLI prints them as one line; HTTP maps them to error bodies).

Each class names what went wrong for the API (``name``, the error envelope's ``name``) and the HTTP status of that
answer (``status_code``); the service raises them and one handler (:mod:`lift3d.service.api.errors`) answers.
"""

from __future__ import annotations

import re


class Lift3DError(Exception):
    """Base class of every error lift3d raises on purpose.

    Attributes:
        name: the API error name (``ErrorBody.name``), e.g. ``invalid_parameters``.
        status_code: the HTTP status of the API's answer (100-599); a subclass sets both.
        errors: one message per problem (e.g. per invalid field), or None: the one message is ``str(exc)``.
        retry_after_s: seconds for a ``Retry-After`` header (≥ 1), or None: the answer has none.
    """

    name = "internal_error"
    status_code = 500
    errors: list[str] | None = None
    retry_after_s: int | None = None


class InvalidInputError(Lift3DError, ValueError):
    """The user's input (image, prompt, parameter) is unusable; the message says why."""

    name = "invalid_parameters"
    status_code = 422


class PayloadTooLargeError(InvalidInputError):
    """An uploaded image exceeds the size limits (bytes or pixels)."""

    name = "payload_too_large"
    status_code = 413


class ModelNotFoundError(Lift3DError, FileNotFoundError):
    """Model weights or files are missing; the message names what and where it looked."""

    name = "model_not_found"


#: What users are told about a failure that is not one of lift3d's own errors (the details stay in the logs).
INTERNAL_ERROR_MESSAGE = "internal error while running the generation; the server logged the details"
_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-_])")


def find_cause(exc: BaseException, types: tuple[type[BaseException], ...] = (Lift3DError,)) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s chain of causes, or None.

    The chain is ``exc``, then what it wraps: the ``cause`` attribute of wrapper exceptions (Ray's ``RayTaskError``,
    also when it poses as a subclass of the cause) or else ``__cause__`` (``raise ... from``). A wrapper is never
    the answer itself, since its message is the wrapper's text (process ids, addresses, a traceback).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        wrapped = getattr(current, "cause", None)
        if isinstance(wrapped, BaseException):
            current = wrapped
            continue
        if isinstance(current, types):
            return current
        current = current.__cause__
    return None


def describe_error(exc: BaseException, types: tuple[type[BaseException], ...] = (Lift3DError,)) -> str:
    """One line for users, at most 300 characters, without ANSI escape codes.

    The message of the first exception of ``types`` in ``exc``'s chain (:func:`find_cause`; its type name when the
    message is empty), else :data:`INTERNAL_ERROR_MESSAGE`: other errors (and wrappers such as Ray's, whose text
    names processes, addresses and actors) are described in the logs only.
    """
    cause = find_cause(exc, types)
    if cause is None:
        return INTERNAL_ERROR_MESSAGE
    text = _ANSI_ESCAPE.sub("", str(cause)).strip()
    line = text.splitlines()[0].strip() if text else ""
    return (line or type(cause).__name__)[:300]
