"""Issue 23, webhooks: one overall deadline per attempt (finding 4), deliveries concurrent across owners with a
per-owner cap (finding 4), URLs checked for control characters and ports at submit (finding 9), and the secrets at
rest (finding 11): webhook secrets stored as Fernet tokens, the SQLite file 0600.

The slow receiver is a real HTTP server on 127.0.0.1 that reads the request and then drips its answer's status line
one byte every ``DRIP_S`` seconds — the attack of the issue (a byte every 3 s held a delivery for 27 s with per-read
timeouts) at test speed. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import socket
import socketserver
import stat
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from lift3d.service.accounts.keys import ApiKeyStore
from lift3d.service.config import ServiceConfig
from lift3d.service.db import Database, migrate
from lift3d.service.db.encryption import (
    ENCRYPTION_KEY_ENV,
    MissingEncryptionKey,
    UnreadableSecret,
    rotate_secrets,
)
from lift3d.service.db.models import WebhookDelivery
from lift3d.service.webhooks.events import enqueue_event
from lift3d.service.webhooks.sender import (
    DeliveryTimeout,
    WebhookDispatcher,
    WebhookRequest,
    deliver_due,
    http_post,
    prepare_http,
)
from lift3d.service.webhooks.urls import WebhookUrlError, check_webhook_url

SECRET = "whsec_" + base64.b64encode(b"lift3d-test-secret-24byt").decode()
DRIP_S = 0.25  # one byte of the answer every DRIP_S seconds, for as long as the client listens
DEADLINE_S = 3.0  # the attempt's overall deadline in these tests
SLACK_S = 3.0  # scheduling slack on a busy machine; the per-read timeouts of before would take minutes here


def secret_for(owner_id):
    return SECRET


# ------------------------------------------------------------------------------------------------ receivers
class _Dripper(socketserver.BaseRequestHandler):
    """Reads one request, then sends ``HTTP/1.1 200 OK\\r\\n`` … one byte every DRIP_S s, never finishing."""

    def handle(self) -> None:
        server = self.server
        with server.lock:
            server.open += 1
            server.most_open = max(server.most_open, server.open)
            server.accepted.append(time.monotonic())
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                data += chunk
            answer = b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 10_000
            for byte in answer:
                if server.stop.wait(DRIP_S):
                    return
                self.request.sendall(bytes([byte]))
        except OSError:
            pass  # the client hung up: what the deadline should do
        finally:
            with server.lock:
                server.open -= 1
                server.closed.append(time.monotonic())


class _Fast(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.arrivals.append((time.monotonic(), self.headers["webhook-id"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def dripping_receiver():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Dripper)
    server.daemon_threads = True
    server.lock, server.stop = threading.Lock(), threading.Event()
    server.open, server.most_open, server.accepted, server.closed = 0, 0, [], []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/slow"
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def fast_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fast)
    server.arrivals = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/fast"
    yield server
    server.shutdown()
    server.server_close()


def hang_ups(server, count: int, wait_s: float = 5.0) -> list[float]:
    """The first ``count`` times the dripping receiver saw its client hang up (it notices at its next byte)."""
    deadline = time.monotonic() + wait_s
    while len(server.closed) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.closed) >= count
    return server.closed[:count]


def enqueue(database, owner_id, url, now, job_id=None):
    """A due ``generation.completed`` message; each of its own job unless ``job_id`` is given (a job's messages go
    one at a time, in order)."""
    job_id = job_id or uuid.uuid4().hex
    with database.transaction() as session:
        return enqueue_event(session, job_id=job_id, owner_id=owner_id, url=url, event_type="generation.completed",
                             data={"id": job_id, "status": "succeeded"}, now=now)


# ------------------------------------------------------------------------------------------------ finding 4
def test_http_post_has_one_deadline_for_the_whole_attempt_not_per_read(dripping_receiver):
    """httpx's per-read timeout (DEADLINE_S) never trips on a byte every DRIP_S s; the overall deadline does."""
    request = WebhookRequest(message_id="msg_1", url=dripping_receiver.url, body=b"{}",
                             headers={"webhook-id": "msg_1", "content-type": "application/json"})
    prepare_http()  # once per process, outside any deadline (the first delivery's imports and CA bundle)
    start = time.monotonic()
    with pytest.raises(DeliveryTimeout, match="deadline of 3 s"):
        http_post(request, timeout_s=DEADLINE_S)
    elapsed = time.monotonic() - start
    assert DEADLINE_S - 0.05 <= elapsed < DEADLINE_S + SLACK_S, elapsed
    deadline = time.monotonic() + 2.0  # the connection is dropped, so the receiver stops dripping
    while dripping_receiver.open and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dripping_receiver.open == 0


