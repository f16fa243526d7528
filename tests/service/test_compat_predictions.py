"""Cog's and Replicate's prediction APIs (lift3d.service.api.compat) driven by the unmodified ``replicate`` client and
plain ``requests``, over real HTTPS, on the same keys, credits, jobs and webhooks as the v1 API. The worker is
played (tests/service/compat_stack.py): seconds per test."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time

import httpx
import pytest
import replicate
import requests
import trimesh
from PIL import Image
from standardwebhooks import Webhook

from lift3d.service.api.compat.common import check_download_signature, sign_download
from lift3d.service.api.compat.predictions import resolve_file
from lift3d.service.housekeeping import deliver_webhooks
from lift3d.service.jobs.generation import WebhookPolicy

from .compat_stack import PlayedStack, png


@pytest.fixture
def stack(tmp_path):
    with PlayedStack(tmp_path) as played:
        yield played


@pytest.fixture
def key(stack):
    return stack.state.keys.create(name="replicate-user", credits=1000)


def client(stack, key) -> replicate.Client:
    return replicate.Client(api_token=key.key, base_url=stack.url,
                            transport=httpx.HTTPTransport(verify=stack.ssl_context))


def bearer(key) -> dict:
    return {"Authorization": f"Bearer {key.key}"}


# ------------------------------------------------------------------------------------------------ Replicate
def test_replicate_run_returns_the_glb_trimesh_loads(stack, key, tmp_path):
    image = tmp_path / "robot.png"
    image.write_bytes(png(48))
    with image.open("rb") as handle:
        output = client(stack, key).run("lift3d/image-to-3d", input={"image": handle, "num_3d_max_steps": 12,
                                                                     "num_views": 4, "seed": 5})
    assert isinstance(output, replicate.helpers.FileOutput)
    mesh = trimesh.load(io.BytesIO(output.read()), file_type="glb", force="mesh")
    assert mesh.bounds.ravel().tolist() == pytest.approx([-0.5, -0.25, -0.125, 0.5, 0.25, 0.125])
    # the Cog names landed on the job's parameters, and the job was paid for with the key's credits
    job = stack.state.jobs.get(stack.ran[-1])
    assert (job.kind, job.params.num_3d_max_steps, job.params.num_views, job.params.seed) == ("image-to-3d", 12, 4, 5)
    assert stack.state.store.get(job.input_key) == png(48)
    assert stack.state.keys.balance(key.id) == pytest.approx(1000 - 0.05 / stack.config.usd_per_credit)  # settled
    # the output URL is signed, short-lived and needs no key; a changed name or a late use is refused
    url = httpx.URL(str(output))
    assert url.path == f"/download/{job.id}/model.glb"
    expires = int(url.params["expires"])
    assert 0 < expires - time.time() <= stack.config.url_expires_s
    assert httpx.get(str(url), verify=stack.ssl_context).content[:4] == b"glTF"
    forged = str(url).replace("model.glb", "views/000_az000_el0.png")
    assert httpx.get(forged, verify=stack.ssl_context).status_code == 403


def test_create_wait_cancel_and_the_prediction_object(stack, key):
    replicate_client = client(stack, key)
    stack.hold.set()  # jobs stay queued
    prediction = replicate_client.models.predictions.create(model="lift3d/text-to-3d",
                                                            input={"prompt": "a wooden robot"})
    assert prediction.status == "starting" and prediction.model == "lift3d/text-to-3d"
    assert prediction.urls["get"] == f"{stack.url}/v1/predictions/{prediction.id}"
    assert prediction.urls["cancel"].endswith(f"/v1/predictions/{prediction.id}/cancel")
    assert prediction.urls["stream"].endswith(f"/v1/generation/{prediction.id}/events")
    prediction.cancel()
    assert prediction.status == "canceled" and stack.state.jobs.get(prediction.id).status == "canceled"
    assert stack.state.keys.balance(key.id) == pytest.approx(1000)  # refunded

    second = replicate_client.models.predictions.create(model="lift3d/multiview",
                                                        input={"prompt": "a robot", "num_views": 4})
    attempt = stack.state.jobs.begin_attempt(second.id, "played").attempts
    stack.state.jobs.heartbeat(second.id, attempt, stage="novel_views", progress={"step": 1, "total": 3})
    second.reload()
    assert second.status == "processing" and "stage: novel_views" in second.logs
    assert second.progress.current == 1 and second.progress.total == 3  # the client parses the logs' bar
    stack.state.jobs.requeue(second.id, attempt=attempt)
    stack.hold.clear()
    second.wait()
    assert second.status == "succeeded" and second.error is None
    assert [httpx.URL(u).path.rsplit("/", 1)[1] for u in second.output] == \
        ["000_az000_el0.png", "001_az090_el0.png", "002_az180_el0.png", "003_az270_el0.png"]
    assert second.metrics["predict_time"] > 0 and second.completed_at.endswith("Z")
    assert second.input == {"prompt": "a robot", "num_views": 4, "return_3d": False, "seed": second.input["seed"]}
    assert Image.open(io.BytesIO(httpx.get(second.output[0], verify=stack.ssl_context).content)).size == (16, 16)


def test_webhook_with_a_completed_filter_arrives_once_and_verifies(stack, key):
    received: list[tuple[dict, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        prediction = client(stack, key).models.predictions.create(
            model="lift3d/image-to-3d", input={"image": "data:image/png;base64," + base64.b64encode(png()).decode()},
            webhook=hook, webhook_events_filter=["completed"])
        prediction.wait()
        for _ in range(3):  # the consumer's delivery loop, played
            deliver_webhooks(stack.state, stack.config)
    finally:
        server.shutdown()
    assert len(received) == 1
    headers, body = received[0]
    payload = Webhook(key.webhook_secret).verify(body, headers)
    assert payload["type"] == "generation.completed" and payload["data"]["id"] == prediction.id
    assert payload["data"]["status"] == "succeeded"


def test_text_to_image_answers_at_once_with_data_uris(stack, key):
    output = client(stack, key).run("lift3d/text-to-image", input={"prompt": "a red cube", "width": 128,
                                                                   "height": 64, "num_outputs": 2, "seed": 9})
    images = [Image.open(io.BytesIO(item.read())) for item in output]
    assert [image.size for image in images] == [(128, 64), (128, 64)]


def test_errors_in_replicates_shape(stack, key):
    replicate_client = client(stack, key)
    with pytest.raises(replicate.exceptions.ReplicateError) as unknown:
        replicate_client.models.predictions.create(model="lift3d/nope", input={})
    assert unknown.value.status == 404 and "lift3d/image-to-3d" in unknown.value.detail
    with pytest.raises(replicate.exceptions.ReplicateError) as invalid:  # the v1 parameters' own validation
        replicate_client.models.predictions.create(model="lift3d/text-to-3d",
                                                   input={"prompt": "x", "num_views": 0, "colour": "red"})
    assert invalid.value.status == 422
    assert "num_views" in invalid.value.detail and "colour" in invalid.value.detail
    with pytest.raises(replicate.exceptions.ReplicateError) as missing:
        replicate_client.predictions.get("0" * 32)
    assert missing.value.status == 404
    other = stack.state.keys.create(name="other", credits=10)
    mine = replicate_client.models.predictions.create(model="lift3d/text-to-3d", input={"prompt": "x"})
    with pytest.raises(replicate.exceptions.ReplicateError):  # another key's prediction does not exist
        client(stack, other).predictions.get(mine.id)
    assert httpx.get(f"{stack.url}/v1/predictions/{mine.id}", verify=stack.ssl_context).status_code == 401
    poor = stack.state.keys.create(name="poor", credits=0.001)
    with pytest.raises(replicate.exceptions.ReplicateError) as broke:
        client(stack, poor).models.predictions.create(model="lift3d/text-to-3d", input={"prompt": "x"})
    assert broke.value.status == 402


# ------------------------------------------------------------------------------------------------ Cog
def test_cog_synchronous_prediction_returns_the_views(stack, key):
    image = "data:image/png;base64," + base64.b64encode(png(40)).decode()
    response = requests.post(stack.url + "/predictions", json={"input": {"image": image, "return_3d": False,
                                                                         "num_views": 4}},
                             headers=bearer(key), verify=str(stack.cert), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and len(body["output"]) == 4
    for uri in body["output"]:
        assert uri.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).size == (16, 16)
    assert stack.state.jobs.get(body["id"]).params.return_3d is False


def test_cog_async_put_is_idempotent_and_cancels(stack, key):
    stack.hold.set()
    async_headers = {**bearer(key), "Prefer": "respond-async"}
    put = lambda: requests.put(stack.url + "/predictions/order-42", json={"input": {"prompt": "a robot"}},  # noqa: E731
                               headers=async_headers, verify=str(stack.cert), timeout=30)
    first, again = put(), put()
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] == "order-42" and first.json()["status"] == "starting"
    assert stack.queued.qsize() <= 1 and stack.state.jobs.count_active() == 1  # one job
    cancel = requests.post(stack.url + "/predictions/order-42/cancel", headers=bearer(key), verify=str(stack.cert))
    assert cancel.status_code == 200 and cancel.json() == {}
    assert stack.state.jobs.count_active() == 0
    unknown = requests.post(stack.url + "/predictions/nope/cancel", headers=bearer(key), verify=str(stack.cert))
    assert unknown.status_code == 404
    # the same id of another key is another prediction
    other = stack.state.keys.create(name="other", credits=1000)
    assert requests.post(stack.url + "/predictions/order-42/cancel", headers=bearer(other),
                         verify=str(stack.cert)).status_code == 404


def test_concurrent_cog_puts_with_one_id_start_one_job(stack, key):
    """Eight PUTs of one prediction id at once: one job, every answer names the id (the id → job binding is a row
    of the Idempotency-Key table, claimed by one request). Then the same id under another key is its own job."""
    from concurrent.futures import ThreadPoolExecutor

    stack.hold.set()
    headers = {**bearer(key), "Prefer": "respond-async"}

    def put(owner_headers):
        return requests.put(stack.url + "/predictions/race-7", json={"input": {"prompt": "a robot"}},
                            headers=owner_headers, verify=str(stack.cert), timeout=60)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(put, [headers] * 8))
    assert [a.status_code for a in answers] == [202] * 8
    assert {a.json()["id"] for a in answers} == {"race-7"}
    assert stack.state.jobs.count_active() == 1
    other = stack.state.keys.create(name="other-racer", credits=1000)
    assert put({**bearer(other), "Prefer": "respond-async"}).status_code == 202
    assert stack.state.jobs.count_active() == 2


def test_cog_errors_and_health(stack, key):
    invalid = requests.post(stack.url + "/predictions", json={"input": {"prompt": "x", "num_views": 99}},
                            headers=bearer(key), verify=str(stack.cert))
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "input", "num_views"]
    no_key = requests.post(stack.url + "/predictions", json={"input": {"prompt": "x"}}, verify=str(stack.cert))
    assert no_key.status_code == 401
    health = requests.get(stack.url + "/health-check", verify=str(stack.cert))
    assert health.status_code == 200 and health.json()["status"] == "READY"


# ------------------------------------------------------------------------------------------------ units
def test_file_urls_are_fetched_under_the_webhook_policy():
    import asyncio

    from lift3d.errors import InvalidInputError

    for url in ("http://127.0.0.1:9/x.png", "http://169.254.169.254/latest/meta-data", "file:///etc/passwd"):
        with pytest.raises(InvalidInputError):
            asyncio.run(resolve_file(url, "input.image", 1 << 20, WebhookPolicy()))
    assert asyncio.run(resolve_file("data:image/png;base64," + base64.b64encode(b"abc").decode(), "f", 10)) == b"abc"
    with pytest.raises(InvalidInputError, match="base64"):
        asyncio.run(resolve_file("data:text/plain,abc", "f", 10))


def test_signatures_bind_job_name_expiry_and_secret():
    from lift3d.service.api.compat.common import InvalidSignature

    signature = sign_download("whsec_a", "j" * 32, "model.glb", 2000)
    check_download_signature("whsec_a", "j" * 32, "model.glb", 2000, signature, now=1999)
    for args in (("whsec_b", "j" * 32, "model.glb", 2000), ("whsec_a", "k" * 32, "model.glb", 2000),
                 ("whsec_a", "j" * 32, "input.png", 2000), ("whsec_a", "j" * 32, "model.glb", 2001)):
        with pytest.raises(InvalidSignature):
            check_download_signature(*args, signature, now=1999)
    with pytest.raises(InvalidSignature, match="expired"):
        check_download_signature("whsec_a", "j" * 32, "model.glb", 2000, signature, now=2001)

