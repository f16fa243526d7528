"""The API documentation pages (issue 23, finding 5): ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) are served by
lift3d from vendored copies under the playground's Content-Security-Policy, name no other origin, and render the
API in a real headless Chromium without a single request leaving the server or a console error (a CSP violation is
one)."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import expect

from lift3d.service.api.routes.playground import CONTENT_SECURITY_POLICY
from lift3d.service.config import ServiceConfig
from lift3d.service.local_server import LocalServer
from playground.test_browser import CHROMIUM_FLAGS, chromium_path

PAGES = {"/docs": ("swagger-ui-dist", "swagger-ui-bundle.js"), "/redoc": ("redoc", "redoc.standalone.js")}
"""Each page and the vendored bundle it loads."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    config = ServiceConfig(preset="tiny", store_url=str(tmp / "store"), database_url=f"sqlite:///{tmp / 'db'}")
    with LocalServer(config) as running:
        yield running


@pytest.mark.parametrize("path", sorted(PAGES))
def test_docs_pages_are_self_hosted_with_the_playground_csp(server, path):
    page = httpx.get(server.url + path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    if path == "/redoc":  # its styles carry this response's nonce; nothing else differs
        (nonce,) = re.findall(r"'nonce-([A-Za-z0-9_-]{24})'", policy)
        assert f'redoc.standalone.js" data-style-nonce="{nonce}"' in page.text  # read by the bundle
        assert nonce not in httpx.get(server.url + path).text  # drawn for each response
        policy = policy.replace(f" 'nonce-{nonce}'", "")
    assert policy == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert re.search(r"https?://|//[a-z]", page.text, re.I) is None, "the page names another origin"
    assert "<script>" not in page.text and re.search(r"\son[a-z]+=", page.text) is None  # no inline code
    folder, bundle = PAGES[path]
    assert f'src="/static/vendor/{folder}/{bundle}"' in page.text
    script = httpx.get(f"{server.url}/static/vendor/{folder}/{bundle}")
    assert script.status_code == 200 and len(script.content) > 500_000  # the real bundle, served here
    assert script.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_no_cdn_page_is_left_behind(server):
    """FastAPI's own /docs and /redoc (jsdelivr, Google Fonts) are off; the schema does not list the pages."""
    spec = httpx.get(server.url + "/openapi.json").json()
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(spec["paths"])
    for path in PAGES:
        assert "cdn.jsdelivr.net" not in httpx.get(server.url + path).text


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - the browser tests' own dependency

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.mark.parametrize("path, rendered", [
    ("/docs", "#swagger-ui .opblock-summary-path[data-path='/v1/generation/image-to-3d']"),
    ("/redoc", "#redoc [data-section-id^='operation/']"),
])
def test_docs_render_in_a_browser_without_leaving_the_origin(browser, server, path, rendered):
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith((server.url + "/", "blob:", "data:"))
            else foreign.append(request.url))
    page.goto(server.url + path)
    expect(page.locator(rendered).first).to_be_attached(timeout=30_000)
    context.close()
    assert foreign == [], f"requests left the server's origin: {foreign}"
    assert errors == [], errors


def test_the_redoc_bundle_names_no_cdn_and_styles_with_the_page_nonce():
    """tools/vendor_js.py's edits of ReDoc's bundle: Redocly's CDN logo gone, webpack's style nonce read from the
    loading script (without it perfect-scrollbar's <style> is blocked by the page's policy)."""
    from lift3d.service.api.routes.playground import STATIC_DIR

    text = (STATIC_DIR / "vendor" / "redoc" / "redoc.standalone.js").read_text()
    assert "cdn.redoc.ly" not in text and "https://cdn" not in text
    assert text.count("r.nc=document.currentScript&&document.currentScript.dataset.styleNonce||void 0;") == 1
