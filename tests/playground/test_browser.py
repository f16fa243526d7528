"""The playground in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against the service in
one process (:class:`lift3d.service.local_server.LocalServer`, tiny preset, API keys on): upload, progress, the
model in the viewer, the GLB download, cancel, a bad file's error — with no console errors and no request leaving
the server's origin. ``LIFT3D_UPDATE_SCREENSHOT=1`` makes the run rewrite ``docs/playground.png``, the README's
screenshot.

Without the browser these tests fail (they never skip): ``make test`` installs Debian's chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from lift3d.service.config import ServiceConfig
from lift3d.service.local_server import LocalServer

ROOT = Path(__file__).resolve().parents[2]
DRAGON = ROOT / "examples" / "dragon2_rgba.png"
SCREENSHOT = ROOT / "docs" / "playground.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"]
TINY = {"num_views": "4", "num_multiview_steps": "2", "num_inference_steps": "2", "num_3d_max_steps": "10",
        "seed": "7"}
KEEPALIVE_S = 0.1
"""The event stream's keep-alive interval here (15 s in service): a tiny job outlives several comment lines."""
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
VIEWS_ONLY = {key: value for key, value in TINY.items() if not key.startswith("num_3d")}
"""A "Views only" job (no NeRF): a few seconds on the tiny preset, enough for several keep-alives."""


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; make test does it as root)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("playground")
    config = ServiceConfig(preset="tiny", store_url=str(tmp / "store"), database_url=f"sqlite:///{tmp / 'db'}",
                           default_rate_limit_per_min=10_000, default_max_concurrent_jobs=4, heartbeat_s=0.5,
                           lease_s=30, events_keepalive_s=KEEPALIVE_S)
    with LocalServer(config) as running:
        running.key = running.state.keys.create(name="browser", credits=1000).key
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - the browser tests' own dependency

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the playground; fails the test on a console error or a request to another origin."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    opened.expected_errors = []  # console lines a test provokes on purpose (the browser logs every 4xx it gets)
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("request", lambda request: None if request.url.startswith((server.url + "/", "blob:", "data:"))
              else foreign.append(request.url))
    opened.goto(server.url + "/")
    opened.get_by_test_id("api-key").fill(server.key)
    opened.get_by_test_id("api-key").dispatch_event("change")
    expect(opened.locator("#basic [name]").first).to_be_attached()  # the form was built from /openapi.json
    yield opened
    context.close()
    assert foreign == [], f"requests left the server's origin: {foreign}"
    assert [e for e in errors if not any(expected in e for expected in opened.expected_errors)] == [], errors


def set_parameters(page, values: dict[str, str]) -> None:
    page.locator("details summary").click()
    for name, value in values.items():
        field = page.locator(f"[name={name}]")
        if field.get_attribute("type") == "checkbox":
            field.set_checked(value == "true")
        else:
            field.fill(value)


