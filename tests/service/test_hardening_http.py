"""Issue 23, the HTTP doors: findings 2 (read deadlines, connection cap), 3 (uploads streamed to disk, capped in
flight), 6 (Cache-Control / nosniff), 10 (unauthenticated traffic limited per address before the key lookup) and the
doors' settings in the Serve config and the Ingress. Finding 5 (self-hosted /docs, /redoc) is
tests/playground/test_api_docs.py.

The deadline tests run uvicorn with :func:`lift3d.service.http_limits.uvicorn_config` and short limits (1 s) on a
plain Starlette app; ``test_playground_*`` attack a real ``lift3d playground --auth`` subprocess with its defaults
(10 s deadlines) and measure when it cuts each client: the finding's done-when is "within 15 s".
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from support import free_port, wait_healthy, wait_until

from lift3d.params import GenerationParams
from lift3d.service.api.auth import AuthMiddleware
from lift3d.service.api.guards import FailedAuthLimiter, client_address
from lift3d.service.config import ServiceConfig
from lift3d.service.http_limits import HttpLimits, uvicorn_config
from lift3d.service.jobs.store import JobOutcome, JobRecord
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service
from lift3d.service.state import open_state

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
FAST = HttpLimits(header_timeout_s=1.0, body_window_s=1.0, body_min_bytes=1000, keep_alive_s=1.0,
                  limit_concurrency=40, check_interval_s=0.1)
"""Short deadlines for the in-process server: headers in 1 s, >= 1000 body bytes per 1 s window."""


# ------------------------------------------------------------------------------------------------ raw clients
def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def until_closed(sock: socket.socket, drip: bytes = b"", every_s: float = 0.3, limit_s: float = 40.0
                 ) -> tuple[float, bytes]:
    """Send ``drip`` every ``every_s`` (nothing if empty) and read, until the server closes the connection; returns
    (seconds from the call until the close, bytes received). Gives up after ``limit_s`` (then returns ``limit_s``)."""
    start, received = time.monotonic(), b""
    sock.settimeout(every_s)
    try:
        while time.monotonic() - start < limit_s:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                if drip:
                    sock.sendall(drip)
                continue
            if not data:
                return time.monotonic() - start, received
            received += data
    except OSError:  # reset by the server
        return time.monotonic() - start, received
    finally:
        sock.close()
    return limit_s, received


def echo_app() -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"received": len(await request.body())})

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/ok", ok)])


@pytest.fixture(scope="module")
def fast_server():
    """uvicorn with :data:`FAST` limits on a free port, in a thread; yields its port and the uvicorn server."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(echo_app(), "127.0.0.1", port, FAST, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_healthy(f"http://127.0.0.1:{port}", timeout_s=20, path="/ok")
    yield SimpleNamespace(port=port, server=server)
    server.should_exit = True
    thread.join(10)


# ------------------------------------------------------------------------------------------------ 2. deadlines
def test_slow_headers_are_cut_at_the_header_deadline_with_408(fast_server):
    sock = connect(fast_server.port)
    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
    elapsed, received = until_closed(sock, drip=b"X-Slow: 1\r\n")  # a header line every 0.3 s, never the end
    assert 0.8 <= elapsed < 3.0, elapsed  # 1 s after the connection opened (+ the check interval, a loaded CPU)
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_silent_connection_is_closed_at_the_header_deadline(fast_server):
    elapsed, received = until_closed(connect(fast_server.port))
    assert 0.8 <= elapsed < 3.0 and received == b"", elapsed


def test_slow_body_is_cut_when_a_window_brings_too_little(fast_server):
    sock = connect(fast_server.port)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    elapsed, received = until_closed(sock, drip=b"1")  # 10 bytes, then one byte every 0.3 s
    assert 0.8 <= elapsed < 3.0, elapsed
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_steady_slow_body_is_not_cut(fast_server):
    """3 s of body at 2,000 bytes/s (twice the floor): longer than a window, answered in full."""
    sock = connect(fast_server.port)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\nConnection: close\r\n\r\n")
    for _ in range(15):
        time.sleep(0.2)
        sock.sendall(b"x" * 400)
    _, received = until_closed(sock, limit_s=5)
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b'{"received":6000}')


