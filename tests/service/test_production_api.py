"""The whole HTTP stack as the Serve ingress builds it (lift3d.service.server.build_api) over a real database:
keys, credits reserved/settled/refunded, scoping, idempotent retries, expiry, webhook URLs and admission — on
SQLite and PostgreSQL. The worker side is played by hand through the job store (no Ray, no models)."""

import pytest
from fastapi.testclient import TestClient

from lift3d.params import GenerationParams
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.store import JobOutcome
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service, pricing
from lift3d.service.state import open_state

OUTCOME = dict(main_key="model.glb", content_type="model/gltf-binary", artifacts=["model.glb"])


@pytest.fixture
def stack(database_url, tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=database_url,
                           gpu_type="A10G", default_rate_limit_per_min=1000, default_max_concurrent_jobs=2,
                           result_ttl_s=3600)
    state = open_state(config)
    queued: list[str] = []
    service = build_service(config, state, queued.append)
    client = TestClient(build_api(config, state, service, ServiceMetrics()), raise_server_exceptions=False)
    yield config, state, client, queued
    state.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def run(state, job_id: str, *, cost_usd: float | None = None, error: str | None = None) -> None:
    """What the trainer does: start the attempt, write the result, finish."""
    attempt = state.jobs.begin_attempt(job_id, "w").attempts
    if error:
        state.jobs.fail(job_id, "internal_error", error, attempt=attempt)
    else:
        state.store.put(f"generations/{job_id}/model.glb", b"glTF")
        state.jobs.succeed(job_id, JobOutcome(**OUTCOME, cost_usd=cost_usd), attempt=attempt)


def test_a_key_pays_for_its_jobs_and_sees_only_them(stack):
    config, state, client, queued = stack
    price = pricing(config)("text-to-3d", GenerationParams(prompt="a robot"))  # the tiny preset's estimate
    alice = state.keys.create(name="alice", credits=10 * price)
    bob = state.keys.create(name="bob", credits=100)

    assert client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}).status_code == 401
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=bearer(alice.key))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert float(response.headers["X-Remaining-Credits"]) == pytest.approx(9 * price, abs=1e-3)  # reserved
    assert queued == [job_id]

    # another key: the job does not exist for it, in every route
    for method, path in (("GET", f"/v1/generation/{job_id}"), ("DELETE", f"/v1/generation/{job_id}"),
                         ("GET", f"/v1/generation/{job_id}/artifacts/model.glb"),
                         ("GET", f"/v1/generation/{job_id}/events")):
        assert client.request(method, path, headers=bearer(bob.key)).status_code == 404, path

    # the job ran and cost less than estimated: the difference comes back
    run(state, job_id, cost_usd=0.25 * price * config.usd_per_credit)
    result = client.get(f"/v1/generation/{job_id}", headers={**bearer(alice.key), "Accept": "application/json"})
    assert result.status_code == 200
    assert client.get("/v1/user/balance", headers=bearer(alice.key)).json()["credits"] == \
        pytest.approx(10 * price - 0.25 * price, abs=2e-3)
    artifact = client.get(f"/v1/generation/{job_id}/artifacts/model.glb", headers=bearer(alice.key))
    assert artifact.status_code == 200 and artifact.content == b"glTF"
    assert "file://" not in result.text and str(config.store_url) not in result.text  # no server paths


def test_short_balance_is_402_and_nothing_is_stored(stack):
    config, state, client, queued = stack
    poor = state.keys.create(name="poor", credits=0.001)
    response = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=bearer(poor.key))
    assert response.status_code == 402 and response.json()["name"] == "insufficient_credits"
    assert "0.001" in response.json()["errors"][0]  # the message gives the balance
    assert queued == [] and state.jobs.count_active() == 0


