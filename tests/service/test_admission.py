"""Admission control (lift3d.service.api.admission): per-key rate limits on the in-process store and on a REAL Redis
server (the session's, from Debian's redis-server; missing binary → the tests fail, never skip), per-key concurrency
and the global queue depth counted on the jobs table (SQLite and PostgreSQL), exact under concurrent submits (issue 23:
8 at once on a one-job key → one 202), and the order of install_admission."""

from __future__ import annotations

import hashlib
import logging
import uuid
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import free_port

from lift3d.service.api.admission import (JobAdmissionMiddleware, RateLimitedError, RateLimiter, RateLimitMiddleware,
                                          count_active_jobs, count_queued_jobs, install_admission)
from lift3d.service.db.models import ApiKey, Job

T0 = 1_700_000_000.0


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(params=["memory", "redis"])
def storage_url(request) -> str:
    """``memory://`` or the session's Redis server's URL (flushed, so that every test starts with no counts)."""
    if request.param == "memory":
        return "memory://"
    server = request.getfixturevalue("redis_server")
    server.client.flushall()
    return server.url


def add_keys(database, *keys: tuple[str, int | None]) -> None:
    with database.transaction() as session:
        for key_id, max_concurrent in keys:
            session.add(ApiKey(id=key_id, name=key_id, key_hash=hashlib.sha256(key_id.encode()).hexdigest(),
                               prefix=key_id[:8], webhook_secret="whsec_test", balance_mc=0, created_at=T0,
                               max_concurrent_jobs=max_concurrent))


def add_jobs(database, owner: str | None, *statuses: str) -> None:
    with database.transaction() as session:
        for status in statuses:
            session.add(Job(id=uuid.uuid4().hex, owner_id=owner, kind="text-to-3d", status=status, created_at=T0,
                            updated_at=T0, record={}))


def build_app(database=None) -> FastAPI:
    """Routes: POST /v1/generation/text-to-3d (inserts a queued job, 202 {"id"}), GET /v1/generation/{id},
    GET /healthz. Install middleware on the result, then :func:`with_principals` (the auth stand-in, outermost)."""
    api = FastAPI()

    @api.post("/v1/generation/text-to-3d")
    async def submit(request: Request) -> Response:
        await request.body()
        principal = getattr(request.state, "principal", None)
        job_id = uuid.uuid4().hex
        with database.transaction() as session:
            session.add(Job(id=job_id, owner_id=getattr(principal, "key_id", None), kind="text-to-3d",
                            status="queued", created_at=T0, updated_at=T0, record={}))
        return JSONResponse({"id": job_id}, status_code=202, headers={"Location": f"/v1/generation/{job_id}"})

    @api.get("/v1/generation/{id}")
    async def status(id: str) -> Response:
        return JSONResponse({"id": id, "status": "queued"}, status_code=202)

    @api.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    return api


def with_principals(api: FastAPI, principals: dict[str, SimpleNamespace]) -> FastAPI:
    """Stand-in for the auth middleware (added last: runs first): ``x-test-key`` names the principal."""

    @api.middleware("http")
    async def principal(request: Request, call_next):
        key = request.headers.get("x-test-key")
        if key:
            request.state.principal = principals[key]
        return await call_next(request)

    return api


def principal(key_id: str, rate_limit_per_min: int | None = None, max_concurrent_jobs: int | None = None):
    return SimpleNamespace(key_id=key_id, rate_limit_per_min=rate_limit_per_min,
                           max_concurrent_jobs=max_concurrent_jobs)


PRINCIPALS = {"k1": principal("k1"), "k2": principal("k2"), "k3": principal("k3", rate_limit_per_min=1),
              "k4": principal("k4", rate_limit_per_min=0), "k5": principal("k5", max_concurrent_jobs=1)}


