"""The web playground at ``/``: one static page (``static/index.html``, ``app.js``, ``viewer.js``, ``style.css``)
and the three.js and eventsource-parser files vendored under ``static/vendor/`` (``tools/vendor_js.py``), all
served by lift3d.

The page's Content-Security-Policy allows its own origin only (plus ``blob:`` for the images, video and model it
downloads with the API key, and ``data:`` for the empty favicon), so the browser itself refuses any request that
would leave the server — the page works air-gapped. The page is public; what it calls under ``/v1/`` needs a key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "mount_static", "router"]

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                           "connect-src 'self' blob:; script-src 'self'; style-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
"""Everything from this origin; blob: URLs for what the page downloads with the API key."""

_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class _StaticFiles(StaticFiles):
    """Static files with the page's security headers."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


router = APIRouter()
"""The page at ``/`` (the files it loads: :func:`mount_static`)."""


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


def mount_static(api: FastAPI) -> None:
    """Serve the page's files under ``/static/``, with its security headers."""
    api.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
