"""Authentication of the /v1/ routes, X-Remaining-Credits and the account routes, on a minimal FastAPI app (no job
store, no Ray), on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from support import Clock

from lift3d.service.accounts import credits
from lift3d.service.accounts.principal import LOCAL
from lift3d.service.api.routes import account as account_routes
from lift3d.service.api.auth import READ_CACHE_TTL_S, install_auth
from lift3d.service.api.deps import AppServices, Caller
from lift3d.service.api.errors import install_error_handlers
from lift3d.service.config import ServiceConfig
from lift3d.service.db.models import Job
from lift3d.service.accounts.keys import ApiKeyStore


def build_app(database, keys: ApiKeyStore | None, enabled: bool = True) -> FastAPI:
    """FastAPI() + a /v1/ route that spends 2.5 credits + /v1/whoami + /healthz + the account routes + auth."""
    api = FastAPI()

    @api.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @api.get("/v1/whoami")
    def whoami(caller: Caller) -> dict:
        return {"key_id": caller.key_id, "name": caller.name, "has_secret": caller.webhook_secret is not None}

    @api.post("/v1/spend")
    def spend(caller: Caller) -> dict:
        job_id = uuid.uuid4().hex
        with database.transaction() as session:
            credits.reserve(session, caller.key_id, job_id, credits.to_mc(2.5), 1.0)
            session.add(Job(id=job_id, owner_id=caller.key_id, kind="image-to-3d", status="queued", attempts=0,
                            version=0, cancel_requested=False, created_at=1.0, updated_at=1.0,
                            reserved_mc=credits.to_mc(2.5), charged_mc=None, record={}))
        return {"id": job_id}

    @api.get("/public/whoami")  # outside /v1/: no principal is set, so the Caller dependency must refuse
    def public_whoami(caller: Caller) -> dict:
        return {"key_id": caller.key_id}

    if keys is not None:
        config = ServiceConfig(default_rate_limit_per_min=60, default_max_concurrent_jobs=0)
        api.state.services = AppServices(keys=keys, config=config)
        api.include_router(account_routes.router)
    install_error_handlers(api)
    install_auth(api, keys, enabled=enabled)
    return api


@pytest.fixture
def setup(database):
    clock = Clock()
    keys = ApiKeyStore(database, clock=clock)
    alice = keys.create(name="alice", credits=100, max_concurrent_jobs=3, expires_at=clock.now + 3600)
    client = TestClient(build_app(database, keys))
    return client, keys, alice, clock


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["name"] == "unauthorized" and response.json()["errors"] == ["missing or invalid API key"]
    assert "X-Remaining-Credits" not in response.headers


def test_v1_routes_need_a_key_and_healthz_does_not(setup):
    client, _, _, _ = setup
    assert_unauthorized(client.get("/v1/whoami"))
    assert_unauthorized(client.get("/v1/user/balance"))
    assert_unauthorized(client.get("/v1/whoami", headers=bearer("sk-" + "A" * 43)))
    assert_unauthorized(client.get("/v1/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"}))
    assert_unauthorized(client.get("/v1/no-such-route"))  # 401 before 404: unauthenticated callers learn nothing
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "X-Remaining-Credits" not in response.headers
    assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


def test_bearer_and_x_api_key_authenticate_and_report_the_balance(setup):
    client, _, alice, _ = setup
    for headers in (bearer(alice.key), {"x-api-key": alice.key}, {"authorization": f"bearer  {alice.key} "}):
        response = client.get("/v1/whoami", headers=headers)
        assert response.status_code == 200
        assert response.json() == {"key_id": alice.id, "name": "alice", "has_secret": True}
        assert response.headers["X-Remaining-Credits"] == "100.000"


def test_x_remaining_credits_is_the_balance_after_the_call(setup):
    client, keys, alice, _ = setup
    response = client.post("/v1/spend", headers=bearer(alice.key))
    assert response.status_code == 200 and response.headers["X-Remaining-Credits"] == "97.500"  # 100 − 2.5
    assert keys.balance(alice.id) == 97.5
    response = client.get("/v1/no-such-route", headers=bearer(alice.key))  # errors of authenticated calls too
    assert response.status_code == 404 and response.headers["X-Remaining-Credits"] == "97.500"


def test_expired_and_revoked_keys_get_401(setup):
    client, keys, alice, clock = setup
    bob = keys.create(name="bob", credits=1)
    assert client.get("/v1/whoami", headers=bearer(bob.key)).status_code == 200
    keys.revoke(bob.id)
    assert_unauthorized(client.post("/v1/spend", headers=bearer(bob.key)))  # changes: checked at once
    assert client.get("/v1/whoami", headers=bearer(bob.key)).status_code == 200  # a read within the 2 s
    clock.now += READ_CACHE_TTL_S + 0.01
    assert_unauthorized(client.get("/v1/whoami", headers=bearer(bob.key)))
    assert client.get("/v1/whoami", headers=bearer(alice.key)).status_code == 200
    clock.now += 3600  # alice's expires_at: also checked on a cached key
    assert_unauthorized(client.get("/v1/whoami", headers=bearer(alice.key)))
    assert_unauthorized(client.get("/v1/user/account", headers=bearer(alice.key)))


def test_balance_and_account_routes(setup):
    client, keys, alice, _ = setup
    response = client.get("/v1/user/balance", headers=bearer(alice.key))
    assert response.status_code == 200 and response.json() == {"credits": 100.0}
    client.post("/v1/spend", headers=bearer(alice.key))
    assert client.get("/v1/user/balance", headers=bearer(alice.key)).json() == {"credits": 97.5}
    response = client.get("/v1/user/account", headers=bearer(alice.key))
    assert response.status_code == 200
    assert response.json() == {"id": alice.id, "name": "alice", "prefix": alice.key[:11], "rate_limit_per_min": 60,
                               "max_concurrent_jobs": 3, "created_at": 1_700_000_000.0,
                               "expires_at": 1_700_003_600.0}
    assert alice.key not in response.text and alice.webhook_secret not in response.text
    carol = keys.create(name="carol", rate_limit_per_min=5)
    account = client.get("/v1/user/account", headers={"x-api-key": carol.key}).json()
    assert (account["rate_limit_per_min"], account["max_concurrent_jobs"]) == (5, None)


def test_key_never_appears_in_log_records_of_requests(setup, caplog):
    client, _, alice, _ = setup
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    client.get("/v1/user/balance", headers=bearer(alice.key))
    client.get("/v1/whoami", headers=bearer(alice.key + "x"))
    assert any("api_keys" in record.getMessage() for record in caplog.records)  # SQL was captured
    logged = "\n".join(record.getMessage() + repr(record.args) for record in caplog.records)
    assert alice.key not in logged and alice.key[3:] not in logged


def test_openapi_declares_the_security_schemes(setup):
    client, _, _, _ = setup
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "`Authorization: Bearer sk-…` (create a key with `lift3d keys create`)."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                   "description": "The same key in an `x-api-key` header."}}
    balance = spec["paths"]["/v1/user/balance"]["get"]
    assert balance["security"] == [{"bearer": []}, {"apiKey": []}]
    assert balance["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"}
    assert "X-Remaining-Credits" in balance["responses"]["200"]["headers"]
    assert "X-Remaining-Credits" not in balance["responses"]["401"].get("headers", {})
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert client.get("/openapi.json").json() == spec  # building it again changes nothing


def test_auth_disabled_is_the_local_principal(database):
    client = TestClient(build_app(database, None, enabled=False))
    response = client.get("/v1/whoami")
    assert response.status_code == 200 and response.json() == {"key_id": None, "name": "local", "has_secret": False}
    assert "X-Remaining-Credits" not in response.headers
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})
    keys = ApiKeyStore(database)
    client = TestClient(build_app(database, keys, enabled=False))
    response = client.get("/v1/user/balance")
    assert response.status_code == 401 and "auth: false" in response.json()["errors"][0]
    assert LOCAL.key_id is None and not LOCAL.authenticated


def test_principal_outside_the_middleware_fails_closed(setup):
    client, _, alice, _ = setup
    response = client.get("/public/whoami", headers=bearer(alice.key))
    assert response.status_code == 401 and response.json()["name"] == "unauthorized"


def test_a_database_outage_is_a_503_not_a_crash(setup, monkeypatch):
    client, keys, alice, _ = setup

    def down(key):
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(keys, "authenticate", down)
    response = client.get("/v1/whoami", headers=bearer(alice.key))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["name"] == "service_unavailable"


def test_install_auth_needs_a_key_store_when_enabled():
    with pytest.raises(ValueError, match="ApiKeyStore"):
        install_auth(FastAPI(), None, enabled=True)
