"""Content negotiation: which representation an ``Accept`` header (RFC 9110 §12.5.1) prefers.

Two questions only, each with the route's default when the header is absent: :func:`wants_json` (a generation's
result: the GLB or ZIP itself, or the JSON result) and :func:`wants_png` (an image endpoint: Stability's JSON, or
the PNG itself).

Examples:
    >>> wants_json("application/json"), wants_json(None), wants_json("model/gltf-binary;q=1, application/json;q=0.5")
    (True, False, False)
    >>> wants_png("image/png"), wants_png(None)
    (True, False)
"""

from __future__ import annotations

import re

from lift3d.io.media_types import GLB, JSON, OCTET_STREAM, PNG, ZIP

__all__ = ["wants_json", "wants_png"]

_BINARY_RESULTS = (GLB, ZIP, OCTET_STREAM, "model/*")
_Q = re.compile(r"q=[01](\.\d+)?")


def _ranges(accept: str) -> list[tuple[str, list[str]]]:
    """``(media range, parameters)`` of each comma-separated element of ``accept``, stripped."""
    ranges = []
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        ranges.append((media, params))
    return ranges


def wants_json(accept: str | None) -> bool:
    """Whether ``Accept`` ranks application/json at least as high as any binary type it names (a malformed
    ``q`` counts as 0); False when absent (the binary result is the default)."""
    if not accept:
        return False
    best_json, best_other = 0.0, 0.0
    for media, params in _ranges(accept):
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media == JSON:
            best_json = max(best_json, q)
        elif media in _BINARY_RESULTS:
            best_other = max(best_other, q)
    return best_json > 0 and best_json >= best_other


def wants_png(accept: str | None) -> bool:
    """Whether ``Accept`` prefers ``image/png`` (or ``image/*``) to ``application/json`` (a malformed ``q`` counts
    as 1); JSON when absent."""
    best = {"json": 0.0, "png": 0.0}
    for media, params in _ranges(accept or ""):
        q = next((float(p[2:]) for p in params if p.startswith("q=") and _Q.fullmatch(p)), 1.0)
        if media == JSON:
            best["json"] = max(best["json"], q)
        elif media in (PNG, "image/*"):
            best["png"] = max(best["png"], q)
    return best["png"] > best["json"]
