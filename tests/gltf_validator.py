"""Run the Khronos glTF-Validator (npm package ``gltf-validator``, via ``tools/gltf_validate.mjs``) from Python.

The package is installed into ``node_modules/`` at the repository root by ``npm ci`` (part of ``make install``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["ROOT", "ValidatorUnavailable", "error_messages", "validate", "validator_problem"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gltf_validate.mjs"
PACKAGE = ROOT / "node_modules" / "gltf-validator"


class ValidatorUnavailable(RuntimeError):
    """node or the gltf-validator package is missing."""


def validator_problem() -> str | None:
    """Why the validator cannot run here (a sentence), or None when it can."""
    if shutil.which("node") is None:
        return "node is not on PATH (install Node.js 18+)"
    if not PACKAGE.is_dir():
        return f"{PACKAGE} is missing: run `npm ci` in {ROOT} (or `make install`)"
    return None


def require_validator() -> None:
    """Skip the calling test when the validator is missing, or fail it where LIFT3D_REQUIRE_GLTF_VALIDATOR=1
    (``make test`` sets it, so CI cannot pass by skipping)."""
    import pytest

    problem = validator_problem()
    if problem is None:
        return
    if os.environ.get("LIFT3D_REQUIRE_GLTF_VALIDATOR") == "1":
        pytest.fail(f"glTF-Validator required but unavailable: {problem}")
    pytest.skip(f"glTF-Validator unavailable: {problem}")


def validate(*paths: str | os.PathLike, timeout_s: float = 120.0) -> list[dict]:
    """Validation reports, one per file, as the validator's JSON objects.

    A report's ``report["issues"]["numErrors"]`` counts errors; ``report["issues"]["messages"]`` lists the issues
    (``code``, ``message``, ``severity`` 0=error 1=warning 2=info 3=hint, ``pointer``).

    Raises:
        ValidatorUnavailable: node or the npm package is missing.
        RuntimeError: the validator could not read or parse a file at all.
    """
    problem = validator_problem()
    if problem is not None:
        raise ValidatorUnavailable(problem)
    proc = subprocess.run(
        ["node", str(SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"gltf-validator failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def error_messages(report: dict) -> list[str]:
    """``"CODE at POINTER: message"`` for every error (severity 0) of one report."""
    return [
        f"{m['code']} at {m.get('pointer', '?')}: {m['message']}"
        for m in report["issues"]["messages"]
        if m["severity"] == 0
    ]
