"""The whole graph on a local Ray (2 CPUs, fake GPUs), through HTTP and through the handle API.

Jobs are submitted together once per module (:func:`jobs`), so that they run concurrently (their SDS steps can
share MultiView batches) and the suite waits for them once. Tests on the cluster are marked ``slow``.
"""

import base64
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from keyed import HTTP, wait_done

from lift3d.errors import INTERNAL_ERROR_MESSAGE
from lift3d.service.jobs.store import JobRecord
from lift3d.service.metrics import parse_exposition
from lift3d.service.schemas import ErrorBody, GenerationAccepted, GenerationRequest, GenerationResult
from lift3d.params import GenerationParams

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
FAST = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 12, "seed": 3}
"""Parameters of every job here (the CLI tests' sizes)."""
TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def jobs(serve_graph):
    """Submit the module's jobs at once; returns {name: job id}."""
    from deployments.queue import JobQueue

    url = serve_graph.url
    ids = {}
    response = HTTP.post(f"{url}/v1/generation/image-to-3d", files={"image": ("dragon.png", DRAGON.read_bytes())},
                          data={k: str(v) for k, v in FAST.items()}, timeout=30)
    assert response.status_code == 202, response.text
    ids["image"] = response.json()["id"]
    # prompt controls (the SDXL replica's image_for_3d) and a turntable video through the graph
    response = HTTP.post(f"{url}/v1/generation/text-to-3d", json={
        "text_prompts": [{"text": "a wooden toy robot", "weight": 1}, {"text": "blurry", "weight": -1}],
        "sampler": "euler_a", "video": True, "video_frames": 8, "video_size": 64, "camera_path": "spiral", **FAST},
        timeout=30)
    assert response.status_code == 202, response.text
    ids["text"] = response.json()["id"]
    image = base64.b64encode(DRAGON.read_bytes()).decode()
    response = HTTP.post(f"{url}/v1/generation/multiview", json={"image": image, **FAST}, timeout=30)
    assert response.status_code == 202, response.text
    ids["multiview"] = response.json()["id"]
    # the feed-forward method: the FeedForward replica's field, meshed on the trainer (no views, no SDS)
    response = HTTP.post(f"{url}/v1/generation/image-to-3d", files={"image": ("dragon.png", DRAGON.read_bytes())},
                          data={**{k: str(v) for k, v in FAST.items()}, "method": "fast"}, timeout=30)
    assert response.status_code == 202, response.text
    ids["fast"] = response.json()["id"]
    # A job whose trainer raises on every attempt: its upload vanished from the store after submission.
    store = serve_graph.jobs
    record = JobRecord.new("image-to-3d", GenerationParams(**FAST), max_attempts=2, owner_id=serve_graph.key_id)
    record = store.create(record.model_copy(update={"input_key": record.prefix + "upload.png"}))
    JobQueue(serve_graph.config.queue).enqueue(record.id)
    ids["broken"] = record.id
    return ids


@pytest.mark.slow
def test_healthz_ready_when_every_deployment_is_up(serve_graph):
    response = HTTP.get(f"{serve_graph.url}/healthz", timeout=30)
    assert response.status_code == 200
    assert set(response.json()["deployments"]) == {"Ingress", "JobConsumer", "NerfTrainer", "TextToImage",
                                                   "BackgroundRemoval", "MultiView", "FeedForward"}


@pytest.mark.slow
def test_image_to_3d_end_to_end_binary_and_json(serve_graph, jobs):
    url, job_id = serve_graph.url, jobs["image"]
    done = wait_done(url, job_id)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "succeeded" and body["finish_reason"] == "SUCCESS" and body["seed"] == FAST["seed"]
    assert body["content_type"] == "model/gltf-binary" and body["random_weights"] is True
    assert {"background_removal", "novel_views", "sds_training", "mesh_export"} <= set(body["timings_s"])
    # cost = Σ busy × GPU fraction × A10G price; the fake GPU fractions make it positive
    assert body["cost_usd"] > 0 and body["gpu_seconds"]["sds_training"] > 0
    names = {a["name"] for a in body["artifacts"]}
    assert {"input.png", "views.png", "model.glb", "metadata.json"} <= names
    assert sum(name.startswith("views/") for name in names) == FAST["num_views"]
    # default: the GLB itself
    binary = HTTP.get(f"{url}/v1/generation/{job_id}", timeout=30)
    assert binary.status_code == 200 and binary.headers["content-type"] == "model/gltf-binary"
    assert binary.content[:4] == b"glTF" and base64.b64decode(body["content"]) == binary.content
    metadata = json.loads((serve_graph.store_dir / "generations" / job_id / "metadata.json").read_text())
    assert metadata["cost"]["usd"] == pytest.approx(body["cost_usd"])
    assert metadata["cost"]["price_per_gpu_hour"] == pytest.approx(1.006)