def test_a_dripping_receiver_neither_delays_another_owner_nor_holds_more_than_its_cap(
        database, dripping_receiver, fast_receiver):
    """Owner A's receiver drips; A has 3 due messages, owner B one that falls due while A's are in flight (the
    consumer loop's next round). B's arrives before A's attempts end; A never has more than 2 attempts open, and
    each is cut at the deadline and rescheduled."""
    now = time.time()
    slow_ids = [enqueue(database, "key_a", dripping_receiver.url, now - 3 + i) for i in range(3)]
    dispatcher = WebhookDispatcher(database, secret_for, timeout_s=DEADLINE_S, max_workers=8, per_owner=2,
                                   allow_private=True, lease_s=60.0)
    try:
        start = time.monotonic()
        first = dispatcher.dispatch()
        assert sorted(first) == sorted(slow_ids[:2])  # the per-owner cap: the third waits
        time.sleep(0.3)
        fast_id = enqueue(database, "key_b", fast_receiver.url, time.time())
        second = dispatcher.dispatch()  # the next round: A is at its cap, B is not
        assert list(second) == [fast_id]
        assert second[fast_id].result(timeout=5).state == "delivered"
        [(arrived, webhook_id)] = fast_receiver.arrivals
        fast_latency = arrived - start - 0.3
        assert webhook_id == fast_id  # and before A's attempts end (below); ~0.15 s on an idle machine
        slow_results = [future.result(timeout=10) for future in first.values()]
        slow_elapsed = time.monotonic() - start
        most_open = dripping_receiver.most_open  # before the third starts (the server notices hang-ups late)
        third = dispatcher.dispatch()  # A's slots are free again: its third message starts
        assert list(third) == [slow_ids[2]]
        dripping_receiver.stop.set()  # the receiver hangs up: the third attempt ends now, not at its deadline
        assert third[slow_ids[2]].result(timeout=10).state == "pending"
    finally:
        dispatcher.close()
    assert [(r.state, r.attempt, r.status_code) for r in slow_results] == [("pending", 1, None)] * 2
    assert all(r.error.startswith("DeliveryTimeout: no answer within the attempt's deadline") for r in slow_results)
    assert DEADLINE_S - 0.05 <= slow_elapsed < DEADLINE_S + SLACK_S, slow_elapsed
    assert arrived < min(hang_ups(dripping_receiver, 2))  # B was not queued behind A (sequential sending would be)
    assert most_open == 2 and len(dripping_receiver.accepted) == 3  # at most per_owner connections of owner A
    print(f"\nfast owner's delivery after {fast_latency * 1000:.0f} ms; dripping attempts cut after "
          f"{slow_elapsed:.2f} s (deadline {DEADLINE_S} s, a byte every {DRIP_S} s)")


def test_one_blocking_round_sends_every_owner_concurrently(database, dripping_receiver, fast_receiver):
    """deliver_due (one round, waited for): the fast owner's message is not queued behind the dripping one."""
    now = time.time()
    enqueue(database, "key_a", dripping_receiver.url, now - 2)  # oldest first: sequential sending would wait
    fast_id = enqueue(database, "key_b", fast_receiver.url, now - 1)
    start = time.monotonic()
    results = deliver_due(database, secret_for, allow_private=True, timeout_s=DEADLINE_S)
    elapsed = time.monotonic() - start
    [(arrived, webhook_id)] = fast_receiver.arrivals
    assert webhook_id == fast_id and arrived < min(hang_ups(dripping_receiver, 1))  # not queued behind the drip
    assert sorted(r.state for r in results) == ["delivered", "pending"]
    assert DEADLINE_S - 0.05 <= elapsed < DEADLINE_S + SLACK_S, elapsed