def test_keep_alive_connections_close_after_keep_alive_s(fast_server):
    sock = connect(fast_server.port)
    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    elapsed, received = until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ") and 0.8 <= elapsed < 3.0, elapsed


def test_connections_past_the_cap_get_503_and_the_cut_frees_them(fast_server):
    held = [connect(fast_server.port) for _ in range(FAST.limit_concurrency)]
    wait_until(lambda: len(fast_server.server.server_state.connections) >= FAST.limit_concurrency, 10, "accepted")
    try:
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{fast_server.port}/ok").status_code == 503
            time.sleep(FAST.header_timeout_s + 0.5)  # the silent connections are cut
            assert client.get(f"http://127.0.0.1:{fast_server.port}/ok").status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_http_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="header_timeout_s"):
        HttpLimits(header_timeout_s=0)
    with pytest.raises(ValueError, match="limit_concurrency"):
        HttpLimits(limit_concurrency=0)


# ------------------------------------------------------------------------------------------------ the service stack
@pytest.fixture
def stack(tmp_path):
    """build_api over SQLite with keys (as the Serve ingress builds it); no Ray, no models."""
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'lift3d.db'}", default_rate_limit_per_min=10_000,
                           default_max_concurrent_jobs=0, max_uploads_per_key=2, max_uploads=3)
    state = open_state(config)
    queued: list[str] = []
    service = build_service(config, state, queued.append)
    api = build_api(config, state, service, ServiceMetrics())
    yield config, state, api
    state.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def finished_job(state, owner_id: str) -> str:
    record = state.jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=1), owner_id=owner_id))
    state.store.put(f"{record.prefix}model.glb", b"glTF-bytes")
    attempt = state.jobs.begin_attempt(record.id, "w").attempts
    state.jobs.succeed(record.id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                             artifacts=["model.glb"]), attempt=attempt)
    return record.id


# ------------------------------------------------------------------------------------------------ 6. headers
def test_keyed_responses_are_private_no_store_and_every_response_is_nosniff(stack):
    _, state, api = stack
    created = state.keys.create(name="a", credits=10)
    job_id = finished_job(state, created.id)
    client = TestClient(api, raise_server_exceptions=False)
    keyed = {
        "status": client.get(f"/v1/generation/{job_id}", headers={**bearer(created.key), "Accept": "application/json"}),
        "result": client.get(f"/v1/generation/{job_id}", headers={**bearer(created.key), "Accept": "model/gltf-binary"}),
        "artifact": client.get(f"/v1/generation/{job_id}/artifacts/model.glb", headers=bearer(created.key)),
        "listing": client.get("/v1/generations", headers=bearer(created.key)),
        "not found": client.get("/v1/generation/" + "0" * 32, headers=bearer(created.key)),
        "unauthorized": client.get(f"/v1/generation/{job_id}"),
    }
    assert keyed["result"].status_code == 200 and keyed["result"].content == b"glTF-bytes"
    for what, response in keyed.items():
        assert response.headers["cache-control"] == "private, no-store", what
        assert response.headers["x-content-type-options"] == "nosniff", what
    for path in ("/healthz", "/openapi.json", "/", "/docs", "/static/app.js"):
        response = client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert "private" not in response.headers.get("cache-control", ""), path  # public pages stay cacheable


def test_an_event_stream_keeps_its_own_no_store():
    """A response that already forbids storing keeps its header (the SSE route says ``no-store``)."""
    from lift3d.service.api.guards import SecurityHeadersMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b""})

    response = TestClient(SecurityHeadersMiddleware(app)).get("/v1/generation/x/events")
    assert response.headers["cache-control"] == "no-store" and response.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------------------------ 10. unauthenticated
