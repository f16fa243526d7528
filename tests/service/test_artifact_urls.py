"""One rule for artifact URLs (:mod:`lift3d.service.jobs.artifacts`) behind every place that hands one out: the status
result (``GET /v1/generation/{id}``), the artifact listing (``GET /v1/generation/{id}/artifacts``) and the
``generation.completed`` webhook. A local store gives API paths with the name percent-encoded; an S3 store (moto's
in-process S3) gives presigned URLs valid for ``url_expires_s``."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from lift3d.io.media_types import GLB
from lift3d.params import GenerationParams
from lift3d.service.config import ServiceConfig
from lift3d.service.db.models import WebhookDelivery
from lift3d.service.jobs.artifacts import ArtifactUrls, artifact_path
from lift3d.service.jobs.store import JobOutcome, JobRecord
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service
from lift3d.service.state import open_state

NAME = "views/000 az0#1.png"
"""An artifact name that needs quoting in a URL: a space and a ``#`` (which would end the path)."""
QUOTED = "views/000%20az0%231.png"
BUCKET, PREFIX = "lift3d-test", "pre"


@pytest.fixture(params=["local", "s3"])
def stack(request, tmp_path, monkeypatch):
    """(store kind, state, HTTP client, API key) of a service with url_expires_s=60."""
    if request.param == "s3":
        from moto import mock_aws

        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        mock = mock_aws()
        mock.start()
        request.addfinalizer(mock.stop)
        store_url = f"s3://{BUCKET}/{PREFIX}?create_bucket=true"
    else:
        store_url = str(tmp_path / "store")
    config = ServiceConfig(preset="tiny", store_url=store_url, database_url=f"sqlite:///{tmp_path / 'db'}",
                           url_expires_s=60, default_rate_limit_per_min=1000)
    state = open_state(config)
    client = TestClient(build_api(config, state, build_service(config, state, lambda job_id: None), ServiceMetrics()))
    key = state.keys.create(name="a", credits=100)
    yield request.param, state, client, key
    state.close()


def succeeded_job(state, key) -> JobRecord:
    record = state.jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=1), owner_id=key.id,
                                             webhook_url="https://hooks.example.com/lift3d"))
    for name in ("model.glb", NAME):
        state.store.put(record.prefix + name, name.encode())
    state.jobs.begin_attempt(record.id, "w")
    state.jobs.succeed(record.id, JobOutcome(main_key="model.glb", content_type=GLB, artifacts=["model.glb", NAME]),
                       attempt=1)
    return record


def check_url(kind: str, job_id: str, url: str) -> None:
    if kind == "local":
        assert url == f"/v1/generation/{job_id}/artifacts/{QUOTED}"
    else:
        base, _, query = url.partition("?")
        assert base == f"https://{BUCKET}.s3.amazonaws.com/{PREFIX}/generations/{job_id}/{QUOTED}"
        assert "X-Amz-Expires=60" in query.split("&") and "X-Amz-Signature=" in query


def test_status_listing_and_webhook_give_one_url(stack):
    kind, state, client, key = stack
    auth = {"Authorization": f"Bearer {key.key}"}
    record = succeeded_job(state, key)

    status = client.get(f"/v1/generation/{record.id}", headers={**auth, "Accept": "application/json"})
    assert status.status_code == 200, status.text
    listing = client.get(f"/v1/generation/{record.id}/artifacts", headers=auth)
    assert listing.status_code == 200, listing.text
    with state.database.sessions() as session:
        payloads = [json.loads(p) for p in session.execute(select(WebhookDelivery.payload).where(
            WebhookDelivery.event_type == "generation.completed")).scalars()]
    assert len(payloads) == 1

    for artifacts in (status.json()["artifacts"], listing.json()["artifacts"], payloads[0]["data"]["artifacts"]):
        urls = {a["name"]: a["url"] for a in artifacts}
        assert set(urls) == {"model.glb", NAME}
        check_url(kind, record.id, urls[NAME])
    if kind == "local":  # the quoted path serves the artifact
        served = client.get(f"/v1/generation/{record.id}/artifacts/{QUOTED}", headers=auth)
        assert served.status_code == 200 and served.content == NAME.encode()


def test_the_rule_without_a_store_and_with_a_server_path():
    class ServerPaths:
        def url(self, key: str, expires_s: int = 3600) -> str:
            return f"file:///srv/lift3d/{key}"

    job_id = "a" * 32
    assert artifact_path(job_id, NAME) == f"/v1/generation/{job_id}/artifacts/{QUOTED}"
    assert ArtifactUrls()(job_id, NAME) == artifact_path(job_id, NAME)
    assert ArtifactUrls(ServerPaths())(job_id, "model.glb") == f"/v1/generation/{job_id}/artifacts/model.glb"