def test_one_round_sends_all_of_an_owners_messages_at_most_two_at_a_time(database):
    """Five due messages of one key, per_owner=2: one blocking round sends all five, never more than two at once."""
    now = time.time()
    ids = [enqueue(database, "key_a", "http://127.0.0.1:9/x", now - 5 + i) for i in range(5)]
    lock, state = threading.Lock(), {"open": 0, "most": 0, "sent": []}

    def post(request):
        with lock:
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
            state["sent"].append(request.message_id)
        time.sleep(0.3)  # long enough for the second slot's attempt to start meanwhile
        with lock:
            state["open"] -= 1
        return 204

    results = deliver_due(database, secret_for, post, allow_private=True, per_owner=2)
    assert sorted(state["sent"]) == sorted(ids) and [r.state for r in results] == ["delivered"] * 5
    assert state["most"] == 2


def test_one_jobs_messages_go_one_at_a_time_in_the_order_they_happened(database):
    """A job's started / progress / completed (enqueued in that order, all due) are sent one at a time, oldest
    first, even with free slots; another job of the same key goes beside them. A message waiting for its retry
    holds back the later ones of its job."""
    now = time.time()
    job = "c" * 32
    ids = [enqueue(database, "key_a", "http://127.0.0.1:9/x", now - 5 + i, job_id=job) for i in range(3)]
    other = enqueue(database, "key_a", "http://127.0.0.1:9/x", now - 1)
    lock, state = threading.Lock(), {"open": set(), "most_of_job": 0, "sent": []}

    def post(request):
        with lock:
            state["open"].add(request.message_id)
            state["most_of_job"] = max(state["most_of_job"], len(state["open"] & set(ids)))
            state["sent"].append(request.message_id)
        time.sleep(0.2)  # the other job's attempt and any wrongly started one of this job overlap it
        with lock:
            state["open"].discard(request.message_id)
        return 204

    results = deliver_due(database, secret_for, post, allow_private=True, per_owner=4)
    assert sorted(r.message_id for r in results) == sorted([*ids, other])
    assert [m for m in state["sent"] if m in ids] == ids and state["most_of_job"] == 1
    late = [enqueue(database, "key_a", "http://127.0.0.1:9/x", now + i, job_id="d" * 32) for i in (-2, -1)]
    with database.transaction() as session:  # the first one failed once and waits for its retry
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == late[0])
                        .values(next_attempt_at=now + 60))
    assert deliver_due(database, secret_for, post, allow_private=True) == []


def test_the_lease_must_outlive_the_deadline(database):
    with pytest.raises(ValueError, match="lease_s"):
        WebhookDispatcher(database, secret_for, timeout_s=30.0, lease_s=20.0)


# ------------------------------------------------------------------------------------------------ finding 9
@pytest.fixture
def public_dns(monkeypatch):
    """Every host name resolves to 93.184.216.34 (nothing is sent there)."""
    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("url, code", [
    ("https://hooks.example.com/in\r\nX-Injected: 1", "U+000D at position 28"),
    ("https://hooks.example.com/in\nx", "U+000A"),
    ("https://hooks.example.com/in\x00", "U+0000"),
    ("https://hooks.example.com/\tin", "U+0009"),
    ("https://hooks.example.com/a b", "U+0020"),
    ("https://hooks.example.com/in\x7f", "U+007F"),
    ("https://hooks.example.com/in\x85", "U+0085"),
    ("https://hooks.example.com/in\n", "U+000A"),  # even at the end (strip() used to hide it)
    (" https://hooks.example.com/in", "U+0020"),
    ("https://hooks.exa\rmple.com/in", "U+000D"),
])
def test_control_characters_are_refused_anywhere_even_for_a_local_setup(url, code):
    for allow_private in (False, True):
        with pytest.raises(WebhookUrlError, match=f"^webhook_url: must not contain control characters or spaces "
                                                  f"\\(found {code.replace('+', '[+]')}"):
            check_webhook_url(url, allow_private=allow_private)