def test_bad_keys_are_limited_per_address_before_the_key_lookup(stack):
    """300 bad-key requests from one address: 20 reach the key store (401), the rest are 429 with Retry-After
    and cost no lookup; another address is not affected; a good key from the limited address waits too, until it
    has authenticated somewhere in this process."""
    config, state, api = stack
    good = state.keys.create(name="good", credits=10)
    lookups = []
    authenticate = state.keys.authenticate
    state.keys.authenticate = lambda presented: (lookups.append(presented), authenticate(presented))[1]
    attacker = TestClient(api, client=("203.0.113.7", 40000))
    assert attacker.get("/healthz").status_code == 200  # builds the middleware stack
    auth = api.middleware_stack
    while not isinstance(auth, AuthMiddleware):
        auth = auth.app
    limiter = auth.unauthenticated  # from the config: 20 a minute; the same on a stopped clock (a slow CI machine
    assert (limiter.burst, limiter.rate_per_s) == (20, 20 / 60)  # would otherwise refill it during the 300 calls)
    auth.unauthenticated = FailedAuthLimiter(config.unauthenticated_failures_per_min, clock=lambda: 0.0)
    codes = [attacker.get("/v1/user/balance", headers=bearer(f"sk-made-up-{i:04d}")).status_code
             for i in range(300)]
    assert codes.count(401) == config.unauthenticated_failures_per_min == 20 and codes.count(429) == 280
    assert len(lookups) == 20
    refused = attacker.get("/v1/user/balance", headers=bearer(good.key))
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["name"] == "rate_limited"
    other = TestClient(api, client=("198.51.100.2", 40000))
    assert other.get("/v1/user/balance", headers=bearer(good.key)).status_code == 200
    assert other.get("/v1/user/balance").status_code == 401
    assert attacker.get("/healthz").status_code == 200  # public paths are not limited here
    # A key that has authenticated is exempt from its address's limit (one bad client behind a shared NAT must not
    # lock out the others there); a key never seen working, and no key at all, still wait; bad keys stay refused
    # without a lookup.
    lookups.clear()
    assert attacker.get("/v1/user/balance", headers=bearer(good.key)).status_code == 200
    assert attacker.get("/v1/user/balance", headers=bearer("sk-made-up-x")).status_code == 429
    assert attacker.get("/v1/user/balance").status_code == 429
    fresh = state.keys.create(name="fresh", credits=1)
    assert attacker.get("/v1/user/balance", headers=bearer(fresh.key)).status_code == 429
    assert set(lookups) <= {good.key}  # (the good key may come from the 2 s read cache)


def test_failed_auth_limiter_refills_over_time():
    now = [0.0]
    limiter = FailedAuthLimiter(failures_per_min=6, clock=lambda: now[0])  # a token every 10 s, 6 at most
    for _ in range(6):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
    assert limiter.retry_after("a") == 10 and limiter.retry_after("b") is None
    now[0] = 9.5
    assert limiter.retry_after("a") == 1
    now[0] = 10.0
    assert limiter.retry_after("a") is None


def test_client_address_trusts_only_the_configured_proxies():
    scope = {"client": ("10.0.0.5", 1234), "headers": [(b"x-forwarded-for", b"1.2.3.4, 203.0.113.9")]}
    assert client_address(scope) == "10.0.0.5"  # no proxy trusted: the peer
    assert client_address(scope, forwarded_hops=1) == "203.0.113.9"  # what the Ingress saw; 1.2.3.4 is a claim
    assert client_address(scope, forwarded_hops=2) == "1.2.3.4"
    assert client_address({"client": ("10.0.0.5", 1), "headers": []}, forwarded_hops=1) == "10.0.0.5"


