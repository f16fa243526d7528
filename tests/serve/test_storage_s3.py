"""The S3 artifact store against a real S3-protocol server (moto's ThreadedMotoServer on 127.0.0.1) over HTTP."""

import urllib.request

import pytest
from support.s3 import AWS_TEST_ENV

from lift3d.service.jobs.store import JobOutcome, JobRecord, JobStore
from lift3d.io.artifacts import ArtifactWriter
from lift3d.params import GenerationParams
from lift3d.io.storage import ArtifactStore, LocalStore, S3Store, StoredObjectNotFound, make_store


@pytest.fixture(scope="module")
def endpoint(s3_server) -> str:
    return s3_server.url


@pytest.fixture
def s3_env(monkeypatch):
    # Credentials through boto3's standard chain (environment variables here).
    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store(endpoint, s3_env, request):
    return make_store(f"s3://lift3d-test/{request.node.name}?endpoint_url={endpoint}&create_bucket=true")


def test_round_trip_list_exists_and_missing(store):
    assert isinstance(store, S3Store) and isinstance(store, ArtifactStore)
    store.put("generations/a/model.glb", b"glb", "model/gltf-binary")
    store.put("generations/a/views/000.png", b"png", "image/png")
    store.put("generations/b/job.json", b"{}", "application/json")
    assert store.get("generations/a/model.glb") == b"glb"
    assert store.exists("generations/a/model.glb") and not store.exists("generations/a/nothing")
    assert store.list("generations/a/") == ["generations/a/model.glb", "generations/a/views/000.png"]
    assert store.list("generations/") == ["generations/a/model.glb", "generations/a/views/000.png",
                                          "generations/b/job.json"]
    store.put("generations/a/model.glb", b"new")
    assert store.get("generations/a/model.glb") == b"new"
    with pytest.raises(StoredObjectNotFound):
        store.get("generations/missing")
    with pytest.raises(ValueError):
        store.put("../escape", b"x")


def test_prefix_keeps_stores_apart(endpoint, s3_env):
    one = make_store(f"s3://lift3d-test/one?endpoint_url={endpoint}&create_bucket=true")
    two = make_store(f"s3://lift3d-test/two?endpoint_url={endpoint}")
    one.put("generations/x/job.json", b"1")
    assert two.list("generations/") == [] and not two.exists("generations/x/job.json")
    raw = one.client.get_object(Bucket="lift3d-test", Key="one/generations/x/job.json")
    assert raw["Body"].read() == b"1"


def test_get_file_streams_an_object_into_a_file(store, tmp_path):
    """S3Store.get_file (boto3's managed download; issue 23: the worker's views upload) and its missing-key error."""
    import os

    data = os.urandom(9 * 1024 * 1024 + 3)  # over boto3's 8 MiB multipart threshold: ranged parts
    store.put("generations/a/upload.zip", data, "application/zip")
    with open(tmp_path / "copy", "w+b") as file:
        store.get_file("generations/a/upload.zip", file)
    assert (tmp_path / "copy").read_bytes() == data
    with open(tmp_path / "none", "wb") as file, pytest.raises(StoredObjectNotFound):
        store.get_file("generations/missing", file)


def test_presigned_url_downloads_over_http(store):
    store.put("generations/a/model.glb", b"glTF binary", "model/gltf-binary")
    url = store.url("generations/a/model.glb", expires_s=60)
    assert "X-Amz-Signature" in url and url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"glTF binary"
        assert response.headers["Content-Type"] == "model/gltf-binary"


def test_job_records_and_artifacts_on_s3(store, sqlite_database):
    jobs = JobStore(sqlite_database, store)
    record = jobs.create(JobRecord.new("image-to-3d", GenerationParams(seed=5)))
    jobs.begin_attempt(record.id, "w1")
    writer = ArtifactWriter(store, record.prefix)
    writer.metadata({"seed": 5})
    jobs.succeed(record.id, JobOutcome(main_key="metadata.json", content_type="application/json",
                                       artifacts=["metadata.json"]))
    assert JobStore(sqlite_database, store).get(record.id).status == "succeeded"  # any replica can answer
    assert store.exists(f"generations/{record.id}/metadata.json")
    jobs.clock = lambda: 10**10  # past result_ttl_s: the sweeper deletes the artifacts through S3
    assert jobs.expire_due() == [record.id] and not store.exists(f"generations/{record.id}/metadata.json")
    assert jobs.active_ids() == []


def test_make_store_parses_urls(tmp_path, endpoint, s3_env):
    assert isinstance(make_store(str(tmp_path)), LocalStore)
    assert make_store(f"file://{tmp_path}").root == tmp_path.resolve()
    s3 = make_store(f"s3://bucket/deep/prefix/?endpoint_url={endpoint}&region=eu-west-1")
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "deep/prefix", endpoint)
    for bad in ("", "s3:///nobucket", "gs://bucket", "s3://bucket?colour=blue"):
        with pytest.raises(ValueError):
            make_store(bad)
