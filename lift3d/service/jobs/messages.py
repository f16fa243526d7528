"""Messages for API callers without the server's file paths.

Errors raised deep in the engine name the files they read, e.g. a views job's ``/tmp/lift3d-1a2b3c4d-x7/views/
transforms.json: 'camera_angle_x' …``: useful in the server's log, a leak of its layout (temporary folder, store
root, home directory, user name) in an answer. :func:`redact_paths` rewrites every absolute filesystem path in a
message to its last components (``views/transforms.json``), which still tell the caller which of its files was
wrong. It is applied where messages leave the service: the error envelope
(:func:`lift3d.service.api.errors.error_response`) and a failed job's stored message
(:meth:`lift3d.service.jobs.store.JobStore.fail`, which webhooks and event streams also read).

A path is redacted when it starts with a filesystem root directory (``/tmp``, ``/home``, ``/var``, …, or the first
folder of the temporary directory, the home directory or the working directory, wherever they are), optionally
after ``file://``. API paths (``/v1/…``) and URLs (``https://host/a/b``) are left alone.

Examples:
    >>> redact_paths("/tmp/lift3d-1a2b/views/transforms.json: 'camera_angle_x' is missing")
    "views/transforms.json: 'camera_angle_x' is missing"
    >>> redact_paths("poll /v1/generation/abc for the result")
    'poll /v1/generation/abc for the result'
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path

__all__ = ["FILESYSTEM_TOPS", "redact_paths"]

FILESYSTEM_TOPS = frozenset({
    "tmp", "var", "home", "root", "Users", "usr", "opt", "srv", "mnt", "media", "data", "private", "run", "etc",
    "proc", "dev", "sys", "work", "workspace", "app", "nix", "lib", "lib64", "bin", "sbin", "snap", "Volumes",
    "scratch", "cache", "storage"})
"""First folders of absolute paths that name files on the server (plus those of :func:`_local_tops`)."""

_SEGMENT = r"[^\s/'\"`<>|:;,()\[\]{}]+"
_PATH = re.compile(rf"(file://|~|(?<![\w.~:/@-]))(/{_SEGMENT})((?:/{_SEGMENT})*)/?")


@functools.lru_cache(maxsize=1)
def _local_tops() -> frozenset[str]:
    """The first folders of this machine's temporary, home and working directories."""
    tops = set()
    for getter in (tempfile.gettempdir, Path.home, os.getcwd):
        try:
            parts = Path(getter()).resolve().parts
        except (OSError, RuntimeError):  # no home directory, a removed working directory
            continue
        if len(parts) > 1:
            tops.add(parts[1])
    return frozenset(tops)


def _shorten(match: re.Match) -> str:
    prefix, first, rest = match.groups()
    if prefix != "~" and first[1:] not in FILESYSTEM_TOPS and first[1:] not in _local_tops():
        return match.group(0)
    parts = [part for part in (first + rest).split("/") if part]
    return "/".join(parts[-2:]) if len(parts) > 3 else parts[-1]


def redact_paths(message: str) -> str:
    """``message`` with every absolute filesystem path (also ``file://…`` and ``~/…``) cut to its last two
    components, or to its last one when it has three or fewer (``/home/alice/a.png`` → ``a.png``: no user name);
    the rest unchanged."""
    if "/" not in message:
        return message
    return _PATH.sub(_shorten, message)