def test_the_form_is_built_from_the_openapi_schema(page, server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schema = spec["paths"]["/v1/generation/image-to-3d"]["post"]["requestBody"]["content"]["multipart/form-data"]
    names = set(page.eval_on_selector_all("#basic [name], #advanced [name]", "els => els.map(e => e.name)"))
    assert names <= set(schema["schema"]["properties"]) and {"num_views", "seed", "texture_size"} <= names
    num_views = page.locator("[name=num_views]")
    assert (num_views.get_attribute("min"), num_views.get_attribute("max"), num_views.input_value()) == ("4", "12", "8")
    assert page.locator("[name=sampler]").input_value() == ""  # nullable: omitted unless chosen (the model's own)
    assert page.locator("[name=scheduler]").input_value() == "normal"
    unlabelled = page.eval_on_selector_all("input, select, textarea", "els => els.filter(e => !e.closest('label') "
                                           "&& !e.getAttribute('aria-label')).map(e => e.id || e.name)")
    assert unlabelled == []
    assert page.evaluate("localStorage.getItem('lift3d.apiKey')") == server.key
    page.reload()  # the key survives a reload (local storage)
    assert page.get_by_test_id("api-key").input_value() == server.key
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_the_method_choice_is_sent_with_the_job(page, server):
    """The Basic fieldset starts with the method (sds, the default; fast; fast+sds), which the POST carries; "Views
    only" jobs have none. The route answers here with an envelope naming the field (no job runs)."""
    method = page.locator("#basic [name=method]")
    assert page.locator("#basic [name]").first.get_attribute("name") == "method"
    assert method.evaluate("el => [...el.options].map(o => o.value)") == ["sds", "fast", "fast+sds"]
    assert method.input_value() == "sds" and page.get_by_label("Method").count() == 1
    sent: list[str] = []

    def refuse(route):
        sent.append(route.request.post_data_buffer.decode("utf-8", "replace"))
        route.fulfill(status=422, content_type="application/json",
                      body=json.dumps({"id": "x", "name": "invalid_parameters", "errors": ["method: noted"]}))

    page.route("**/v1/generation/image-to-3d", refuse)
    page.expected_errors.append("status of 422")
    page.get_by_test_id("image-input").set_input_files(str(DRAGON))
    method.select_option("fast+sds")
    page.get_by_test_id("submit").click()
    expect(page.locator(".field-error[data-error-for=method]")).to_have_text("method: noted")
    assert len(sent) == 1 and re.search(r'name="method"\r\n\r\nfast\+sds\r\n', sent[0]), sent
    page.get_by_label("Views only").check()
    assert page.locator("[name=method]").count() == 0


def test_upload_watch_view_download(page, server, tmp_path):
    page.get_by_test_id("image-input").set_input_files(str(DRAGON))
    set_parameters(page, {**TINY, "texture": "false", "video": "true", "video_frames": "8", "video_size": "64"})
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("progress")).to_contain_text("·", timeout=60_000)  # stage · step/total
    page.wait_for_selector("[data-testid=viewer][data-loaded=true]", timeout=240_000)
    assert page.locator("#views img").count() == 4 and page.locator("#preview").is_visible()
    assert page.locator("#video").is_visible() and "random_weights" in page.locator("#metadata").text_content()
    with page.expect_download() as download:
        page.get_by_test_id("download-glb").click()
    saved = tmp_path / "model.glb"
    download.value.save_as(saved)
    job_id = page.evaluate("document.querySelector('#log li').textContent.split('accepted ')[1]")
    api = httpx.get(f"{server.url}/v1/generation/{job_id}", headers={"Authorization": f"Bearer {server.key}"})
    assert api.headers["content-type"] == "model/gltf-binary" and saved.read_bytes() == api.content
    assert page.locator("#history li").count() >= 1
    page.get_by_label("Wireframe").check()  # the viewer's modes switch without errors
    page.get_by_label("Normals").check()
    page.get_by_label("Normals").uncheck()
    page.get_by_label("Wireframe").uncheck()
    page.evaluate("window.scrollTo(0, 0)")
    # The README's screenshot: rewritten when asked (LIFT3D_UPDATE_SCREENSHOT=1) or missing, so that a test run
    # leaves the checkout clean otherwise.
    target = SCREENSHOT if os.environ.get("LIFT3D_UPDATE_SCREENSHOT") or not SCREENSHOT.exists() else tmp_path / "p.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cancel_a_running_job(page, server):
    page.get_by_test_id("prompt-input").fill("a wooden toy robot")
    page.get_by_label("Negative prompt").fill("blurry")
    set_parameters(page, {**TINY, "num_3d_max_steps": "400", "texture": "false"})
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("progress")).to_contain_text("sds_training", timeout=120_000)
    page.get_by_test_id("cancel").click()
    expect(page.get_by_test_id("progress")).to_have_text("canceled", timeout=60_000)
    assert page.get_by_test_id("cancel").is_disabled() and page.get_by_test_id("viewer").get_attribute("data-loaded") == "false"
    job_id = page.locator("#log li").first.text_content().split("accepted ")[1]
    record = server.state.jobs.get(job_id)
    assert record.status == "canceled" and record.params.negative_prompt == "blurry"


# Records every text the progress line shows, with whether Cancel was enabled then and the keep-alives counted so far
# (app.js counts the stream's comment lines in #log's data-keepalives and shows none of them).
RECORD_PROGRESS = """() => {
  window.shown = [];
  const progress = document.querySelector('#progress');
  new MutationObserver((records) => {
    for (const record of records) {
      for (const node of record.addedNodes) window.shown.push({ text: node.textContent,
        cancel: !document.querySelector('#cancel').disabled,
        keepalives: Number(document.querySelector('#log').dataset.keepalives || 0) });
    }
  }).observe(progress, { childList: true });
}"""


