"""The web playground at ``/``: one static page (``static/index.html``, ``app.js``, ``viewer.js``, ``style.css``)
and the three.js and eventsource-parser files vendored under ``static/vendor/`` (``tools/vendor_js.py``), all
served by lift3d.

The API's documentation pages are served the same way: ``/docs`` (Swagger UI, ``static/docs.html`` + ``docs.js``)
and ``/redoc`` (ReDoc, ``static/redoc.html`` + ``redoc.js``), both on ``/openapi.json``, their code vendored from npm
(``swagger-ui-dist``, ``redoc``) instead of FastAPI's default CDN pages: no third-party script runs on the origin
where the playground keeps the API key in ``localStorage``, and the pages work air-gapped.

The pages' Content-Security-Policy allows their own origin only (plus ``blob:`` for the images, video and model the
playground downloads with the API key, and ``data:`` for the empty favicon and inline icons), so the browser itself
refuses any request that would leave the server; ``/redoc`` also allows the ``<style>`` elements that carry its
response's nonce (ReDoc's styled-components). The pages are public; what they call under ``/v1/`` needs a key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse
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
"""The page at ``/`` and the API documentation at ``/docs`` and ``/redoc`` (the files they load:
:func:`mount_static`); the app is created with FastAPI's own CDN pages off (``docs_url=None, redoc_url=None``)."""


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> FileResponse:
    """Swagger UI on ``/openapi.json`` (vendored; started by ``static/docs.js``)."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html", headers=_HEADERS)


@router.get("/redoc", include_in_schema=False)
async def redoc() -> HTMLResponse:
    """ReDoc on ``/openapi.json`` (vendored standalone bundle, started by ``static/redoc.js``). ReDoc styles itself
    with ``<style>`` elements, so this page's policy also allows the ``<style>`` elements that carry a nonce drawn
    for this response (CSP Level 3 ``'nonce-…'``; the bundle reads it from its ``<script>``'s ``data-style-nonce``,
    see ``tools/vendor_js.py``); scripts stay ``'self'`` only, as on every page."""
    nonce = secrets.token_urlsafe(18)
    page = (STATIC_DIR / "redoc.html").read_text().replace("{{STYLE_NONCE}}", nonce)
    policy = CONTENT_SECURITY_POLICY.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")
    return HTMLResponse(page, headers={**_HEADERS, "Content-Security-Policy": policy})


def mount_static(api: FastAPI) -> None:
    """Serve the page's files under ``/static/``, with its security headers."""
    api.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