def rate_limited_app(storage_url: str, per_min: int = 3) -> FastAPI:
    api = build_app()
    api.add_middleware(RateLimitMiddleware, limiter=RateLimiter(storage_url, default_per_min=per_min))
    return with_principals(api, PRINCIPALS)


def get(client: TestClient, key: str | None, path: str = "/v1/generation/abc"):
    return client.get(path, headers={"x-test-key": key} if key else {})


# ---------------------------------------------------------------------------------------------- rate limit
def test_rate_limit_per_key(storage_url):
    with TestClient(rate_limited_app(storage_url, per_min=3)) as client:
        assert [get(client, "k1").status_code for _ in range(3)] == [202, 202, 202]
        refused = get(client, "k1")
        assert refused.status_code == 429
        assert refused.json()["name"] == "rate_limited"
        assert refused.json()["errors"] == [f"rate limit of 3 requests per minute reached for this API key; retry in "
                                            f"{refused.headers['retry-after']} s"]
        assert int(refused.headers["retry-after"]) in (59, 60)  # the oldest of the 3 leaves the window in ~60 s
        assert get(client, "k1").status_code == 429  # refusals are not counted, and do not unlock either
        assert [get(client, "k2").status_code for _ in range(3)] == [202, 202, 202]  # another key: its own count
        assert [get(client, "k3").status_code for _ in range(2)] == [202, 429]  # its own limit: 1 per minute
        assert {get(client, "k4").status_code for _ in range(10)} == {202}  # 0: no limit
        assert [get(client, None).status_code for _ in range(4)] == [202, 202, 202, 429]  # no principal: "local"
        assert {get(client, "k1", "/healthz").status_code for _ in range(5)} == {200}  # only /v1/ is limited


def test_replicas_share_counts_on_redis_but_not_in_memory(redis_server):
    redis_server.client.flushall()
    replica_a, replica_b = (TestClient(rate_limited_app(redis_server.url, per_min=3)) for _ in range(2))
    assert [get(replica_a, "k1").status_code, get(replica_a, "k1").status_code,
            get(replica_b, "k1").status_code, get(replica_b, "k1").status_code] == [202, 202, 202, 429]
    assert get(replica_a, "k1").status_code == 429
    keys = [key.decode() for key in redis_server.client.keys("*")]
    assert len(keys) == 1 and keys[0].endswith("lift3d-requests/k1/3/1/minute")
    assert redis_server.client.llen(keys[0]) == 3  # the moving window: one entry per admitted request

    memory_a, memory_b = (TestClient(rate_limited_app("memory://", per_min=3)) for _ in range(2))
    assert [get(memory_a, "k1").status_code for _ in range(3)] + [get(memory_b, "k1").status_code
                                                                  for _ in range(3)] == [202] * 6


def test_an_unreachable_redis_admits_and_logs(caplog):
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", default_per_min=1)
    with caplog.at_level(logging.ERROR, logger="lift3d.service.api.admission"):
        limiter.check("k1")
        limiter.check("k1")  # would be over the limit; the storage is down: admitted
    assert [r.getMessage() for r in caplog.records] == ["rate limit storage unavailable; admitting the request "
                                                        "of k1"] * 2


def test_unknown_storage_schemes_fail_at_startup():
    from limits.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        RateLimiter("postgresql://x/y")
    with pytest.raises(ValueError, match=">= 0"):
        RateLimiter("memory://", default_per_min=-1)


# ------------------------------------------------------------------------------------ concurrency, queue depth
def job_app(database, max_concurrent: int = 4, max_queue_depth: int = 100) -> FastAPI:
    api = build_app(database)
    api.add_middleware(JobAdmissionMiddleware, database=database, default_max_concurrent_jobs=max_concurrent,
                       max_queue_depth=max_queue_depth)
    return with_principals(api, PRINCIPALS)


def submit(client: TestClient, key: str | None, idempotency_key: str | None = None):
    headers = {"x-test-key": key} if key else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return client.post("/v1/generation/text-to-3d", json={"prompt": "p"}, headers=headers)