# ------------------------------------------------------------------------------------------------ 3. uploads
def views_zip_file(path: Path, size: int) -> Path:
    """A valid views ZIP of about ``size`` bytes (random, stored: incompressible) written to ``path``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("transforms.json", '{"camera_angle_x": 0.7, "frames": []}')
        with archive.open("r_0.png", "w", force_zip64=True) as member:
            for _ in range(size // MiB):
                member.write(os.urandom(MiB))
    return path


def multipart_stream(zip_path: Path, boundary: str = "lift3dboundary", gate: asyncio.Event | None = None):
    """The multipart body of a views-to-3d upload, streamed 1 MiB at a time (``gate``: wait for it mid-file)."""
    async def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"views\"; filename=\"v.zip\"\r\n"
               "Content-Type: application/zip\r\n\r\n").encode()
        with open(zip_path, "rb") as source:
            first = True
            while chunk := source.read(MiB):
                yield chunk
                if first and gate is not None:
                    await gate.wait()
                first = False
        yield f"\r\n--{boundary}--\r\n".encode()
    return body()


def upload_slots(api):
    """The app's :class:`UploadSlotsMiddleware` (built with the middleware stack on the first request)."""
    from lift3d.service.api.guards import UploadSlotsMiddleware

    layer = api.middleware_stack
    while not isinstance(layer, UploadSlotsMiddleware):
        layer = layer.app
    return layer


