"""views-to-3d uploads without Ray: ZIP checks (paths, zip bombs, layout) and the HTTP route over fakes."""

import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient

from lift3d.service.jobs.store import JobStore
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.schemas import BadRequestError
from lift3d.service.jobs.uploads import ViewsZipLimits, check_views_zip, extract_views_zip
from lift3d.errors import InvalidInputError, PayloadTooLargeError
from lift3d.io.storage import LocalStore

TRANSFORMS = json.dumps({"camera_angle_x": 0.7, "frames": []}).encode()


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_transforms_at_the_root_or_in_one_top_level_folder(tmp_path):
    assert check_views_zip(make_zip({"transforms.json": TRANSFORMS, "r_0.png": b"x"})) == ""
    nested = make_zip({"lego/transforms.json": TRANSFORMS, "lego/train/r_0.png": b"x", "__MACOSX/._x": b""})
    assert check_views_zip(nested) == "lego/"
    root = extract_views_zip(nested, tmp_path)
    assert root == tmp_path.resolve() / "lego" and (root / "train" / "r_0.png").read_bytes() == b"x"


@pytest.mark.parametrize("members, error", [
    ({"../evil": b"x", "transforms.json": TRANSFORMS}, BadRequestError),
    ({"a/../../evil": b"x", "transforms.json": TRANSFORMS}, BadRequestError),
    ({"/etc/evil": b"x", "transforms.json": TRANSFORMS}, BadRequestError),
    ({"C:/evil": b"x", "transforms.json": TRANSFORMS}, BadRequestError),
    ({"r_0.png": b"x"}, InvalidInputError),
    ({"a/transforms.json": TRANSFORMS, "b/r_0.png": b"x"}, InvalidInputError),
])
def test_unsafe_paths_and_missing_transforms_are_rejected(members, error):
    with pytest.raises(error):
        check_views_zip(make_zip(members))


def test_size_member_count_and_zip_bombs_are_rejected_before_extraction(tmp_path):
    with pytest.raises(BadRequestError, match="not a valid ZIP"):
        check_views_zip(b"\x89PNG not a zip")
    limits = ViewsZipLimits(max_bytes=10_000, max_uncompressed_bytes=100_000, max_members=3)
    with pytest.raises(PayloadTooLargeError, match="larger than"):
        check_views_zip(make_zip({"transforms.json": TRANSFORMS, "big": bytes(20_000)}), limits)
    bomb = make_zip({"transforms.json": TRANSFORMS, "zeros": bytes(1_000_000)}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000
    with pytest.raises(PayloadTooLargeError, match="expands"):
        extract_views_zip(bomb, tmp_path, limits)
    assert not (tmp_path / "zeros").exists()
    with pytest.raises(PayloadTooLargeError, match="members"):
        check_views_zip(make_zip({"transforms.json": TRANSFORMS, **{f"{i}.png": b"" for i in range(3)}}), limits)


# ------------------------------------------------------------------------------------------------ HTTP, fakes
@pytest.fixture
def api(tmp_path, sqlite_database):
    from lift3d.service.api.app import create_api
    from lift3d.service.jobs.generation import GenerationService

    queued: list[str] = []
    jobs = JobStore(sqlite_database, LocalStore(tmp_path))
    service = GenerationService(jobs, queued.append, views_limits=ViewsZipLimits(max_bytes=50_000))
    return TestClient(create_api(service, ServiceMetrics()), raise_server_exceptions=False), jobs, queued


def test_http_views_submission_stores_the_zip_and_options(api):
    client, jobs, queued = api
    data = make_zip({"scene/transforms.json": TRANSFORMS, "scene/r_0.png": b"x"})
    response = client.post("/v1/generation/views-to-3d", files={"views": ("scene.zip", data)},
                           data={"steps": "30", "seed": "5", "texture": "false", "target_faces": "500"})
    assert response.status_code == 202, response.text
    record = jobs.get(response.json()["id"])
    assert queued == [record.id] and record.kind == "views-to-3d" and record.params.seed == 5
    assert record.reconstruct.steps == 30 and record.reconstruct.texture is False
    assert record.reconstruct.target_faces == 500 and jobs.store.get(record.input_key) == data


@pytest.mark.parametrize("kwargs, code, name", [
    ({"files": {"views": ("v.zip", make_zip({"../evil": b"x", "transforms.json": TRANSFORMS}))}}, 400,
     "bad_request"),
    ({"files": {"views": ("v.png", b"\x89PNG not a zip")}}, 400, "bad_request"),
    ({"json": {"steps": 3}}, 415, "unsupported_media_type"),
    ({"files": {"views": ("v.zip", make_zip({"r_0.png": b"x"}))}}, 422, "invalid_parameters"),
    ({"data": {"steps": "3"}}, 422, "invalid_parameters"),
    ({"files": {"views": ("v.zip", make_zip({"transforms.json": TRANSFORMS}))}, "data": {"steps": "0"}}, 422,
     "invalid_parameters"),
    ({"files": {"views": ("v.zip", make_zip({"transforms.json": TRANSFORMS}))}, "data": {"texture_size": "300"}},
     422, "invalid_parameters"),
    ({"files": {"views": ("v.zip", make_zip({"transforms.json": TRANSFORMS}))}, "data": {"num_views": "4"}}, 422,
     "invalid_parameters"),
    ({"files": {"views": ("v.zip", make_zip({"transforms.json": TRANSFORMS, "big": bytes(60_000)}))}}, 413,
     "payload_too_large"),
])
def test_http_views_errors_use_the_envelope(api, kwargs, code, name):
    client, _, queued = api
    response = client.post("/v1/generation/views-to-3d", **kwargs)
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == name and body["errors"]
    assert queued == []
