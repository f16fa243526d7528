"""``GET /v1/generation/{id}?format=…`` and ``output_format`` (docs/formats.md): a succeeded job holding the GLBs the
pipeline writes is downloaded as each format (media type, file name, readable by usd-core or trimesh), the converted
file is kept beside the GLB and read back on the next download, and a tiny text-to-3D job made in process
(``lift3d playground``'s wiring) comes out as a USDZ that passes every usd-core validator."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
import trimesh
from fastapi.testclient import TestClient

import lift3d.service.jobs.downloads as downloads
from lift3d.io.formats import FORMATS
from lift3d.io.formats.usdz import validate_usdz
from lift3d.io.media_types import GLB, ZIP
from lift3d.params import OUTPUT_FORMATS, GenerationParams
from lift3d.service.config import ServiceConfig
from lift3d.service.jobs.store import JobOutcome, JobRecord
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service
from lift3d.service.state import open_state
from nerf.export import glb_bytes
from nerf.texture import bake_texture, textured_glb_bytes, unwrap


@pytest.fixture(scope="module")
def glbs() -> dict[str, bytes]:
    """``model.glb`` (vertex colours) and ``model_textured.glb`` (xatlas UVs, 64² bake) of a 320-face sphere."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    sphere.visual.vertex_colors = np.tile(np.array([[200, 40, 40, 255]], np.uint8), (len(sphere.vertices), 1))
    baked = bake_texture(unwrap(sphere, size=64), None, size=64)
    return {"model.glb": glb_bytes(sphere),
            "model_textured.glb": textured_glb_bytes(baked.mesh, baked.image, baked.uv)}


@pytest.fixture
def stack(tmp_path):
    """(state, HTTP client, API key) of a service on a local store."""
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db'}", default_rate_limit_per_min=1000)
    state = open_state(config)
    client = TestClient(build_api(config, state, build_service(config, state, lambda job_id: None), ServiceMetrics()))
    yield state, client, state.keys.create(name="a", credits=100)
    state.close()


def succeeded_job(state, key, files: dict[str, bytes], main_key: str = "model.glb", **params) -> JobRecord:
    record = state.jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=1, **params), owner_id=key.id))
    for name, data in files.items():
        state.store.put(record.prefix + name, data)
    state.jobs.begin_attempt(record.id, "w")
    content_type = GLB if main_key == "model.glb" else ZIP
    state.jobs.succeed(record.id, JobOutcome(main_key=main_key, content_type=content_type, artifacts=list(files)),
                       attempt=1)
    return record


def _loads(fmt: str, data: bytes, tmp_path) -> trimesh.Trimesh:
    if fmt == "obj":
        zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path / "obj")
        return trimesh.load(tmp_path / "obj" / "model.obj", force="mesh", process=False)
    return trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")


def test_every_format_downloads_with_its_type_and_name_and_is_kept(stack, glbs, tmp_path, monkeypatch):
    state, client, key = stack
    auth = {"Authorization": f"Bearer {key.key}"}
    record = succeeded_job(state, key, glbs)
    conversions = []
    convert = downloads.convert_glb
    monkeypatch.setattr(downloads, "convert_glb", lambda data, fmt: conversions.append(fmt) or convert(data, fmt))
    sizes = {}
    for fmt in OUTPUT_FORMATS:
        response = client.get(f"/v1/generation/{record.id}", params={"format": fmt}, headers=auth)
        assert response.status_code == 200, response.text
        spec = FORMATS[fmt]
        assert response.headers["content-type"] == spec.media_type
        assert response.headers["content-disposition"] == f'attachment; filename="{record.id}{spec.suffix}"'
        sizes[fmt] = len(response.content)
        if fmt == "usdz":
            assert validate_usdz(response.content) == []
        else:
            mesh = _loads(fmt, response.content, tmp_path)
            assert len(mesh.faces) == 320
            # welded formats: the sphere's 162 vertices; glb and obj keep the textured mesh's seam-split vertices
            assert (len(mesh.vertices) == 162) == (fmt in ("glb", "stl", "ply", "3mf")), (fmt, len(mesh.vertices))
        if fmt != "glb":  # kept beside the GLB, under the job's prefix
            assert state.store.get(record.prefix + spec.artifact) == response.content
    assert conversions == ["usdz", "obj", "stl", "ply", "3mf"]
    again = client.get(f"/v1/generation/{record.id}?format=usdz", headers=auth)
    assert again.content == state.store.get(record.prefix + "model.usdz") and conversions[-1] == "3mf"  # not redone
    assert client.get(f"/v1/generation/{record.id}", headers=auth).content == glbs["model.glb"]  # default unchanged
    assert all(size > 0 for size in sizes.values())