@pytest.mark.parametrize("url, allowed, port", [
    ("https://hooks.example.com:8443/in", (80, 443), 8443),
    ("http://hooks.example.com:22/in", (80, 443), 22),
    ("https://hooks.example.com:6379/", (80, 443), 6379),
    ("https://hooks.example.com:0/", (80, 443), 0),
    ("https://hooks.example.com/in", (80, 8443), 443),  # the scheme's default port counts too
])
def test_ports_outside_the_allow_list_are_refused(public_dns, url, allowed, port):
    with pytest.raises(WebhookUrlError, match=f"^webhook_url: port {port} is not accepted; webhooks go to ports"):
        check_webhook_url(url, allowed_ports=allowed)


def test_default_and_listed_ports_pass(public_dns):
    assert check_webhook_url("https://hooks.example.com/in").port == 443
    assert check_webhook_url("http://hooks.example.com/in").port == 80
    assert check_webhook_url("https://hooks.example.com:80/in").port == 80
    assert check_webhook_url("https://hooks.example.com:8443/in", allowed_ports=(443, 8443)).port == 8443
    assert check_webhook_url("https://hooks.example.com/in%0D%0Ax").url == "https://hooks.example.com/in%0D%0Ax"
    assert check_webhook_url("http://127.0.0.1:8080/", allow_private=True).port == 8080  # local setups: any port


@pytest.fixture
def client(database_url, tmp_path):
    from lift3d.service.metrics import ServiceMetrics
    from lift3d.service.server import build_api, build_service
    from lift3d.service.state import open_state

    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=database_url,
                           default_rate_limit_per_min=1000, webhook_allowed_ports=[443, 8443])
    state = open_state(config)
    queued: list[str] = []
    api = build_api(config, state, build_service(config, state, queued.append), ServiceMetrics())
    key = state.keys.create(credits=100)
    yield TestClient(api, raise_server_exceptions=False, headers={"Authorization": f"Bearer {key.key}"}), queued
    state.close()


def test_submit_refuses_control_characters_and_ports_with_the_error_envelope(client, public_dns):
    client, queued = client
    for url, message in (("https://hooks.example.com/in\r\nX-Injected: 1", "must not contain control characters"),
                         ("https://hooks.example.com/in\x00", "must not contain control characters"),
                         ("https://hooks.example.com:80/in", "port 80 is not accepted; webhooks go to ports 443, "
                                                             "8443")):
        response = client.post("/v1/generation/text-to-3d", json={"prompt": "x", "webhook_url": url})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["name"] == "invalid_parameters" and any(message in error for error in body["errors"]), body
    assert queued == []
    listed = "https://hooks.example.com:8443/"
    ok = client.post("/v1/generation/text-to-3d", json={"prompt": "x", "webhook_url": listed})
    assert ok.status_code == 202, ok.text
    assert len(queued) == 1


# ------------------------------------------------------------------------------------------------ finding 11: at rest
def raw_secret(database, key_id: str) -> str:
    with database.engine.connect() as connection:
        return connection.execute(text("SELECT webhook_secret FROM api_keys WHERE id = :id"), {"id": key_id}).scalar()


def test_webhook_secrets_are_stored_as_fernet_tokens(database):
    keys = ApiKeyStore(database)
    created = keys.create(name="alice", credits=1)
    stored = raw_secret(database, created.id)
    assert created.webhook_secret.startswith("whsec_")
    assert stored.startswith("gAAAAA") and "whsec_" not in stored and created.webhook_secret[6:] not in stored
    assert database.cipher.decrypt(stored) == created.webhook_secret
    assert keys.get(created.id).webhook_secret == created.webhook_secret  # what signing reads
    assert [info.webhook_secret for info in keys.list()] == [created.webhook_secret]