def test_failed_jobs_are_refunded(stack):
    config, state, client, _ = stack
    key = state.keys.create(credits=100)
    job_id = client.post("/v1/generation/text-to-3d", json={"prompt": "x"}, headers=bearer(key.key)).json()["id"]
    run(state, job_id, error="CUDA out of memory")
    assert state.keys.balance(key.id) == pytest.approx(100.0)


def test_an_idempotent_retry_returns_the_same_job(stack):
    config, state, client, queued = stack
    key = state.keys.create(credits=100)
    headers = {**bearer(key.key), "Idempotency-Key": "order-42"}
    first = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=headers)
    again = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=headers)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true" and len(queued) == 1
    other = client.post("/v1/generation/text-to-3d", json={"prompt": "a cat"}, headers=headers)
    assert other.status_code == 422 and other.json()["name"] == "idempotency_key_reused"


def test_results_expire_and_answer_410(stack):
    config, state, client, _ = stack
    key = state.keys.create(credits=100)
    job_id = client.post("/v1/generation/text-to-3d", json={"prompt": "x"}, headers=bearer(key.key)).json()["id"]
    run(state, job_id, cost_usd=0.0)
    state.jobs.clock = lambda: 10**10  # long after result_ttl_s
    assert state.jobs.expire_due() == [job_id]
    response = client.get(f"/v1/generation/{job_id}", headers=bearer(key.key))
    assert response.status_code == 410 and response.json()["name"] == "generation_expired"
    assert state.store.list(f"generations/{job_id}/") == []


def test_webhook_urls_are_checked_at_the_door(stack):
    config, state, client, queued = stack
    key = state.keys.create(credits=100)
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "file:///etc/passwd"):
        response = client.post("/v1/generation/text-to-3d", json={"prompt": "x", "webhook_url": url},
                               headers=bearer(key.key))
        assert response.status_code == 422 and "webhook_url" in response.text, url
    assert queued == []


def test_a_key_at_its_job_limit_gets_429_with_retry_after(stack):
    config, state, client, queued = stack  # default_max_concurrent_jobs=2
    key = state.keys.create(credits=100)
    codes = [client.post("/v1/generation/text-to-3d", json={"prompt": f"p{i}"}, headers=bearer(key.key))
             for i in range(3)]
    assert [r.status_code for r in codes] == [202, 202, 429]
    assert codes[2].json()["name"] == "rate_limited" and int(codes[2].headers["Retry-After"]) > 0
    run(state, codes[0].json()["id"], cost_usd=0.0)  # one finishes: room again
    assert client.post("/v1/generation/text-to-3d", json={"prompt": "p3"}, headers=bearer(key.key)).status_code == 202


def test_a_poll_of_an_active_job_takes_no_worker_thread_on_sqlite(stack, monkeypatch):
    """Issue 23, poll cost: a queued or running job's status comes from the event loop on SQLite (no thread hop);
    an ended job's result, and every poll on PostgreSQL, still take the worker thread. Same bodies either way."""
    from lift3d.service.api.routes import generations

    config, state, client, _ = stack
    key = state.keys.create(name="k", credits=100)
    job_id = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=bearer(key.key)).json()["id"]
    hops = []

    async def counting_to_thread(function, *args, **kwargs):
        if getattr(function, "__self__", None) is not state.keys:  # (the key check has its own cache and thread)
            hops.append(function.__name__)
        return function(*args, **kwargs)

    monkeypatch.setattr(generations.asyncio, "to_thread", counting_to_thread)
    headers = {**bearer(key.key), "Accept": "application/json"}
    queued = client.get(f"/v1/generation/{job_id}", headers=headers)
    assert (queued.status_code, queued.json()["status"]) == (202, "queued")
    assert hops == ([] if state.database.is_sqlite else ["status"])
    run(state, job_id, cost_usd=0.0)
    hops.clear()
    done = client.get(f"/v1/generation/{job_id}", headers=headers)
    assert (done.status_code, done.json()["status"]) == (200, "succeeded")
    assert hops == ["status"]