def test_the_jobs_output_format_is_the_default_and_json_stays_json(stack, glbs):
    state, client, key = stack
    auth = {"Authorization": f"Bearer {key.key}"}
    record = succeeded_job(state, key, glbs, output_format="stl")
    plain = client.get(f"/v1/generation/{record.id}", headers=auth)
    assert plain.headers["content-type"] == "model/stl" and plain.content[80:84] == (320).to_bytes(4, "little")
    as_json = client.get(f"/v1/generation/{record.id}", headers={**auth, "Accept": "application/json"})
    assert as_json.status_code == 200 and as_json.json()["content_type"] == GLB
    forced = client.get(f"/v1/generation/{record.id}?format=glb", headers={**auth, "Accept": "application/json"})
    assert forced.headers["content-type"] == GLB and forced.content == glbs["model.glb"]


def test_refusals(stack, glbs):
    state, client, key = stack
    auth = {"Authorization": f"Bearer {key.key}"}
    record = succeeded_job(state, key, glbs)
    fbx = client.get(f"/v1/generation/{record.id}?format=fbx", headers=auth)
    assert fbx.status_code == 422 and "no well-kept open Python FBX writer" in fbx.text
    assert client.get(f"/v1/generation/{record.id}?format=gltf", headers=auth).status_code == 422
    views = succeeded_job(state, key, {"views.zip": b"PK\x05\x06" + bytes(18)}, main_key="views.zip", return_3d=False)
    missing = client.get(f"/v1/generation/{views.id}?format=usdz", headers=auth)
    assert missing.status_code == 404 and missing.json()["name"] == "artifact_not_found"
    assert "views only" in missing.text
    assert client.get(f"/v1/generation/{views.id}", headers=auth).headers["content-type"] == ZIP  # as before
    other = state.keys.create(name="b", credits=1)
    stranger = client.get(f"/v1/generation/{record.id}?format=usdz", headers={"Authorization": f"Bearer {other.key}"})
    assert stranger.status_code == 404 and not state.store.exists(record.prefix + "model.usdz")
    submitted = client.post("/v1/generation/text-to-3d", json={"prompt": "a chair", "output_format": "fbx"},
                            headers=auth)
    assert submitted.status_code == 422 and submitted.json()["errors"][0].startswith("output_format:")


def test_openapi_documents_the_format_and_the_media_types(stack):
    _, client, _ = stack
    schema = client.get("/openapi.json").json()
    get = schema["paths"]["/v1/generation/{id}"]["get"]
    (param,) = [p for p in get["parameters"] if p["name"] == "format"]
    assert param["in"] == "query" and not param["required"] and "docs/formats.md" in param["description"]
    assert param["schema"]["anyOf"][0]["enum"] == list(OUTPUT_FORMATS)
    assert {spec.media_type for spec in FORMATS.values()} <= set(get["responses"]["200"]["content"])
    for body in schema["paths"]["/v1/generation/text-to-3d"]["post"]["requestBody"]["content"].values():
        field = body["schema"]["properties"]["output_format"]
        assert field["enum"] == list(OUTPUT_FORMATS) and field["default"] == "glb"


# ------------------------------------------------------------------------------------------------ a real tiny job
@pytest.mark.slow  # ~20-25 s on 2 shared cores (the SDXL image, TripoSR, the 512² bake); the download path itself is
# covered fast above
def test_a_tiny_text_to_3d_job_comes_out_as_a_valid_usdz(tmp_path):
    """``lift3d playground``'s wiring (API + worker thread, tiny random-weight models on CPU, method fast)."""
    from lift3d.service.local_server import LocalServer

    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), auth=False,
                           database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", default_rate_limit_per_min=1000)
    with LocalServer(config) as server:
        client = TestClient(server.app)
        submitted = client.post("/v1/generation/text-to-3d", json={
            "prompt": "a wooden chair", "method": "fast", "num_inference_steps": 2, "remove_background": False,
            "texture_size": 512, "target_faces": 200, "output_format": "usdz", "seed": 3})
        assert submitted.status_code == 202, submitted.text
        job_id, deadline = submitted.json()["id"], time.monotonic() + 240
        as_json = {"Accept": "application/json"}
        while (status := client.get(f"/v1/generation/{job_id}", headers=as_json)).status_code == 202 \
                and time.monotonic() < deadline:
            time.sleep(1)
        assert status.status_code == 200, status.text
        result = client.get(f"/v1/generation/{job_id}")  # no format: the job's own, usdz
        assert result.headers["content-type"] == "model/vnd.usdz+zip"
        assert validate_usdz(result.content) == []
        assert server.state.store.exists(server.state.jobs.get(job_id).prefix + "model.usdz")