def test_the_migration_encrypts_the_plaintext_secrets_of_an_existing_database(database_url):
    """A database at revision 0001 (secrets in plaintext, a job referencing its key) migrated to the head."""
    db = Database(database_url)
    try:
        migrate(db, "0001")
        secret = "whsec_" + base64.b64encode(b"an-old-plaintext-secret!").decode()
        with db.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO api_keys (id, name, key_hash, prefix, webhook_secret, balance_mc, created_at) "
                "VALUES ('key_old', 'old', :hash, 'sk-old', :secret, 5000, 1.0)"), {"hash": "0" * 64, "secret": secret})
            connection.execute(text(
                "INSERT INTO jobs (id, owner_id, kind, status, attempts, version, cancel_requested, created_at, "
                "updated_at, reserved_mc, record) VALUES ('j1', 'key_old', 'text-to-3d', 'queued', 0, 0, false, "
                "1.0, 1.0, 0, '{}')"))
        migrate(db)
        stored = raw_secret(db, "key_old")
        assert stored.startswith("gAAAAA") and db.cipher.decrypt(stored) == secret
        assert ApiKeyStore(db).get("key_old").webhook_secret == secret
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT owner_id FROM jobs")).scalar() == "key_old"
        migrate(db)  # a second run changes nothing
        assert raw_secret(db, "key_old") == stored
    finally:
        db.dispose()


def test_a_cluster_database_without_the_key_refuses_to_start(monkeypatch):
    monkeypatch.delenv(ENCRYPTION_KEY_ENV, raising=False)
    with pytest.raises(MissingEncryptionKey, match=f"^{ENCRYPTION_KEY_ENV} is not set: a postgresql database keeps"):
        Database("postgresql://lift3d:pw@postgres/lift3d")
    with pytest.raises(ValueError, match="key 1 is not a Fernet key") as info:
        Database("postgresql://lift3d:pw@postgres/lift3d", encryption_key="not-a-key")
    assert "not-a-key" not in str(info.value)


def test_a_wrong_key_cannot_read_the_secrets_and_rotation_keeps_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'lift3d.db'}"
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    db = Database(url, encryption_key=old)
    migrate(db)
    created = ApiKeyStore(db).create()
    db.dispose()
    wrong = Database(url, encryption_key=new)
    with pytest.raises(UnreadableSecret, match="cannot be decrypted with the keys in LIFT3D_ENCRYPTION_KEY"):
        ApiKeyStore(wrong).get(created.id)
    wrong.dispose()
    rotated = Database(url, encryption_key=f"{new},{old}")  # the new key first; the old one still decrypts
    assert ApiKeyStore(rotated).get(created.id).webhook_secret == created.webhook_secret
    assert rotate_secrets(rotated) == 1  # re-encrypted with the new key: the old one can go
    rotated.dispose()
    only_new = Database(url, encryption_key=new)
    assert ApiKeyStore(only_new).get(created.id).webhook_secret == created.webhook_secret
    only_new.dispose()


def test_the_sqlite_file_its_journal_and_its_key_file_are_private(tmp_path):
    previous = os.umask(0o022)  # the usual umask: files would be 0644
    try:
        path = tmp_path / "state" / "lift3d.db"
        db = Database(f"sqlite:///{path}")
        migrate(db)
        ApiKeyStore(db).create()
        with db.engine.connect() as connection:  # an open connection keeps -wal and -shm on disk
            connection.execute(text("SELECT 1"))
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        db.dispose()
        assert modes == {"lift3d.db": 0o600, "lift3d.db-wal": 0o600, "lift3d.db-shm": 0o600, "lift3d.db.key": 0o600}
        legacy = tmp_path / "legacy.db"  # a file an older version created 0644 is narrowed
        legacy.touch(mode=0o644)
        Database(f"sqlite:///{legacy}").dispose()
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_prepare_http_works_inside_a_running_event_loop():
    """A Serve replica's constructor runs inside an event loop: the warm-up must not start a nested one (it did,
    and the JobConsumer replica failed to start with "Already running asyncio in this thread")."""
    import asyncio
    import ssl

    async def in_loop():
        return prepare_http.__wrapped__()

    assert isinstance(asyncio.run(in_loop()), ssl.SSLContext)