@pytest.mark.slow
def test_text_to_3d_end_to_end(serve_graph, jobs):
    done = wait_done(serve_graph.url, jobs["text"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert "text_to_image" in body["timings_s"] and body["content_type"] == "model/gltf-binary"
    assert base64.b64decode(body["content"])[:4] == b"glTF"
    video = HTTP.get(f"{serve_graph.url}/v1/generation/{jobs['text']}/artifacts/turntable.mp4", timeout=30)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    from lift3d.io.video import read_mp4_info

    assert read_mp4_info(video.content)[:3] == (8, 64, 64)
    metadata = HTTP.get(f"{serve_graph.url}/v1/generation/{jobs['text']}/artifacts/metadata.json", timeout=30).json()
    assert metadata["params"]["sampler"] == "euler_a" and metadata["video"]["frames"] == 8
    assert body["gpu_seconds"].keys() >= {"text_to_image", "turntable"}


@pytest.mark.slow
def test_image_endpoints_through_the_sdxl_replica(serve_graph):
    url = serve_graph.url
    body = {"text_prompts": [{"text": "a wooden toy robot"}], "steps": 2, "seed": 5, "samples": 2, "height": 64,
            "width": 64, "sampler": "dpmpp_2m"}
    first = HTTP.post(f"{url}/v1/generation/text-to-image", json=body, timeout=120)
    assert first.status_code == 200, first.text
    assert [a["seed"] for a in first.json()["artifacts"]] == [5, 6]
    again = HTTP.post(f"{url}/v1/generation/text-to-image", json={**body, "seed": 6, "samples": 1},
                      headers={"Accept": "image/png"}, timeout=120)
    assert again.content == base64.b64decode(first.json()["artifacts"][1]["base64"])  # same seed, same bytes
    mask = io.BytesIO()
    from PIL import Image

    Image.new("L", (64, 64), 255).save(mask, format="PNG")
    regions = HTTP.post(f"{url}/v1/generation/text-to-image/regions", headers={"Accept": "image/png"}, timeout=120,
                        json={"bg_prompt": "a table", "fg_prompt": ["a cup"], "width": "64", "height": "64",
                              "masks": [base64.b64encode(mask.getvalue()).decode()], "ddim_steps": "2",
                              "bootstrapping": "1", "seed": "3"})
    assert regions.status_code == 200 and Image.open(io.BytesIO(regions.content)).size == (64, 64)
    pose = HTTP.post(f"{url}/v1/generation/text-to-image/pose", timeout=120, json={
        "prompt": "a knight", "image": base64.b64encode(DRAGON.read_bytes()).decode(), "num_inference_steps": 2,
        "width": 64, "height": 64, "seed": 1})
    assert pose.status_code == 200 and pose.headers["content-type"] == "image/jpeg"
    bad = HTTP.post(f"{url}/v1/generation/text-to-image", json={**body, "height": 100}, timeout=30)
    assert bad.status_code == 422 and bad.json()["name"] == "invalid_parameters"


@pytest.mark.slow
def test_fast_job_takes_its_field_from_the_feed_forward_replica(serve_graph, jobs):
    done = wait_done(serve_graph.url, jobs["fast"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "succeeded" and body["content_type"] == "model/gltf-binary"
    assert {"background_removal", "feedforward", "mesh_export"} <= set(body["timings_s"])
    assert not {"novel_views", "sds_training"} & set(body["timings_s"])
    assert body["gpu_seconds"]["feedforward"] > 0  # priced at the FeedForward replica's GPU share
    assert base64.b64decode(body["content"])[:4] == b"glTF"
    metadata = json.loads((serve_graph.store_dir / "generations" / jobs["fast"] / "metadata.json").read_text())
    assert (metadata["method"], metadata["feedforward_model"]) == ("fast", "triposr")
    assert metadata["models"]["feedforward"] == {"source": "tiny", "random_weights": True}


@pytest.mark.slow
def test_stable_fast_3d_answers_a_glb_through_the_graph(serve_graph):
    """The synchronous endpoint: BackgroundRemoval, then the FeedForward replica's forward, marching cubes and
    texture bake; the GLB comes back in the response, charged to the key; bad fields get the envelope."""
    url = serve_graph.url
    image = io.BytesIO()
    from PIL import Image

    Image.open(DRAGON).convert("RGB").save(image, format="PNG")  # no alpha: rembg cuts the object out
    response = HTTP.post(f"{url}/v2beta/3d/stable-fast-3d", files={"image": ("dragon.png", image.getvalue())},
                         data={"texture_resolution": "512", "foreground_ratio": "0.9"}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/gltf-binary"
    import trimesh

    scene = trimesh.load(io.BytesIO(response.content), file_type="glb")
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) > 0 and mesh.visual.uv is not None  # UV-textured, not vertex colours
    assert mesh.visual.material.baseColorTexture.size == (512, 512)
    assert float(response.headers["x-remaining-credits"]) > 0  # the key was charged like any call (auth is on)
    bad = HTTP.post(f"{url}/v2beta/3d/stable-fast-3d", files={"image": ("dragon.png", image.getvalue())},
                    data={"remesh": "quad"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["name"] == "invalid_parameters"
    assert set(bad.json()) == {"id", "name", "errors"}


@pytest.mark.slow
def test_multiview_returns_a_zip_of_views(serve_graph, jobs):
    done = wait_done(serve_graph.url, jobs["multiview"])
    assert done.status_code == 200, done.text
    archive = HTTP.get(f"{serve_graph.url}/v1/generation/{jobs['multiview']}", timeout=30)
    assert archive.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        names = zipped.namelist()
        assert len(names) == FAST["num_views"] and all(n.endswith(".png") for n in names)
        assert zipped.read(names[0])[:4] == b"\x89PNG"
    assert "sds_training" not in done.json()["timings_s"]


@pytest.mark.slow
def test_trainer_that_raises_ends_failed_with_a_reason(serve_graph, jobs):
    done = wait_done(serve_graph.url, jobs["broken"])
    assert done.status_code == 500
    body = done.json()
    assert body["name"] == "internal_error" and body["id"] == jobs["broken"]
    # the reason users get is generic (a vanished upload is no input error of theirs); the details are in the logs
    assert body["errors"] == [f"{INTERNAL_ERROR_MESSAGE} (after 2 attempts)"]
    assert not any(leak in done.text for leak in ("Traceback", "pid=", "ip=", "actor_id", "\\u001b", "upload.png"))
    record = serve_graph.jobs.get(jobs["broken"])
    assert record.status == "failed" and record.attempts == 2


@pytest.mark.slow
def test_handle_api_matches_http(serve_graph, jobs):
    handle = serve_graph.handle
    assert wait_done(serve_graph.url, jobs["image"]).status_code == 200
    via_handle = handle.status.remote(jobs["image"]).result()
    via_http = HTTP.get(f"{serve_graph.url}/v1/generation/{jobs['image']}",
                         headers={"Accept": "application/json"}, timeout=30).json()
    assert isinstance(via_handle, GenerationResult) and via_handle.model_dump() == via_http
    missing = handle.status.remote("f" * 32).result()
    assert isinstance(missing, ErrorBody) and missing.name == "generation_not_found"
    rejected = handle.generate.remote(GenerationRequest(kind="text-to-3d")).result()
    assert isinstance(rejected, ErrorBody) and rejected.name == "invalid_parameters"
    # with the key, the handle call is billed to it and the job is the key's, as over HTTP
    request = GenerationRequest.with_image(DRAGON.read_bytes(), kind="multiview", **FAST)
    accepted = handle.generate.remote(request, api_key=serve_graph.key).result()
    assert isinstance(accepted, GenerationAccepted)
    assert wait_done(serve_graph.url, accepted.id).status_code == 200
    bad_key = handle.status.remote(accepted.id, api_key="sk-not-a-key").result()
    assert isinstance(bad_key, ErrorBody) and bad_key.name == "unauthorized"


@pytest.mark.slow
def test_every_error_code_through_the_proxy(serve_graph, jobs):
    url = serve_graph.url
    cases = [
        (HTTP.post(f"{url}/v1/generation/image-to-3d", content=b"{", headers={"content-type": "application/json"},
                    timeout=30), 400, "bad_request"),
        (HTTP.get(f"{url}/v1/generation/{'0' * 32}", timeout=30), 404, "generation_not_found"),
        (HTTP.post(f"{url}/v1/generation/image-to-3d", content=b"\x89PNG" + b"0" * (28 * 1024 * 1024),
                    headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60), 413, "payload_too_large"),
        (HTTP.post(f"{url}/v1/generation/text-to-3d", json={"prompt": "x", "num_views": 99}, timeout=30), 422,
         "invalid_parameters"),
        (wait_done(url, jobs["broken"]), 500, "internal_error"),
    ]
    for response, code, name in cases:
        assert response.status_code == code, response.text
        body = response.json()
        assert set(body) == {"id", "name", "errors"} and body["name"] == name and body["errors"]


@pytest.mark.slow
def test_metrics_endpoint_shows_cost_histogram_after_a_job(serve_graph, jobs):
    assert wait_done(serve_graph.url, jobs["image"]).status_code == 200
    deadline = time.monotonic() + 60
    families = {}
    while time.monotonic() < deadline:
        families = parse_exposition(HTTP.get(serve_graph.metrics_url, timeout=10).text)
        cost = [s for s in families.get("ray_lift3d_request_cost_usd", []) if s.name.endswith("_count")]
        if cost and sum(s.value for s in cost) >= 1:
            break
        time.sleep(1)
    else:
        pytest.fail(f"no cost histogram in {sorted(k for k in families if 'lift3d' in k)}")
    assert any(s.labels.get("kind") == "image-to-3d" for s in cost)
    assert "ray_lift3d_stage_seconds" in families and "ray_lift3d_requests" in families


@pytest.mark.slow
def test_concurrent_sds_requests_share_one_batch(serve_graph):
    import torch
    from ray import serve

    from lift3d.stages.zero123 import SDSRequest

    multiview = serve.get_deployment_handle("MultiView", "lift3d")
    generator = torch.Generator().manual_seed(0)
    conditions = [multiview.encode_condition.remote(torch.rand(3, 32, 32, generator=generator)).result().value
                  for _ in range(2)]
    requests = [SDSRequest(torch.rand(1, 3, 32, 32, generator=generator), torch.zeros(1), torch.full((1,), 90.0 * i),
                           0, i, 3.0, conditions[i]) for i in range(2)]
    responses = [multiview.guidance.remote(r) for r in requests]
    results = [r.result().value for r in responses]
    assert [r.batch_size for r in results] == [2, 2]
    alone = multiview.guidance.remote(requests[1]).result().value
    assert alone.batch_size == 1
    torch.testing.assert_close(alone.grad_rgb, results[1].grad_rgb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_serve_configs_validate_and_build(name):
    """No cluster: the files `serve deploy` takes are valid, name every deployment, and their args build."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from graph import ServiceConfig, build_app

    root = Path(__file__).resolve().parents[2]
    schema = ServeDeploySchema.model_validate(yaml.safe_load((root / name).read_text()))
    (app,) = schema.applications
    assert app.import_path == "graph:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "JobConsumer", "TextToImage", "BackgroundRemoval",
                                                 "MultiView", "NerfTrainer", "FeedForward"}
    config = ServiceConfig.model_validate(app.args)
    build_app(config.model_copy(update={"queue": config.queue.model_copy(update={"queue_dir": "/tmp/lift3d-test-q"})}))
    gpus = sum(d.ray_actor_options.num_gpus or 0 for d in app.deployments if d.ray_actor_options)
    assert gpus > 0
    from deployments.ingress import FAST_ASSET_TIMEOUT_S

    proxy_timeout = schema.http_options.request_timeout_s
    assert proxy_timeout is None or FAST_ASSET_TIMEOUT_S < proxy_timeout  # the service answers before the proxy cuts


def test_the_fast_asset_call_chains_background_removal_and_the_feed_forward_replica():
    """No cluster: ``RemoteFastAssets`` (the ingress's ``make_asset``) and ``RemoteStages.feedforward`` over stand-in
    handles: what each replica is asked, and the busy seconds of both in the answer."""
    from types import SimpleNamespace

    from deployments.ingress import remote_fast_assets
    from lift3d.io.encoded import EncodedImage
    from lift3d.params.fast3d import FastAssetParams
    from lift3d.pipeline.fast import FAST_INPUT_SIZE, FastAsset
    from lift3d.pipeline.providers import Timed
    from lift3d.pipeline.remote import AssetRequest, FieldRequest, PrepareRequest, RemoteStages
    from lift3d.pipeline.steps import PreparedInput

    calls = []
    prepared = PreparedInput(EncodedImage(DRAGON.read_bytes()), "input_alpha")

    def method(name, answer):
        def remote(*args):
            calls.append((name, *args))
            return SimpleNamespace(result=lambda: answer)
        return SimpleNamespace(remote=remote)

    background = SimpleNamespace(prepare=method("prepare", Timed(prepared, 0.5, 0.0)))
    asset = FastAsset(b"glTF...", {"vertices": 8, "timings_s": {"feedforward": 0.1}})
    feedforward = SimpleNamespace(asset=method("asset", Timed(asset, 2.0, 0.5)),
                                  field=method("field", Timed("a field", 0.25, 0.5)))
    params = FastAssetParams(texture_resolution=512)
    image = EncodedImage(DRAGON.read_bytes())
    made = remote_fast_assets(background, feedforward)(image, params)
    assert calls == [("prepare", PrepareRequest(image, True, FAST_INPUT_SIZE)),
                     ("asset", AssetRequest(prepared, params))]
    assert (made.value.glb, made.busy_s, made.gpu_fraction) == (b"glTF...", 2.5, 0.5)
    assert made.value.metadata["background_removal"] == "input_alpha"
    assert made.value.metadata["timings_s"] == {"feedforward": 0.1, "background_removal": 0.5}
    stages = RemoteStages(None, background, None, feedforward)
    assert stages.feedforward(prepared, 0.85).value == "a field"
    assert calls[-1] == ("field", FieldRequest(prepared, 0.85))
    with pytest.raises(KeyError):
        RemoteStages(None, background, None).feedforward(prepared, 0.85)  # a graph without the fast model


def test_rayservice_runs_the_same_application_as_serve_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    root = Path(__file__).resolve().parents[2]
    service = yaml.safe_load((root / "k8s" / "rayservice.yaml").read_text().split("\n---\n")[0])
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    direct = ServeDeploySchema.model_validate(yaml.safe_load((root / "serve_config.yaml").read_text()))
    (k8s_app,), (app,) = embedded.applications, direct.applications
    assert k8s_app.import_path == app.import_path and k8s_app.args == app.args
    by_name = {d.name: d for d in app.deployments}
    for deployment in k8s_app.deployments:
        assert deployment.ray_actor_options == by_name[deployment.name].ray_actor_options, deployment.name


@pytest.mark.slow
def test_cancel_stops_a_running_job(serve_graph, jobs):
    url = serve_graph.url
    response = HTTP.post(f"{url}/v1/generation/text-to-3d", timeout=30,
                          json={"prompt": "a long job", **FAST, "num_3d_max_steps": 1000})
    job_id = response.json()["id"]
    deadline = time.monotonic() + TIMEOUT_S
    while HTTP.get(f"{url}/v1/generation/{job_id}", timeout=30).json().get("stage") != "sds_training":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert HTTP.delete(f"{url}/v1/generation/{job_id}", timeout=30).status_code == 202
    done = wait_done(url, job_id, timeout_s=60)
    assert done.status_code == 410 and done.json()["name"] == "generation_canceled"
    record = serve_graph.jobs.get(job_id)
    assert record.status == "canceled" and record.progress.step < 1000


# The death of a trainer replica mid-job (and of the ingress, S3, Redis, the whole app): tests/faults/.