async def upload(api, zip_path: Path, key: str, gate: asyncio.Event | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
        return await client.post("/v1/generation/views-to-3d", content=multipart_stream(zip_path, gate=gate),
                                 headers={**bearer(key), "Content-Type": "multipart/form-data; boundary=lift3dboundary"})


def test_a_large_views_upload_is_streamed_to_disk_not_held_in_memory(stack, tmp_path):
    """A 48 MiB ZIP through the real route: Python's peak allocation stays a few MiB (it was the ZIP's size,
    twice: the form's read and the store's put), and the stored upload is the ZIP byte for byte."""
    _, state, api = stack
    key = state.keys.create(name="u", credits=1000)
    zip_path = views_zip_file(tmp_path / "views.zip", 48 * MiB)
    tracemalloc.start()
    try:
        response = asyncio.run(upload(api, zip_path, key.key))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 202, response.text
    assert peak < 12 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB for a 48 MiB upload"
    record = state.jobs.get(response.json()["id"])
    assert state.store.get(record.input_key) == zip_path.read_bytes()


def test_the_worker_fetches_a_large_views_upload_to_disk_not_into_memory(tmp_path):
    """The worker's side of finding 3: a 48 MiB upload comes out of the store (LocalStore under RetryingStore)
    into a file and is extracted from it with Python's peak allocation a few MiB; a retry of a fetch that failed
    half-way starts the file over; a missing upload is StoredObjectNotFound."""
    from lift3d.io.storage import LocalStore, StoredObjectNotFound
    from lift3d.io.storage.retrying import RetryingStore
    from lift3d.service.jobs.uploads import extract_views_zip, fetch_upload

    local = LocalStore(tmp_path / "store")
    zip_path = views_zip_file(tmp_path / "views.zip", 48 * MiB)
    with open(zip_path, "rb") as source:
        local.put_file("g/upload.zip", source)
    store = RetryingStore(local, budget_s=5, first_wait_s=0.01, sleep=lambda s: None)
    tracemalloc.start()
    try:
        with open(tmp_path / "fetched.zip", "w+b") as upload:
            fetch_upload(store, "g/upload.zip", upload)
            views = extract_views_zip(upload, tmp_path / "views")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MiB, f"peak Python allocation {peak / MiB:.1f} MiB for a 48 MiB upload"
    assert (views / "r_0.png").stat().st_size >= 47 * MiB and (tmp_path / "fetched.zip").read_bytes() == \
        zip_path.read_bytes()

    attempts = []

    class FlakyStore:
        def get_file(self, key, file):
            attempts.append(file.tell())
            if len(attempts) == 1:
                file.write(b"partial")
                raise ConnectionError("store unreachable")
            local.get_file(key, file)

    with open(tmp_path / "again.zip", "w+b") as upload:
        upload.write(b"head")  # a fetch appends where the file stands; a retry returns there, not to 0
        RetryingStore(FlakyStore(), budget_s=5, first_wait_s=0.01, sleep=lambda s: None).get_file("g/upload.zip",
                                                                                                   upload)
    assert attempts == [4, 4] and (tmp_path / "again.zip").read_bytes() == b"head" + zip_path.read_bytes()
    with open(tmp_path / "none.zip", "w+b") as upload, pytest.raises(StoredObjectNotFound):
        fetch_upload(store, "g/missing.zip", upload)


def test_store_put_file_copies_a_file_and_a_retry_starts_from_its_beginning(tmp_path):
    """LocalStore.put_file (chunked, atomic) under RetryingStore, whose first attempt fails half-way."""
    from lift3d.io.storage import LocalStore
    from lift3d.io.storage.retrying import RetryingStore
    from lift3d.service.jobs.uploads import store_upload

    local, attempts = LocalStore(tmp_path / "store"), []

    class FlakyStore:
        def put_file(self, key, file, content_type):
            attempts.append(file.tell())
            if len(attempts) == 1:
                file.read(1000)
                raise ConnectionError("store unreachable")
            local.put_file(key, file, content_type)

    data = os.urandom(3 * MiB + 5)
    upload = io.BytesIO(data)
    store_upload(RetryingStore(FlakyStore(), budget_s=5, first_wait_s=0.01, sleep=lambda s: None), "g/upload.zip",
                 upload, "application/zip")
    assert attempts == [0, 0] and local.get("g/upload.zip") == data
    assert sorted(p.name for p in (tmp_path / "store" / "g").iterdir()) == ["upload.zip"]  # no temporary left


def test_uploads_in_flight_are_capped_per_key_and_per_process(stack, tmp_path):
    """Two stalled uploads of key A: A's third → 429, B's first passes the per-key cap (3rd of the process), B's
    second → 503 (process cap 3); both with Retry-After. Once the stalled ones finish, A uploads again."""
    _, state, api = stack
    a, b = state.keys.create(name="a", credits=1000), state.keys.create(name="b", credits=1000)
    zip_path = views_zip_file(tmp_path / "views.zip", 2 * MiB)

    async def scenario():
        gate = asyncio.Event()
        stalled = [asyncio.create_task(upload(api, zip_path, a.key, gate)) for _ in range(2)]
        b_first = asyncio.create_task(upload(api, zip_path, b.key, gate))
        for _ in range(200):  # until all three hold a slot, their bodies half sent
            await asyncio.sleep(0.05)
            if api.middleware_stack is not None and upload_slots(api).in_flight.total() == 3:
                break
        assert dict(upload_slots(api).in_flight) == {a.id: 2, b.id: 1}
        a_third = await upload(api, zip_path, a.key)
        b_second = await upload(api, zip_path, b.key)
        gate.set()
        done = await asyncio.gather(*stalled, b_first)
        again = await upload(api, zip_path, a.key)
        assert not upload_slots(api).in_flight  # every slot given back
        return a_third, b_second, done, again

    a_third, b_second, done, again = asyncio.run(scenario())
    assert (a_third.status_code, a_third.json()["name"]) == (429, "rate_limited")
    assert (b_second.status_code, b_second.json()["name"]) == (503, "overloaded")
    assert a_third.headers["retry-after"] == b_second.headers["retry-after"] == "5"
    assert [r.status_code for r in done] == [202, 202, 202] and again.status_code == 202


# ------------------------------------------------------------------------------------------------ the other doors
def test_serve_proxy_settings_bound_requests_and_idle_connections():
    """The Serve proxy has no header/body deadline of its own (uvicorn without one, x-request-timeout-seconds
    honoured): the cluster keeps it behind nginx and bounds what it can; the local graph listens on the loopback."""
    from ray.serve.schema import ServeDeploySchema

    cluster = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text())).http_options
    local = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())).http_options
    assert cluster.request_timeout_s == 60 and cluster.keep_alive_timeout_s == 75  # > nginx upstream keep-alive 60
    assert local.host == "127.0.0.1" and local.request_timeout_s == 60 and local.keep_alive_timeout_s == 5


