"""Idempotency-Key on POSTs (lift3d.service.api.idempotency), on SQLite and PostgreSQL, with a minimal app built here:
a POST route that inserts a job row and answers 202 {"id"}, and a stand-in for the auth middleware that sets
``request.state.principal`` from an ``x-test-key`` header."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import uuid
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from lift3d.service.housekeeping import purge_expired
from lift3d.service.db.models import ApiKey, IdempotencyRecord, Job
from lift3d.service.api.idempotency import (OPENAPI_PARAMETER, IdempotencyStore, RequestHasher, install_idempotency,
                                        parse_idempotency_key, request_hash)
from lift3d.service.schemas import BadRequestError

T0 = 1_700_000_000.0
DAY = 86400.0


def add_keys(database, *key_ids: str) -> None:
    with database.transaction() as session:
        for key_id in key_ids:
            session.add(ApiKey(id=key_id, name=key_id, key_hash=hashlib.sha256(key_id.encode()).hexdigest(),
                               prefix=key_id[:8], webhook_secret="whsec_test", balance_mc=0, created_at=T0))


def job_count(database) -> int:
    with database.transaction() as session:
        return session.execute(select(func.count()).select_from(Job)).scalar_one()


class Harness:
    """The test app, its clock and what its routes did. ``plan`` lists answers for the next route calls
    (``"500"``, ``"402"``, ``"raise"``); ``gate`` holds the route until released."""

    def __init__(self, database, ttl_s: float = DAY) -> None:
        self.database, self.now = database, T0
        self.calls: list[bytes] = []
        self.plan: list[str] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.gated = False
        self.raise_errors = True
        api = FastAPI()

        def insert_job(owner: str | None) -> str:
            job_id = uuid.uuid4().hex
            with database.transaction() as session:
                session.add(Job(id=job_id, owner_id=owner, kind="text-to-3d", status="queued", created_at=self.now,
                                updated_at=self.now, record={}))
            return job_id

        @api.post("/v1/generation/text-to-3d")
        async def submit(request: Request) -> Response:
            body = await request.body()
            self.calls.append(body)
            if self.gated:
                self.entered.set()
                await asyncio.to_thread(self.release.wait, 10)
            step = self.plan.pop(0) if self.plan else "ok"
            if step == "raise":
                raise RuntimeError("route crashed")
            if step == "500":
                return JSONResponse({"id": "x", "name": "internal_error", "errors": ["boom"]}, status_code=500)
            if step == "402":
                return JSONResponse({"id": "x", "name": "insufficient_credits", "errors": ["top up"]},
                                    status_code=402)
            if json.loads(body or b"{}").get("bad"):
                return JSONResponse({"id": "r1", "name": "invalid_parameters", "errors": ["bad: no"]},
                                    status_code=422)
            principal = getattr(request.state, "principal", None)
            job_id = await asyncio.to_thread(insert_job, getattr(principal, "key_id", None))
            return JSONResponse({"id": job_id}, status_code=202, headers={"Location": f"/v1/generation/{job_id}",
                                                                          "X-Remaining-Credits": "12.5"})

        @api.post("/v1/upload")
        async def upload(request: Request) -> Response:
            form = await request.form()
            self.calls.append(await form["image"].read())
            return JSONResponse({"id": uuid.uuid4().hex}, status_code=202)

        @api.post("/v1/ignores-body")
        async def ignores_body() -> Response:
            self.calls.append(b"")
            return JSONResponse({"id": uuid.uuid4().hex}, status_code=202)

        @api.post("/v1/binary")
        async def binary() -> Response:
            self.calls.append(b"")
            return Response(bytes(range(256)) + uuid.uuid4().bytes, media_type="model/gltf-binary",
                            headers={"Content-Disposition": 'attachment; filename="a.glb"'})

        install_idempotency(api, database, ttl_s, clock=lambda: self.now)

        @api.middleware("http")  # stand-in for the auth middleware: added last, so it runs first
        async def principal(request: Request, call_next):
            key = request.headers.get("x-test-key")
            if key:
                request.state.principal = SimpleNamespace(key_id=key)
            return await call_next(request)

        self.api = api

    def client(self) -> TestClient:
        return TestClient(self.api, raise_server_exceptions=self.raise_errors)


@pytest.fixture
def harness(database) -> Harness:
    add_keys(database, "k1", "k2")
    return Harness(database)


def post(client: TestClient, key: str | None, body: dict, owner: str | None = "k1", path="/v1/generation/text-to-3d"):
    headers = {} if key is None else {"Idempotency-Key": key}
    if owner:
        headers["x-test-key"] = owner
    return client.post(path, content=json.dumps(body).encode(), headers={**headers,
                                                                        "content-type": "application/json"})


def test_same_key_and_body_replays_the_original_response(harness, database):
    with harness.client() as client:
        first = post(client, "retry-1", {"prompt": "a robot"})
        second = post(client, "retry-1", {"prompt": "a robot"})
    assert first.status_code == 202 and second.status_code == 202
    assert second.json() == first.json() and second.content == first.content
    assert second.headers["location"] == first.headers["location"] == f"/v1/generation/{first.json()['id']}"
    assert second.headers["content-type"] == "application/json"
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert "x-remaining-credits" not in second.headers  # per-call headers are not replayed
    assert len(harness.calls) == 1 and job_count(database) == 1
    with database.transaction() as session:
        row = session.get(IdempotencyRecord, ("k1", "retry-1"))
        assert (row.state, row.response_status, row.created_at, row.expires_at) == ("done", 202, T0, T0 + DAY)
        assert row.request_hash == request_hash("POST", "/v1/generation/text-to-3d", b'{"prompt": "a robot"}')
        assert row.response_headers == {"content-type": "application/json",
                                        "location": f"/v1/generation/{first.json()['id']}"}


def test_same_key_with_another_body_or_path_is_422(harness, database):
    with harness.client() as client:
        first = post(client, "k-a", {"prompt": "a robot"})
        other_body = post(client, "k-a", {"prompt": "a cat"})
        other_path = post(client, "k-a", {"prompt": "a robot"}, path="/v1/ignores-body")
    assert first.status_code == 202
    for answer in (other_body, other_path):
        assert answer.status_code == 422
        assert answer.json()["name"] == "idempotency_key_reused"
        assert "different request" in answer.json()["errors"][0]
    assert len(harness.calls) == 1 and job_count(database) == 1


def test_concurrent_first_requests_one_runs_the_other_gets_409(harness, database):
    harness.gated = True
    answers = {}
    with harness.client() as client:
        first = threading.Thread(target=lambda: answers.update(first=post(client, "race", {"prompt": "p"})))
        first.start()
        assert harness.entered.wait(10)  # the first request holds the key, inside the route
        answers["second"] = post(client, "race", {"prompt": "p"})
        harness.release.set()
        first.join(10)
    assert answers["first"].status_code == 202
    assert answers["second"].status_code == 409
    assert answers["second"].headers["retry-after"] == "1"
    assert answers["second"].json()["name"] == "idempotency_key_in_use"
    assert len(harness.calls) == 1 and job_count(database) == 1


def test_racing_claims_have_exactly_one_winner(database):
    store = IdempotencyStore(database, ttl_s=DAY)
    barrier = threading.Barrier(8)
    claims = []

    def claim():
        barrier.wait()
        claims.append(store.claim("local", "same", T0))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(claims) == 8
    winners = [c for c in claims if c.token is not None]
    assert len(winners) == 1 and winners[0].expires_at == T0 + DAY
    assert {c.state for c in claims if c.token is None} == {"pending"}


def test_a_key_expires_after_the_ttl_and_then_runs_again(harness, database):
    with harness.client() as client:
        first = post(client, "daily", {"prompt": "p"})
        harness.now = T0 + DAY - 1
        assert post(client, "daily", {"prompt": "p"}).json() == first.json()
        harness.now = T0 + DAY + 1
        later = post(client, "daily", {"prompt": "p"})
        again = post(client, "daily", {"prompt": "p"})
    assert later.status_code == 202 and later.json() != first.json() and "idempotent-replayed" not in later.headers
    assert again.json() == later.json() and again.headers["idempotent-replayed"] == "true"
    assert len(harness.calls) == 2 and job_count(database) == 2
    with database.transaction() as session:
        assert session.get(IdempotencyRecord, ("k1", "daily")).expires_at == T0 + 2 * DAY + 1


@pytest.mark.parametrize("failure", ["500", "raise", "402"])
def test_a_5xx_or_transient_failure_frees_the_key_for_a_retry(harness, database, failure):
    harness.plan = [failure]
    harness.raise_errors = False  # "raise": the app's server-error middleware answers 500
    with harness.client() as client:
        failed = post(client, "flaky", {"prompt": "p"})
        retried = post(client, "flaky", {"prompt": "p"})
        replayed = post(client, "flaky", {"prompt": "p"})
    assert failed.status_code == {"500": 500, "raise": 500, "402": 402}[failure]
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
    assert replayed.json() == retried.json() and replayed.headers["idempotent-replayed"] == "true"
    assert len(harness.calls) == 2 and job_count(database) == 1


def test_a_4xx_answer_is_stored_and_replayed(harness, database):
    with harness.client() as client:
        first = post(client, "invalid", {"bad": True})
        second = post(client, "invalid", {"bad": True})
    assert first.status_code == second.status_code == 422
    assert second.json() == first.json() == {"id": "r1", "name": "invalid_parameters", "errors": ["bad: no"]}
    assert second.headers["idempotent-replayed"] == "true"
    assert len(harness.calls) == 1 and job_count(database) == 0


def test_keys_are_scoped_per_api_key(harness, database):
    with harness.client() as client:
        k1 = post(client, "shared", {"prompt": "p"}, owner="k1")
        k2 = post(client, "shared", {"prompt": "p"}, owner="k2")
        local = post(client, "shared", {"prompt": "p"}, owner=None)
        k2_again = post(client, "shared", {"prompt": "p"}, owner="k2")
    assert len({k1.json()["id"], k2.json()["id"], local.json()["id"]}) == 3
    assert k2_again.json() == k2.json()
    with database.transaction() as session:
        owners = session.execute(select(IdempotencyRecord.owner_id).order_by(IdempotencyRecord.owner_id)).scalars()
        assert list(owners) == ["k1", "k2", "local"]
        assert session.get(Job, local.json()["id"]).owner_id is None


def test_without_the_header_every_post_runs(harness, database):
    with harness.client() as client:
        ids = {post(client, None, {"prompt": "p"}).json()["id"] for _ in range(3)}
    assert len(ids) == 3 and job_count(database) == 3


def test_a_multipart_retry_with_a_new_boundary_is_the_same_request(harness):
    image = bytes(range(256)) * 300  # 76,800 bytes, several receive chunks
    with harness.client() as client:
        answers = [client.post("/v1/upload", files={"image": ("a.png", image, "image/png")},
                               headers={"Idempotency-Key": "upload-1"}) for _ in range(2)]
        other = client.post("/v1/upload", files={"image": ("a.png", image[:-1], "image/png")},
                            headers={"Idempotency-Key": "upload-1"})
    assert answers[0].status_code == 202 and answers[1].json() == answers[0].json()
    assert answers[1].headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert harness.calls == [image]


def test_a_body_the_route_did_not_read_is_still_fingerprinted(harness):
    with harness.client() as client:
        first = post(client, "unread", {"a": 1}, path="/v1/ignores-body")
        same = post(client, "unread", {"a": 1}, path="/v1/ignores-body")
        other = post(client, "unread", {"a": 2}, path="/v1/ignores-body")
    assert same.json() == first.json() and other.status_code == 422
    assert len(harness.calls) == 1


def test_binary_responses_replay_byte_for_byte(harness, database):
    with harness.client() as client:
        first = client.post("/v1/binary", headers={"Idempotency-Key": "glb"})
        second = client.post("/v1/binary", headers={"Idempotency-Key": "glb"})
    assert first.status_code == 200 and len(first.content) == 272 and first.content[:256] == bytes(range(256))
    assert second.content == first.content
    assert second.headers["content-type"] == "model/gltf-binary"
    assert second.headers["content-disposition"] == 'attachment; filename="a.glb"'
    assert len(harness.calls) == 1
    with database.transaction() as session:
        assert session.get(IdempotencyRecord, ("local", "glb")).response_headers[":body-encoding"] == "base64"


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_malformed_keys_are_400(harness, value):
    with harness.client() as client:
        answer = client.post("/v1/generation/text-to-3d", json={"prompt": "p"},
                             headers=[("Idempotency-Key", value.encode("latin-1"))])
    assert answer.status_code == 400 and answer.json()["name"] == "bad_request"
    assert "Idempotency-Key" in answer.json()["errors"][0]
    assert harness.calls == []


def test_parse_idempotency_key_agrees_with_its_openapi_schema():
    assert parse_idempotency_key(["x" * 255]) == "x" * 255
    assert parse_idempotency_key(['"8e03978e-40d5"']) == '"8e03978e-40d5"'  # opaque: quotes are part of the key
    assert parse_idempotency_key([" \t~key with spaces~ "]) == "~key with spaces~"
    with pytest.raises(BadRequestError, match="once"):
        parse_idempotency_key(["a", "b"])
    with pytest.raises(BadRequestError, match="1 to 255"):
        parse_idempotency_key(["   "])
    pattern = re.compile(OPENAPI_PARAMETER["schema"]["pattern"])
    for value, valid in (("a", True), ("x" * 255, True), ("a b", True), ('""', True), ("~!", True),
                         ("x" * 256, False), ("", False), (" a", False), ("a ", False), ("caf\u00e9", False),
                         ("a\tb", False), ("a\x7fb", False)):
        try:
            accepted = parse_idempotency_key([value]) == value
        except BadRequestError:
            accepted = False
        assert accepted is valid, value
        assert (pattern.fullmatch(value) is not None) is valid, value  # the pattern bounds the length too


def test_request_hasher_replaces_the_multipart_boundary_across_chunks():
    def body(boundary: bytes) -> bytes:
        return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n7\r\n--" + boundary +
                b"--\r\n")

    expected = hashlib.sha256(b"POST /v1/upload\n--lift3d-boundary\r\nContent-Disposition: form-data; "
                              b"name=\"seed\"\r\n\r\n7\r\n--lift3d-boundary--\r\n").hexdigest()
    for boundary in (b"abc123", b"----WebKitFormBoundary7MA4YWxkTrZu0gW"):
        data = body(boundary)
        for split in range(len(data) + 1):  # every chunk border, including inside a delimiter
            hasher = RequestHasher("post", "/v1/upload", f'multipart/form-data; boundary="{boundary.decode()}"')
            hasher.update(data[:split])
            hasher.update(data[split:])
            assert hasher.hexdigest() == expected
    assert request_hash("POST", "/v1/x", b"{}") == hashlib.sha256(b"POST /v1/x\n{}").hexdigest()
    assert request_hash("POST", "/v1/x", b"--a", "application/json") == \
        hashlib.sha256(b"POST /v1/x\n--a").hexdigest()  # not multipart: bytes as they are


def test_purge_expired_deletes_expired_rows_only(database):
    with database.transaction() as session:
        for key, expires_at in (("old", T0 - 1), ("edge", T0), ("live", T0 + 1)):
            session.add(IdempotencyRecord(owner_id="local", idempotency_key=key, request_hash="h", state="done",
                                          created_at=T0 - DAY, expires_at=expires_at))
    assert purge_expired(database, T0) == 2
    assert purge_expired(database, T0) == 0
    with database.transaction() as session:
        assert list(session.execute(select(IdempotencyRecord.idempotency_key)).scalars()) == ["live"]