def test_counts_on_the_jobs_table(database):
    add_keys(database, ("k1", None), ("k2", None))
    add_jobs(database, "k1", "queued", "queued", "running", "succeeded", "failed", "canceled", "expired")
    add_jobs(database, "k2", "running")
    add_jobs(database, None, "queued", "running", "succeeded")
    with database.transaction() as session:
        assert count_active_jobs(session, "k1") == 3
        assert count_active_jobs(session, "k2") == 1
        assert count_active_jobs(session, "nobody") == 0
        assert count_active_jobs(session, None) == 2  # jobs without owner (auth off)
        assert count_queued_jobs(session) == 3


def test_concurrency_limit_per_key(database):
    add_keys(database, ("k1", None), ("k2", None), ("k5", 1))
    add_jobs(database, "k1", "queued", "queued", "running", "running", "succeeded", "failed", "canceled")
    add_jobs(database, "k2", "running", "succeeded", "succeeded", "succeeded", "succeeded")
    with TestClient(job_app(database, max_concurrent=4)) as client:
        refused = submit(client, "k1")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        assert refused.json()["name"] == "rate_limited"
        assert refused.json()["errors"] == ["this API key has 4 queued or running jobs (limit 4); retry when one has "
                                            "finished"]
        assert get(client, "k1").status_code == 202  # reads are not job submissions
        assert [submit(client, "k2").status_code for _ in range(4)] == [202, 202, 202, 429]  # 1 → 4 active
        assert [submit(client, "k5").status_code for _ in range(2)] == [202, 429]  # principal's own limit: 1
        assert [submit(client, None).status_code for _ in range(5)] == [202] * 4 + [429]  # "local": ownerless jobs


def test_queue_depth_limit(database):
    add_keys(database, ("k1", None), ("k2", None))
    add_jobs(database, "k1", "queued", "queued", "running", "running", "running")
    add_jobs(database, None, "queued", "queued")
    with TestClient(job_app(database, max_concurrent=0, max_queue_depth=5)) as client:
        assert submit(client, "k2").status_code == 202  # 4 queued → 5
        refused = submit(client, "k2")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
        assert refused.json()["name"] == "overloaded"
        assert refused.json()["errors"] == ["the queue is full (5 jobs waiting); retry later"]
        with database.transaction() as session:  # a queued job starts running
            session.query(Job).filter(Job.owner_id.is_(None)).limit(1).first().status = "running"
        assert [submit(client, "k1").status_code for _ in range(2)] == [202, 503]


def test_install_admission_orders_rate_limit_idempotency_then_job_limits(database):
    add_keys(database, ("k1", None), ("k2", None))
    config = SimpleNamespace(idempotency_ttl_s=86400, rate_limit_storage_url="memory://",
                             default_rate_limit_per_min=5, default_max_concurrent_jobs=1, max_queue_depth=100)
    api = build_app(database)
    install_admission(api, database, config, clock=lambda: T0)
    with TestClient(with_principals(api, PRINCIPALS)) as client:
        first = submit(client, "k1", "once")
        assert first.status_code == 202
        replay = submit(client, "k1", "once")  # k1 is at its job limit now: the retry is replayed, not refused
        assert replay.status_code == 202 and replay.json() == first.json()
        assert replay.headers["idempotent-replayed"] == "true"
        refused = submit(client, "k1", "another")  # a new job is refused, and that refusal is not stored
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        with database.transaction() as session:
            session.get(Job, first.json()["id"]).status = "succeeded"
        accepted = submit(client, "k1", "another")  # so the same key works once a slot is free
        assert accepted.status_code == 202 and accepted.json() != first.json()
        assert submit(client, "k1", "once").json() == first.json()  # the 5th /v1/ request in the minute
        rate_refused = submit(client, "k1", "once")  # the 6th: refused, replay or not
        assert rate_refused.status_code == 429 and int(rate_refused.headers["retry-after"]) in (59, 60)
        assert "requests per minute" in rate_refused.json()["errors"][0]
        assert submit(client, "k2").status_code == 202