def log_lines(page) -> list[str]:
    """The event log's lines without their time stamps ("5:40:12 AM accepted …" → "accepted …")."""
    return [re.sub(r"^\d{1,2}:\d{2}:\d{2}(?:\s*[AP]M)?\s", "", line)
            for line in page.locator("#log li").all_text_contents()]


def run_views_only(page) -> None:
    """Submit a "Views only" job of the dragon and wait until the page shows its result (the views' downloads)."""
    page.get_by_label("Views only").check()
    page.get_by_test_id("image-input").set_input_files(str(DRAGON))
    set_parameters(page, VIEWS_ONLY)
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("progress")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#downloads li").first).to_be_attached(timeout=60_000)


def test_keepalive_comments_are_not_events(page, server):
    """A job that stays open past several keep-alive comments (every 0.1 s here): the log and the progress line show
    only the stream's real events — never a comment as an event named "message" — and the terminal state once, at
    the end, with Cancel enabled until then."""
    page.evaluate(RECORD_PROGRESS)
    run_views_only(page)
    shown = page.evaluate("window.shown")
    texts = [entry["text"] for entry in shown]
    assert texts[0] == "submitting…" and texts[-1] == "succeeded", texts
    assert [text for text in texts if text in TERMINAL or text == "message"] == ["succeeded"], texts
    during = shown[1:-1]  # after the 202, before the end: "status · stage step/total · ETA"
    assert during and all(re.match(r"^(queued|running) · \S*", entry["text"]) for entry in during), texts
    assert all(entry["cancel"] for entry in during), "the page took a mid-job line for the end (Cancel disabled)"
    assert shown[-1]["keepalives"] >= 2, "the job ended before two keep-alives: make it longer"
    lines = log_lines(page)
    assert lines[0].startswith("accepted ") and lines[-1] == "succeeded", lines
    assert all(re.match(r"^(queued|running) · \S*$", line) for line in lines[1:-1]), lines
    assert [line for line in lines if "message" in line or "ping" in line] == []  # no keep-alive in the log
    assert int(page.locator("#log").get_attribute("data-keepalives")) >= shown[-1]["keepalives"]
    assert page.get_by_test_id("error").is_hidden() and page.get_by_test_id("cancel").is_disabled()


def test_a_broken_event_stream_resumes_from_the_last_event_id(page, server):
    """The first event stream breaks after its first event (a route answers with that event alone, its data split
    over two `data:` lines around a comment, and `retry: 100`): the page joins the data, waits 100 ms (not its
    default 3 s), reconnects with Last-Event-ID and shows every event once."""
    seen: list[tuple[float, str | None]] = []  # (when, Last-Event-ID) of each events request
    first: dict = {}

    def cut(route):
        seen.append((time.monotonic(), route.request.headers.get("last-event-id")))
        if len(seen) > 1:
            route.continue_()
            return
        body = route.fetch(timeout=240_000).text()  # the whole real stream (the job's end)
        block = next(block for block in body.split("\n\n") if "\nevent: " in "\n" + block)
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        first.update(fields, data=json.loads(fields["data"]))
        head, tail = fields["data"].split(",", 1)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
                      body=f": cut after one event\nretry: 100\nid: {fields['id']}\nevent: {fields['event']}\n"
                           f"data: {head},\n: a comment inside the event\ndata: {tail}\n\n")
        first["cut_at"] = time.monotonic()

    page.route("**/v1/generation/*/events", cut)
    run_views_only(page)
    assert [header for _, header in seen] == [None, first["id"]] and first["event"] == "status"
    assert 0.09 <= seen[1][0] - first["cut_at"] < 2.5  # retry: 100 ms, not the page's default 3 s
    status = first["data"]
    assert log_lines(page)[1:] == [f"{status['status']} · {status['stage'] or ''}", "succeeded"]
    assert int(page.locator("#log").get_attribute("data-keepalives")) >= 2  # the cut stream's two comments
    assert page.get_by_test_id("error").is_hidden()


def test_a_bad_file_shows_the_api_error_next_to_the_field(page, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("this is text, not a PNG")
    page.expected_errors.append("status of 422")
    page.get_by_test_id("image-input").set_input_files(str(bad))
    page.get_by_test_id("submit").click()
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "image" in error.text_content() and "PNG" in error.text_content()
    assert page.locator(".field-error[data-error-for=image]").text_content() == error.text_content()
