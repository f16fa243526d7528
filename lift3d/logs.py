"""Structured logs with the job on every line: a job context, a filter that stamps it, a JSON formatter.

While :func:`job_log_context` is active (a :mod:`contextvars` variable, so per thread and per asyncio task),
:class:`JobContextFilter` stamps every log record that passes it with ``lift3d_job_id`` and ``lift3d_attempt``.
The names are not ``job_id``/``attempt`` because Ray Serve's JSON replica logs overwrite and then delete a record's
``job_id`` attribute (it means the Ray job there; ``SERVE_LOG_UNWANTED_ATTRS`` in ``ray/serve/_private/constants.py``).

:func:`set_job_attempt` adds the attempt number once it is known. Threads do not inherit context variables: start a
job's threads on :func:`in_current_context` (``asyncio.to_thread`` already copies the context). Two outputs:

- :func:`configure_json_logging` (CLI, batch, tests): one JSON object per line on a stream, stdlib only
  (:class:`JsonFormatter`).
- :func:`install_job_log_filter` (every Serve replica's ``__init__``): the replica's own logs, written by Serve as
  JSON when the deployment's ``logging_config`` says ``encoding: JSON``, carry the job fields too. Ray-free: it works
  on the standard-library logger that Serve configures (``"ray.serve"``), by name.

Examples:
    >>> handler = configure_json_logging()                  # stderr, INFO, on the root logger
    >>> with job_log_context("3f2a", attempt=1):
    ...     logging.getLogger("lift3d.demo").info("sds step %d", 3)
    # one line on stderr (wrapped here):
    # {"ts": "2025-01-01T12:00:00.000Z", "level": "INFO", "logger": "lift3d.demo", "message": "sds step 3",
    #  "lift3d_job_id": "3f2a", "lift3d_attempt": 1}
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TextIO, TypeVar

__all__ = [
    "ATTEMPT_FIELD",
    "JOB_ID_FIELD",
    "JobContextFilter",
    "JobLogContext",
    "JsonFormatter",
    "configure_json_logging",
    "current_job",
    "in_current_context",
    "install_job_log_filter",
    "job_log_context",
    "set_job_attempt",
]

JOB_ID_FIELD = "lift3d_job_id"
"""Record attribute (and JSON key) holding the job id."""
ATTEMPT_FIELD = "lift3d_attempt"
"""Record attribute (and JSON key) holding the attempt number (absent when the context has none)."""

APP_LOGGERS = ("lift3d", "deployments", "nerf")
"""The project's logger hierarchies (modules log to ``logging.getLogger(__name__)``)."""
SERVE_LOGGER = "ray.serve"
"""The logger Ray Serve configures in each replica (handlers per ``logging_config``; it does not propagate)."""

T = TypeVar("T")


@dataclass(frozen=True)
class JobLogContext:
    """The job a piece of work belongs to."""

    job_id: str
    attempt: int | None = None


_current: contextvars.ContextVar[JobLogContext | None] = contextvars.ContextVar("lift3d_job_log_context",
                                                                               default=None)


def current_job() -> JobLogContext | None:
    """The job of the running thread or task, or None outside :func:`job_log_context`."""
    return _current.get()


@contextmanager
def job_log_context(job_id: str, attempt: int | None = None) -> Iterator[JobLogContext]:
    """Within the block, log records of this thread (or asyncio task) are stamped with the job.

    Nested blocks override the outer one until they end (e.g. the attempt number once it is known).
    """
    context = JobLogContext(job_id, attempt)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def set_job_attempt(attempt: int) -> None:
    """Add the attempt number to the current job context once it is known (after the job record is read).

    Lasts until the enclosing :func:`job_log_context` block ends, which restores what was there before it.

    Raises:
        RuntimeError: outside a :func:`job_log_context` block.
    """
    context = _current.get()
    if context is None:
        raise RuntimeError("set_job_attempt outside job_log_context")
    _current.set(JobLogContext(context.job_id, attempt))


def in_current_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to a copy of the caller's context variables (the job context among them), for threads:

    ``threading.Thread(target=in_current_context(self._heartbeat), ...)``. Each call runs in its own copy of the
    context captured here, so the wrapper may run in several threads at once.
    """
    captured = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> T:
        return captured.copy().run(fn, *args, **kwargs)

    run.__name__ = getattr(fn, "__name__", "run")
    run.__doc__ = fn.__doc__
    return run


class JobContextFilter(logging.Filter):
    """Stamps ``lift3d_job_id`` (and ``lift3d_attempt`` when known) on records emitted inside a job context; never
    drops a record. A value already on the record (``extra={...}``) is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if context is not None:
            if not hasattr(record, JOB_ID_FIELD):
                setattr(record, JOB_ID_FIELD, context.job_id)
            if context.attempt is not None and not hasattr(record, ATTEMPT_FIELD):
                setattr(record, ATTEMPT_FIELD, context.attempt)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, the job
    fields when the record has them, ``exc_info`` (the formatted traceback) and ``stack_info`` when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in (JOB_ID_FIELD, ATTEMPT_FIELD):
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_json_logging(stream: TextIO | None = None, level: int = logging.INFO,
                           logger: logging.Logger | None = None) -> logging.Handler:
    """Add a handler writing JSON lines (:class:`JsonFormatter`, with :class:`JobContextFilter`) to ``stream``
    (default stderr) on ``logger`` (default the root logger), set its level, and return the handler (remove it with
    ``logger.removeHandler``)."""
    logger = logger if logger is not None else logging.getLogger()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


class _ToServeHandlers(logging.Handler):
    """Hands records of the project's loggers to the handlers that the Serve logger has at that moment (Serve
    replaces them when a deployment's ``logging_config`` changes), stamped with the job first."""

    def __init__(self, serve_logger: logging.Logger) -> None:
        super().__init__()
        self.serve_logger = serve_logger
        self.addFilter(JobContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        if not self.serve_logger.isEnabledFor(record.levelno):
            return
        for handler in list(self.serve_logger.handlers):
            if record.levelno >= handler.level:
                handler.handle(record)


def install_job_log_filter(serve_logger: str = SERVE_LOGGER, app_loggers: tuple[str, ...] = APP_LOGGERS,
                           level: int = logging.INFO) -> None:
    """Make a Serve replica's logs carry the job: call once in each deployment's ``__init__`` (idempotent).

    - Records logged on the Serve logger itself (``print`` and stdout/stderr, which Serve redirects there) are
      stamped by a :class:`JobContextFilter` on that logger.
    - The project's loggers (``app_loggers``, set to ``level``) propagate to the root logger, which in a replica
      has no handler and stays at WARNING (unless the Ray job was started with Ray Core's own ``logging_config``):
      their INFO lines are dropped and their warnings reach only the worker's stderr. Here their records also go to
      the Serve logger's handlers, stamped. With ``logging_config: {encoding: JSON}`` Serve writes each as one JSON
      object in the replica's log file (Ray's ``JSONFormatter`` keeps every extra record attribute:
      ``lift3d_job_id``, ``lift3d_attempt``) beside Serve's own fields (deployment, replica, request id, Ray ids).
      With the default TEXT encoding the lines are written without the job fields.
    """
    target = logging.getLogger(serve_logger)
    if not any(isinstance(f, JobContextFilter) for f in target.filters):
        target.addFilter(JobContextFilter())
    for name in app_loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToServeHandlers) and h.serve_logger is target for h in logger.handlers):
            logger.addHandler(_ToServeHandlers(target))
        logger.setLevel(level)