# ------------------------------------------------------------ concurrent submits on the real stack (issue 23)
def real_stack(database_url: str, tmp_path, **limits):
    """The app as the Serve ingress builds it (keys, credits, admission) over ``database_url``; jobs are queued
    nowhere (the queue is a list)."""
    from lift3d.service.config import ServiceConfig
    from lift3d.service.metrics import ServiceMetrics
    from lift3d.service.server import build_api, build_service
    from lift3d.service.state import open_state

    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=database_url,
                           default_rate_limit_per_min=10_000, **limits)
    state = open_state(config)
    service = build_service(config, state, [].append)
    return state, service, build_api(config, state, service, ServiceMetrics())


def fire_submits(api, headers: list[dict]) -> list[int]:
    """One ``POST /v1/generation/text-to-3d`` per entry of ``headers``, all at once (asyncio.gather over the ASGI
    app: the routes' database work runs in worker threads, truly concurrently); their status codes."""
    import asyncio

    import httpx

    async def fire() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://lift3d") as client:
            answers = await asyncio.gather(*(client.post("/v1/generation/text-to-3d", json={"prompt": f"robot {i}"},
                                                         headers=h) for i, h in enumerate(headers)))
        return [answer.status_code for answer in answers]

    return asyncio.run(fire())


def test_8_concurrent_submits_on_a_max_concurrent_1_key_give_one_202(database_url, tmp_path):
    # finding 1 of issue 23: the check and the insert were separate transactions; 8 concurrent submits gave 8 × 202
    state, _, api = real_stack(database_url, tmp_path, default_max_concurrent_jobs=4)
    try:
        key = state.keys.create(name="one-at-a-time", credits=1000, max_concurrent_jobs=1)
        codes = fire_submits(api, [{"Authorization": f"Bearer {key.key}"}] * 8)
        assert sorted(codes) == [202] + [429] * 7
        assert state.jobs.count_active(key.id) == 1
        # the 7 refused reserved nothing: only the accepted job's estimate left the balance
        with state.database.read() as session:
            reserved = int(session.execute(select(func.sum(Job.reserved_mc))).scalar_one())
        assert state.keys.balance(key.id) == pytest.approx(1000 - reserved / 1000, abs=1e-3)
    finally:
        state.close()


def test_concurrent_submits_never_exceed_the_queue_depth(database_url, tmp_path):
    state, _, api = real_stack(database_url, tmp_path, default_max_concurrent_jobs=0, max_queue_depth=3)
    try:
        keys = [state.keys.create(name=f"k{i}", credits=1000) for i in range(8)]
        codes = fire_submits(api, [{"Authorization": f"Bearer {key.key}"} for key in keys])
        assert sorted(codes) == [202] * 3 + [503] * 5
        assert state.jobs.count_queued() == 3
    finally:
        state.close()


def test_the_store_guard_holds_without_the_middleware(database_url, tmp_path):
    """8 threads released at once into GenerationService.submit (no HTTP, no early check): the guarded insert
    alone admits exactly the limit."""
    import threading

    from lift3d.service.accounts.principal import Principal
    from lift3d.service.schemas import GenerationRequest

    state, service, _ = real_stack(database_url, tmp_path, default_max_concurrent_jobs=2)
    try:
        info = state.keys.create(name="k", credits=1000).info
        caller = Principal.of(info)
        start, results = threading.Barrier(8), []

        def submit(i: int) -> None:
            start.wait()
            try:
                service.submit(GenerationRequest(kind="text-to-3d", prompt=f"robot {i}"), caller=caller)
                results.append("accepted")
            except RateLimitedError:
                results.append("refused")

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == ["accepted"] * 2 + ["refused"] * 6
        assert state.jobs.count_active(info.id) == 2
    finally:
        state.close()
