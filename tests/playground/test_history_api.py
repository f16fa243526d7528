"""The listings the playground reads: a key's recent generations, and a job's artifacts while it runs (the
prepared input and the views as they are written) and after."""

import pytest
from fastapi.testclient import TestClient

from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.generation import is_progressive_artifact
from lift3d.service.jobs.store import JobOutcome
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service
from lift3d.service.state import open_state


@pytest.fixture
def stack(tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=f"sqlite:///{tmp_path / 'db'}",
                           default_rate_limit_per_min=1000, default_max_concurrent_jobs=10)
    state = open_state(config)
    client = TestClient(build_api(config, state, build_service(config, state, lambda j: None), ServiceMetrics()))
    yield state, client
    state.close()


def test_recent_generations_are_the_callers_newest_first(stack):
    state, client = stack
    alice, bob = state.keys.create(name="a", credits=100), state.keys.create(name="b", credits=100)
    ids = [client.post("/v1/generation/text-to-3d", json={"prompt": f"robot {i}", "seed": i},
                       headers={"Authorization": f"Bearer {alice.key}"}).json()["id"] for i in range(3)]
    client.post("/v1/generation/text-to-3d", json={"prompt": "bob's"}, headers={"Authorization": f"Bearer {bob.key}"})
    listed = client.get("/v1/generations?limit=2", headers={"Authorization": f"Bearer {alice.key}"}).json()["results"]
    assert [g["id"] for g in listed] == ids[::-1][:2]
    assert listed[0] | {"created_at": 0} == {"id": ids[2], "kind": "text-to-3d", "status": "queued", "stage": "queued",
                                             "prompt": "robot 2", "seed": 2, "created_at": 0, "finished_at": None}
    assert client.get("/v1/generations").status_code == 401
    assert client.get("/v1/generations?limit=0", headers={"Authorization": f"Bearer {alice.key}"}).status_code == 422


def test_a_running_jobs_progress_artifacts_and_nothing_else(stack):
    state, client = stack
    key = state.keys.create(name="a", credits=100)
    auth = {"Authorization": f"Bearer {key.key}"}
    job_id = client.post("/v1/generation/text-to-3d", json={"prompt": "a robot"}, headers=auth).json()["id"]
    record = state.jobs.get(job_id)
    state.jobs.begin_attempt(job_id, "w")
    for name in ("input.png", "views/000_az000_el0.png", "model.glb", "metadata.json"):
        state.store.put(record.prefix + name, name.encode())
    listed = client.get(f"/v1/generation/{job_id}/artifacts", headers=auth).json()["artifacts"]
    assert [a["name"] for a in listed] == ["input.png", "views/000_az000_el0.png"]  # not the unfinished GLB
    assert client.get(f"/v1/generation/{job_id}/artifacts/input.png", headers=auth).content == b"input.png"
    assert client.get(f"/v1/generation/{job_id}/artifacts/model.glb", headers=auth).status_code == 404
    other = state.keys.create(name="b", credits=1)
    assert client.get(f"/v1/generation/{job_id}/artifacts",
                      headers={"Authorization": f"Bearer {other.key}"}).status_code == 404
    state.jobs.succeed(job_id, JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                          artifacts=["input.png", "model.glb"]), attempt=1)
    listed = client.get(f"/v1/generation/{job_id}/artifacts", headers=auth).json()["artifacts"]
    assert [a["name"] for a in listed] == ["input.png", "model.glb"]
    assert listed[1]["url"] == f"/v1/generation/{job_id}/artifacts/model.glb"


@pytest.mark.parametrize("name, expected", [
    ("input.png", True), ("views/003_az270_el0.png", True), ("views.png", False), ("model.glb", False),
    ("views/../upload.png", False), ("upload.png", False), ("views/003_az270_el0.png/x", False),
])
def test_which_artifacts_a_running_job_shows(name, expected):
    assert is_progressive_artifact(name) is expected


def test_the_page_is_served_with_a_strict_policy(stack):
    _, client = stack
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="viewer"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    script = client.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript") and "openapi.json" in script.text
    assert client.get("/static/vendor/three/VERSION").text.strip() == "0.187.0"
    assert client.get("/static/../lift3d.db").status_code == 404