def test_ingress_limits_each_address_and_terminates_tls():
    ingress = yaml.safe_load((ROOT / "k8s" / "ingress.yaml").read_text())
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert int(notes[prefix + "limit-connections"]) <= 50 and int(notes[prefix + "limit-rps"]) <= 50
    assert notes[prefix + "proxy-request-buffering"] == "on"  # nginx, not Serve, waits for slow bodies
    assert notes[prefix + "force-ssl-redirect"] == "true"
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] and tls["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
    # the controller-wide deadlines and HSTS are documented as its ConfigMap (not settable per Ingress)
    doc = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```yaml\n(# ingress-nginx controller ConfigMap.*?)```", doc, re.S)
    assert block, "docs/deployment.md lacks the controller ConfigMap block"
    config_map, strip = yaml.safe_load_all(block.group(1))
    data = config_map["data"]
    assert data["proxy-set-headers"] == "ingress-nginx/" + strip["metadata"]["name"]
    assert strip["data"] == {"x-request-timeout-seconds": "", "x-request-disconnect-disabled": ""}
    assert int(data["client-header-timeout"]) <= 15 and int(data["client-body-timeout"]) <= 15
    assert data["hsts"] == "true" and int(data["hsts-max-age"]) >= 31536000
    assert data["limit-req-status-code"] == data["limit-conn-status-code"] == "429"


# ------------------------------------------------------------------------------------------------ lift3d playground
@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """``lift3d playground --auth`` in a subprocess on a free port (its default HttpLimits); yields (url, key)."""
    from lift3d.service.accounts.keys import ApiKeyStore
    from lift3d.service.db import Database, migrate

    data = tmp_path_factory.mktemp("playground")
    database = Database(f"sqlite:///{data / 'lift3d.db'}")
    migrate(database)
    key = ApiKeyStore(database).create(name="doors", credits=100).key
    database.dispose()
    port = free_port()
    log = open(data / "playground.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "lift3d.cli", "playground", "--auth", "--port", str(port),
                                "--data", str(data)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout_s=120)
        yield url, key
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.mark.slow
def test_playground_cuts_slow_headers_slow_bodies_and_300_half_open_connections_within_15_s(playground):
    """Against the real server, at once: a client dripping header lines every 3 s, a keyed client that declares a
    1,000-byte body, sends 10 and then a byte every 3 s, and 300 half-open connections (150 with unfinished
    headers, 150 unauthenticated POSTs whose bodies stop after 10 bytes). Each is cut within 15 s (the defaults:
    10 s); afterwards the server answers at once (and a keyed answer is private)."""
    url, key = playground
    answer = httpx.get(url + "/v1/user/balance", headers=bearer(key))
    assert answer.status_code == 200 and answer.headers["cache-control"] == "private, no-store"
    port = int(url.rsplit(":", 1)[1])
    header = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    body = (b"POST /v1/generation/text-to-3d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\":")
    half_open_body = (b"POST /v1/generation/text-to-3d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n0123456789")
    slow_header, slow_body = connect(port), connect(port)
    slow_header.sendall(header)
    slow_body.sendall(body)
    time.sleep(0.5)  # both are in before the crowd fills the server's 256 connections (past them: 503 at once)
    crowd = [connect(port) for _ in range(300)]
    for index, sock in enumerate(crowd):
        sock.sendall(header if index % 2 else half_open_body)
    with ThreadPoolExecutor(max_workers=302) as pool:
        drips = [pool.submit(until_closed, slow_header, b"X-Slow: 1\r\n", 3.0),
                 pool.submit(until_closed, slow_body, b" ", 3.0)]
        crowd_cut = [pool.submit(until_closed, sock, b"", 1.0, 40.0) for sock in crowd]
        (header_s, header_answer), (body_s, body_answer) = [f.result() for f in drips]
        crowd_s = [f.result()[0] for f in crowd_cut]
    print(f"slow header cut after {header_s:.1f} s, slow body after {body_s:.1f} s, "
          f"300 half-open: last closed after {max(crowd_s):.1f} s")
    assert header_s < 15 and header_answer.startswith(b"HTTP/1.1 408 ")
    assert body_s < 15 and body_answer.startswith(b"HTTP/1.1 408 ")
    assert max(crowd_s) < 15
    started = time.monotonic()
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200 and time.monotonic() - started < 1
