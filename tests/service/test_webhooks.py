"""Signed webhooks: Standard Webhooks signatures, the outbox and its retries, the job-store hook, the SSRF rules,
and one delivery to a real HTTP receiver on 127.0.0.1. Every database test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from lift3d.params import GenerationParams
from lift3d.service.db.models import Job, WebhookDelivery
from lift3d.service.jobs.store import JobError, JobOutcome, JobRecord
from lift3d.service.schemas import Progress
from lift3d.service.webhooks.events import WebhookEvents, enqueue_event
from lift3d.service.webhooks.sender import Backoff, WebhookRequest, deliver_due, http_post
from lift3d.service.webhooks.urls import WebhookUrlError, check_webhook_url

SECRET_BYTES = b"lift3d-test-secret-24byt"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
NO_JITTER = Backoff(base_s=5.0, factor=2.0, cap_s=3600.0, jitter=0.0)
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def secret_for(owner_id):
    return SECRET


class Receiver:
    """A fake ``post``: answers the scripted status codes in turn and keeps every request."""

    def __init__(self, *codes: int) -> None:
        self.codes, self.requests = list(codes), []

    def __call__(self, request: WebhookRequest) -> int:
        self.requests.append(request)
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]


def enqueue(database, now, url="https://hooks.example.com/lift3d", data=None, event_type="generation.completed"):
    with database.transaction() as session:
        return enqueue_event(session, job_id="a" * 32, owner_id="key_1", url=url, event_type=event_type,
                             data=data or {"id": "a" * 32, "status": "succeeded"}, now=now)


def row(database, message_id) -> WebhookDelivery:
    with database.sessions() as session:
        return session.execute(select(WebhookDelivery).where(WebhookDelivery.id == message_id)).scalar_one()


@pytest.fixture
def public_dns(monkeypatch):
    """Every host name resolves to one public address (93.184.216.34); nothing is sent there (fake posts)."""
    answers = {"default": ["93.184.216.34"]}

    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in answers.get(host, answers["default"])]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


# ------------------------------------------------------------------------------------------------ signatures
def test_signature_verifies_with_standardwebhooks_and_by_hand(database, public_dns):
    now = time.time()  # verify() refuses timestamps more than 5 minutes from the real clock
    message_id = enqueue(database, now, data={"id": "a" * 32, "status": "succeeded", "cost": {"credits": 14.5}})
    receiver = Receiver(204)
    [result] = deliver_due(database, secret_for, receiver, now=now, backoff=NO_JITTER)
    assert (result.message_id, result.attempt, result.state, result.status_code) == (message_id, 1, "delivered", 204)
    [request] = receiver.requests
    assert request.headers["webhook-id"] == message_id and message_id.startswith("msg_") and len(message_id) == 36
    assert request.headers["webhook-timestamp"] == str(int(now))
    assert request.headers["content-type"] == "application/json"
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "generation.completed"
    assert payload["data"] == {"id": "a" * 32, "status": "succeeded", "cost": {"credits": 14.5}}
    signed = f"{message_id}.{int(now)}.{request.body.decode()}".encode()
    expected = base64.b64encode(hmac.new(SECRET_BYTES, signed, hashlib.sha256).digest()).decode()
    assert request.headers["webhook-signature"] == f"v1,{expected}"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"another-secret-of-24-byt").decode()).verify(request.body,
                                                                                           request.headers)
    stored = row(database, message_id)
    assert (stored.state, stored.attempts, stored.last_status_code, stored.delivered_at) == ("delivered", 1, 204, now)


def test_payload_follows_the_standard_webhooks_shape(database):
    message_id = enqueue(database, T0, data={"id": "a" * 32})
    assert json.loads(row(database, message_id).payload) == {
        "type": "generation.completed", "timestamp": "2023-11-14T22:13:20Z", "data": {"id": "a" * 32}}


# ------------------------------------------------------------------------------------------------ retries
def test_500_twice_then_200_is_three_attempts_with_one_webhook_id_and_growing_backoff(database, public_dns):
    t = float(int(time.time()))
    message_id = enqueue(database, t)
    receiver = Receiver(500, 500, 200)
    first = deliver_due(database, secret_for, receiver, now=t, backoff=NO_JITTER)
    assert [(r.attempt, r.state, r.status_code, r.error, r.next_attempt_at) for r in first] == [
        (1, "pending", 500, "HTTP 500", t + 5.0)]
    assert deliver_due(database, secret_for, receiver, now=t + 4.9, backoff=NO_JITTER) == []  # not due yet
    second = deliver_due(database, secret_for, receiver, now=t + 5.0, backoff=NO_JITTER)
    assert [(r.attempt, r.state, r.next_attempt_at) for r in second] == [(2, "pending", t + 5.0 + 10.0)]
    stored = row(database, message_id)
    assert (stored.state, stored.attempts, stored.next_attempt_at, stored.last_status_code) == (
        "pending", 2, t + 15.0, 500)
    third = deliver_due(database, secret_for, receiver, now=t + 15.0, backoff=NO_JITTER)
    assert [(r.attempt, r.state, r.status_code) for r in third] == [(3, "delivered", 200)]
    assert [r.headers["webhook-id"] for r in receiver.requests] == [message_id] * 3
    assert [r.headers["webhook-timestamp"] for r in receiver.requests] == [str(int(t)), str(int(t + 5)),
                                                                          str(int(t + 15))]
    assert len({r.body for r in receiver.requests}) == 1  # the same message, re-signed per attempt
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)
    stored = row(database, message_id)
    assert (stored.state, stored.attempts, stored.delivered_at, stored.last_error) == ("delivered", 3, t + 15, None)
    assert deliver_due(database, secret_for, receiver, now=t + 1e6, backoff=NO_JITTER) == []


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens():
    assert [NO_JITTER.delay(n) for n in range(1, 8)] == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    assert Backoff(base_s=5.0, cap_s=60.0, jitter=0.0).delay(10) == 60.0
    assert Backoff(base_s=5.0, jitter=0.2, rng=lambda: 0.5).delay(2) == pytest.approx(9.0)  # 10 × (1 − 0.2 × 0.5)


def test_attempts_exhausted_mark_the_delivery_failed(database, public_dns):
    message_id = enqueue(database, T0)

    def refuse(request):
        raise httpx.ConnectError("connection refused")

    results = []
    for now in (T0, T0 + 5, T0 + 15):
        results += deliver_due(database, secret_for, refuse, now=now, max_attempts=3, backoff=NO_JITTER)
    assert [(r.attempt, r.state, r.next_attempt_at) for r in results] == [
        (1, "pending", T0 + 5), (2, "pending", T0 + 15), (3, "failed", None)]
    stored = row(database, message_id)
    assert (stored.state, stored.attempts, stored.last_status_code, stored.last_error) == (
        "failed", 3, None, "ConnectError: connection refused")
    assert deliver_due(database, secret_for, refuse, now=T0 + 1e6, max_attempts=3, backoff=NO_JITTER) == []


def test_a_lost_answer_is_delivered_again_with_the_same_webhook_id(database, public_dns):
    """The receiver processed the message but its answer never arrived: the retry carries the same webhook-id,
    so the receiver can drop the duplicate."""
    message_id = enqueue(database, T0)
    seen = []

    def slow_receiver(request):
        seen.append(request.headers["webhook-id"])
        if len(seen) == 1:
            raise httpx.ReadTimeout("timed out")
        return 200

    deliver_due(database, secret_for, slow_receiver, now=T0, backoff=NO_JITTER)
    deliver_due(database, secret_for, slow_receiver, now=T0 + 5, backoff=NO_JITTER)
    assert seen == [message_id, message_id]
    assert row(database, message_id).state == "delivered"


def test_a_consumer_dying_mid_send_leaves_the_attempt_to_another_after_the_lease(database, public_dns):
    message_id = enqueue(database, T0)
    seen = []

    def dies(request):
        seen.append(request.headers["webhook-id"])
        raise SystemExit("replica killed")  # not an Exception: escapes deliver_due like a crash

    with pytest.raises(SystemExit):
        deliver_due(database, secret_for, dies, now=T0, lease_s=120.0, backoff=NO_JITTER)
    stored = row(database, message_id)
    assert (stored.state, stored.attempts, stored.next_attempt_at) == ("pending", 1, T0 + 120.0)
    receiver = Receiver(200)
    assert deliver_due(database, secret_for, receiver, now=T0 + 119, backoff=NO_JITTER) == []  # still leased
    [result] = deliver_due(database, secret_for, receiver, now=T0 + 120, backoff=NO_JITTER)
    assert (result.attempt, result.state) == (2, "delivered")
    assert seen + [r.headers["webhook-id"] for r in receiver.requests] == [message_id, message_id]


def test_two_consumers_never_send_the_same_attempt(database, public_dns):
    ids = {enqueue(database, T0 + i * 0.001) for i in range(20)}
    sent, lock = [], threading.Lock()

    def post(request):
        with lock:
            sent.append(request.headers["webhook-id"])
        time.sleep(0.005)
        return 200

    barrier = threading.Barrier(2)

    def consumer():
        barrier.wait()
        deliver_due(database, secret_for, post, now=T0 + 1, backoff=NO_JITTER)

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == sorted(ids)  # each message once: no attempt sent twice, none lost
    with database.sessions() as session:
        states = session.execute(select(WebhookDelivery.state, WebhookDelivery.attempts)).all()
    assert sorted(states) == [("delivered", 1)] * 20


def test_the_url_is_checked_again_at_delivery_and_the_checked_address_is_used(database, public_dns):
    message_id = enqueue(database, T0, url="https://hooks.example.com/x")
    receiver = Receiver(200)
    public_dns["hooks.example.com"] = ["10.0.0.7"]  # DNS changed after submit
    [result] = deliver_due(database, secret_for, receiver, now=T0, backoff=NO_JITTER)
    assert receiver.requests == []
    assert (result.state, result.error) == ("pending", "refused: webhook_url: hooks.example.com resolves to "
                                            "10.0.0.7, which is a private address; webhooks go to public addresses "
                                            "only (a local setup may set allow_private_webhooks)")
    public_dns["hooks.example.com"] = ["93.184.216.34"]
    [result] = deliver_due(database, secret_for, receiver, now=T0 + 5, backoff=NO_JITTER)
    assert result.state == "delivered"
    [request] = receiver.requests
    assert (request.url, request.address, request.message_id) == ("https://hooks.example.com/x", "93.184.216.34",
                                                                  message_id)


# ------------------------------------------------------------------------------------------------ job-store hook
def record(**changes) -> JobRecord:
    base = JobRecord.new("image-to-3d", GenerationParams(seed=7), job_id="b" * 32, now=T0, owner_id="key_1",
                         webhook_url="https://hooks.example.com/lift3d")
    return base.model_copy(update=changes)


def test_job_transitions_enqueue_started_throttled_progress_and_completed(database):
    hook = WebhookEvents(progress_interval_s=5.0, usd_per_credit=0.01)
    queued = record()
    running = record(status="running", stage="starting", attempts=1, updated_at=T0 + 1)
    steps = [record(status="running", stage="sds_training", attempts=1, progress=Progress(step=s, total=5),
                    updated_at=T0 + t) for s, t in ((1, 10), (2, 12), (3, 15))]
    outcome = JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                         artifacts=["model.glb", "views/000_az000_el0.png"], cost_usd=0.1449)
    done = record(status="succeeded", stage=None, attempts=1, outcome=outcome, updated_at=T0 + 20)
    with database.transaction() as session:
        session.add(Job(id="b" * 32, owner_id=None, kind="image-to-3d", status="succeeded", attempts=1, version=5,
                        cancel_requested=False, created_at=T0, updated_at=T0 + 20, reserved_mc=20000,
                        charged_mc=14500, webhook_url=queued.webhook_url, record={}))
    ids = []
    for before, after in [(queued, running), (running, steps[0]), (steps[0], steps[1]), (steps[1], steps[2]),
                          (steps[2], done), (done, done.model_copy(update={"status": "expired"}))]:
        with database.transaction() as session:
            ids.append(hook(session, before, after))
    assert ids[2] is None and ids[5] is None  # 2 s after the last progress event; expiry sends nothing
    with database.sessions() as session:
        rows = session.execute(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).scalars().all()
    assert [r.id for r in rows] == [ids[0], ids[1], ids[3], ids[4]]
    assert [(r.event_type, r.created_at, r.owner_id, r.url, r.state) for r in rows] == [
        ("generation.started", T0 + 1, "key_1", queued.webhook_url, "pending"),
        ("generation.progress", T0 + 10, "key_1", queued.webhook_url, "pending"),
        ("generation.progress", T0 + 15, "key_1", queued.webhook_url, "pending"),
        ("generation.completed", T0 + 20, "key_1", queued.webhook_url, "pending")]
    payloads = [json.loads(r.payload) for r in rows]
    assert payloads[0] == {"type": "generation.started", "timestamp": "2023-11-14T22:13:21Z",
                           "data": {"id": "b" * 32, "kind": "image-to-3d", "status": "running", "attempt": 1}}
    assert payloads[2]["data"] == {"id": "b" * 32, "status": "running", "stage": "sds_training",
                                   "progress": {"step": 3, "total": 5}, "eta_s": None}
    assert payloads[3] == {"type": "generation.completed", "timestamp": "2023-11-14T22:13:40Z", "data": {
        "id": "b" * 32, "kind": "image-to-3d", "status": "succeeded", "cost": {"credits": 14.5, "usd": 0.145},
        "artifacts": [{"name": "model.glb", "url": f"/v1/generation/{'b' * 32}/artifacts/model.glb"},
                      {"name": "views/000_az000_el0.png",
                       "url": f"/v1/generation/{'b' * 32}/artifacts/views/000_az000_el0.png"}],
        "error": None}}


def test_failed_job_reports_its_error_and_no_charge_and_jobs_without_url_send_nothing(database):
    hook = WebhookEvents()
    running = record(status="running", attempts=1)
    failed = record(status="failed", attempts=1, error=JobError(name="invalid_parameters", message="bad image"),
                    updated_at=T0 + 3)
    with database.transaction() as session:
        message_id = hook(session, running, failed)
        assert hook(session, running.model_copy(update={"webhook_url": None}),
                    failed.model_copy(update={"webhook_url": None})) is None
    data = json.loads(row(database, message_id).payload)["data"]
    assert data == {"id": "b" * 32, "kind": "image-to-3d", "status": "failed", "cost": {"credits": 0.0, "usd": 0.0},
                    "artifacts": [], "error": {"name": "invalid_parameters", "message": "bad image"}}


# ------------------------------------------------------------------------------------------------ SSRF
@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
    ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
    ("http://192.168.1.20:8080/", "192.168.1.20 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://[::1]:8000/hook", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1 is a loopback address"),
    ("http://[::ffff:a9fe:a9fe]/", "::ffff:a9fe:a9fe is a link-local address"),
    ("http://[fe80::1]/", "fe80::1 is a link-local address"),
    ("http://[fd00::1]/", "fd00::1 is a private address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://100.64.0.1/", "100.64.0.1 is a non-public address"),
])
def test_non_public_addresses_are_refused_unless_allowed(url, message):
    with pytest.raises(WebhookUrlError, match=f"^webhook_url: {message.replace('.', '[.]')}; webhooks go to public"):
        check_webhook_url(url)
    assert check_webhook_url(url, allow_private=True).url == url


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only http and https URLs are accepted, not file scheme"),
    ("gopher://example.com/", "only http and https URLs are accepted, not gopher scheme"),
    ("example.com/hook", "only http and https URLs are accepted, not no scheme"),
    ("http://user:secret@example.com/hook", "must not contain credentials"),
    ("https://token@example.com/hook", "must not contain credentials"),
    ("http:///hook", "has no host"),
    ("http://example.com:99999/", "not a valid URL"),
])
def test_bad_schemes_credentials_and_malformed_urls_are_refused_even_when_private_is_allowed(url, message):
    with pytest.raises(WebhookUrlError, match=message):
        check_webhook_url(url, allow_private=True)


def test_host_names_are_resolved_and_every_address_must_be_public(public_dns):
    public_dns["loopback.example.test"] = ["127.0.0.1"]
    public_dns["mixed.example.test"] = ["93.184.216.34", "10.1.2.3"]
    with pytest.raises(WebhookUrlError, match="loopback.example.test resolves to 127.0.0.1, which is a loopback"):
        check_webhook_url("https://loopback.example.test/hook")
    with pytest.raises(WebhookUrlError, match="mixed.example.test resolves to 10.1.2.3, which is a private"):
        check_webhook_url("https://mixed.example.test/hook")
    checked = check_webhook_url("https://Hooks.Example.com/lift3d?x=1")
    assert (checked.scheme, checked.host, checked.port, checked.addresses) == (
        "https", "hooks.example.com", 443, ("93.184.216.34",))
    assert check_webhook_url("http://loopback.example.test:9000/", allow_private=True).addresses == ("127.0.0.1",)


def test_a_host_that_does_not_resolve_is_refused(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(WebhookUrlError, match="host 'nowhere.example.test' does not resolve"):
        check_webhook_url("https://nowhere.example.test/hook")


# ------------------------------------------------------------------------------------------------ real receiver
class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.received.append((self.path, dict(self.headers), body))
        self.send_response(server.codes.pop(0))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_end_to_end_to_a_local_receiver(database):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.received, server.codes = [], [500, 200]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/hooks/lift3d?source=test"
        with pytest.raises(WebhookUrlError, match="loopback"):
            check_webhook_url(url)
        check_webhook_url(url, allow_private=True)
        now = time.time()
        hook = WebhookEvents()
        running = record(status="running", attempts=1, webhook_url=url)
        failed = record(status="failed", attempts=1, webhook_url=url, updated_at=now,
                        error=JobError(name="internal_error", message="the NeRF diverged"))
        with database.transaction() as session:
            message_id = hook(session, running, failed)
        first = deliver_due(database, secret_for, now=now, allow_private=True, backoff=NO_JITTER)
        second = deliver_due(database, secret_for, now=now + 5, allow_private=True, backoff=NO_JITTER)
        assert [(r.state, r.status_code) for r in first + second] == [("pending", 500), ("delivered", 200)]
        assert len(server.received) == 2
        for path, headers, body in server.received:
            assert path == "/hooks/lift3d?source=test"
            assert headers["Host"] == f"127.0.0.1:{port}"
            assert headers["webhook-id"] == message_id
            payload = Webhook(SECRET).verify(body, headers)
            assert payload["type"] == "generation.completed"
            assert payload["data"]["error"] == {"name": "internal_error", "message": "the NeRF diverged"}
        refused = enqueue(database, now, url=url)  # the same receiver without allow_private: refused, not sent
        [result] = deliver_due(database, secret_for, now=now + 5, backoff=NO_JITTER)
        assert (result.message_id, result.state, len(server.received)) == (refused, "pending", 2)
        assert "loopback" in result.error
    finally:
        server.shutdown()
        server.server_close()


def test_http_post_connects_to_the_checked_address_not_a_fresh_lookup():
    """The URL's host does not resolve at all; the request still reaches the pinned address, with the URL's Host."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.received, server.codes = [], [202]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        request = WebhookRequest(message_id="msg_1", url=f"http://receiver.invalid:{port}/in?a=1", body=b"{}",
                                 headers={"webhook-id": "msg_1"}, address="127.0.0.1")
        assert http_post(request, timeout_s=5) == 202
        [(path, headers, body)] = server.received
        assert (path, headers["Host"], headers["webhook-id"], body) == ("/in?a=1", f"receiver.invalid:{port}",
                                                                        "msg_1", b"{}")
    finally:
        server.shutdown()
        server.server_close()
