"""`lift3d remote generate` against a small fake lift3d server (FastAPI + the real event-stream route, served by
uvicorn on 127.0.0.1): submitted fields, downloaded bytes, reconnects, and the exit code and one error line of each
failure."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from support import free_port, serve_in_thread

from lift3d.cli import main
from lift3d.cli.remote import RemoteClient, RemoteError, parse_sse
from lift3d.params import GenerationParams
from lift3d.service.api.routes.events import add_event_routes
from lift3d.service.jobs.store import JobError, JobNotFound, JobOutcome, JobRecord
from lift3d.service.schemas import Progress

ROOT = Path(__file__).resolve().parents[1]
DRAGON = ROOT / "examples" / "dragon2_rgba.png"
FILES = {"model.glb": b"glTF\x02\x00\x00\x00fake-binary-" + bytes(range(256)),
         "views/000_az000_el0.png": b"\x89PNG\r\n\x1a\nfake-view"}


def envelope(status: int, name: str, *errors: str, **headers: str) -> JSONResponse:
    return JSONResponse({"id": uuid.uuid4().hex, "name": name, "errors": list(errors)}, status_code=status,
                        headers=headers)


class FakeServer:
    """Jobs whose records advance one state per read: queued → novel_views 1..4/4 → sds_training 1..3/3 → the end
    (``succeeded`` with FILES, or ``failed`` for prompts containing "fail")."""

    def __init__(self) -> None:
        self.jobs: dict[str, list[JobRecord]] = {}
        self.reads: dict[str, int] = {}
        self.submissions: list[dict] = []

    def lifecycle(self, job_id: str, fail: bool) -> list[JobRecord]:
        queued = JobRecord.new("image-to-3d", GenerationParams(seed=3), job_id=job_id, now=500.0, owner_id="key_a")
        states, t = [queued], 500.0
        for stage, total in (("novel_views", 4), ("sds_training", 3)):
            for step in range(1, total + 1):
                t += 1
                states.append(queued.model_copy(update=dict(status="running", stage=stage, updated_at=t,
                                                            progress=Progress(step=step, total=total))))
        end = dict(status="failed", error=JobError(name="internal_error", message="the NeRF diverged")) if fail \
            else dict(status="succeeded", outcome=JobOutcome(main_key="model.glb", content_type="model/gltf-binary",
                                                             artifacts=list(FILES), cost_usd=0.0021))
        states.append(queued.model_copy(update=dict(stage=None, updated_at=t + 1, **end)))
        return states

    def get(self, job_id: str, owner_id: str | None) -> JobRecord:
        if job_id not in self.jobs or owner_id != "key_a":
            raise JobNotFound(job_id)
        states = self.jobs[job_id]
        self.reads[job_id] = self.reads.get(job_id, -1) + 1
        return states[min(self.reads[job_id], len(states) - 1)]

    def app(self) -> FastAPI:
        api = FastAPI()

        def caller(authorization: str = Header("")) -> str:
            return "key_a" if authorization == "Bearer sk-good" else ""

        async def submit(request: Request, kind: str) -> Response:
            auth = request.headers.get("authorization", "")
            if auth == "Bearer sk-broke":
                return envelope(402, "insufficient_credits", "this request costs 14.5 credits; the balance is 2.0")
            if auth == "Bearer sk-busy":
                return envelope(429, "rate_limited", "more than 60 requests a minute", **{"Retry-After": "7"})
            if auth != "Bearer sk-good":
                return envelope(401, "unauthorized", "missing or invalid API key")
            if request.headers["content-type"].startswith("multipart/"):
                form = await request.form()
                fields = {k: v for k, v in form.items() if isinstance(v, str)}
                image = await form["image"].read()
            else:
                fields, image = await request.json(), None
            self.submissions.append({"kind": kind, "fields": fields, "image": image})
            if "reject" in str(fields.get("prompt")):
                return envelope(422, "invalid_parameters", "prompt: must not say reject")
            job_id = uuid.uuid4().hex
            self.jobs[job_id] = self.lifecycle(job_id, fail="fail" in str(fields.get("prompt")))
            return JSONResponse({"id": job_id}, status_code=202)

        @api.post("/v1/generation/image-to-3d")
        async def image_to_3d(request: Request) -> Response:
            return await submit(request, "image-to-3d")

        @api.post("/v1/generation/text-to-3d")
        async def text_to_3d(request: Request) -> Response:
            return await submit(request, "text-to-3d")

        @api.get("/v1/generation/{id}/artifacts/{name:path}")
        async def artifact(id: str, name: str, authorization: str = Header("")) -> Response:
            if authorization != "Bearer sk-good" or id not in self.jobs:
                return envelope(404, "generation_not_found", "no such generation")
            return Response(FILES[name], media_type="application/octet-stream")

        add_event_routes(api, self.get, caller=caller, poll_interval_s=0.005, progress_interval_s=0.0)
        return api


@pytest.fixture
def fake():
    server = FakeServer()
    with serve_in_thread(server.app()) as url:
        server.url = url
        yield server


def run(capsys, monkeypatch, key: str | None, *args: str) -> tuple[int, list[str]]:
    if key is None:
        monkeypatch.delenv("LIFT3D_API_KEY", raising=False)
    else:
        monkeypatch.setenv("LIFT3D_API_KEY", key)
    code = main(["remote", "generate", *args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_image_generation_sends_the_given_flags_and_downloads_every_artifact(fake, capsys, monkeypatch, tmp_path):
    code, err = run(capsys, monkeypatch, "sk-good", "--server", fake.url, "--image", str(DRAGON), "--out",
                    str(tmp_path / "out"), "--seed", "3", "--num-views", "4", "--no-texture")
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted(FILES)
    for name, data in FILES.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    [submission] = fake.submissions
    assert submission["kind"] == "image-to-3d"
    assert submission["fields"] == {"seed": "3", "num_views": "4", "texture": "false"}  # only the flags given
    assert submission["image"] == DRAGON.read_bytes()
    assert any("done" in line and "seed=3" in line for line in err)


def test_prompt_generation_posts_json_with_typed_fields(fake, capsys, monkeypatch, tmp_path):
    code, err = run(capsys, monkeypatch, "sk-good", "--server", fake.url + "/", "--prompt", "a wooden robot",
                    "--out", str(tmp_path), "--views-only", "--guidance-scale", "5")
    assert code == 0, err
    [submission] = fake.submissions
    assert submission == {"kind": "text-to-3d", "image": None,
                          "fields": {"prompt": "a wooden robot", "guidance_scale": 5.0, "return_3d": False}}
    assert (tmp_path / "model.glb").read_bytes() == FILES["model.glb"]


@pytest.mark.parametrize("key, code, line", [
    (None, 1, "lift3d: error: LIFT3D_API_KEY is not set: export the key that `lift3d keys create` printed"),
    ("sk-wrong", 1, "lift3d: error: HTTP 401 unauthorized: missing or invalid API key"),
    ("sk-broke", 1, "lift3d: error: HTTP 402 insufficient_credits: this request costs 14.5 credits; the balance "
                    "is 2.0"),
    ("sk-busy", 1, "lift3d: error: HTTP 429 rate_limited: more than 60 requests a minute (retry after 7 s)"),
])
def test_refusals_print_one_line_and_exit_1(fake, capsys, monkeypatch, tmp_path, key, code, line):
    assert run(capsys, monkeypatch, key, "--server", fake.url, "--prompt", "a robot", "--out", str(tmp_path)) == (
        code, [line])
    assert not any(tmp_path.iterdir())


def test_rejected_input_exits_2(fake, capsys, monkeypatch, tmp_path):
    assert run(capsys, monkeypatch, "sk-good", "--server", fake.url, "--prompt", "reject me", "--out",
               str(tmp_path)) == (2, ["lift3d: error: HTTP 422 invalid_parameters: prompt: must not say reject"])
    # checked locally before anything is sent, with the messages of `lift3d generate`
    assert run(capsys, monkeypatch, "sk-good", "--server", fake.url, "--prompt", "a robot", "--num-views", "40",
               "--out", str(tmp_path))[0] == 2
    assert run(capsys, monkeypatch, "sk-good", "--server", fake.url, "--out", str(tmp_path)) == (
        2, ["lift3d: error: give exactly one of --image or --prompt"])
    assert len(fake.submissions) == 1


def test_a_failed_job_exits_1_with_its_reason(fake, capsys, monkeypatch, tmp_path):
    code, err = run(capsys, monkeypatch, "sk-good", "--server", fake.url, "--prompt", "fail please", "--out",
                    str(tmp_path / "out"))
    job_id = next(iter(fake.jobs))
    assert (code, err[-1]) == (1, f"lift3d: error: generation {job_id} failed: internal_error: the NeRF diverged")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_server_exits_1(capsys, monkeypatch, tmp_path):
    port = free_port()  # closed again: nothing listens there
    code, err = run(capsys, monkeypatch, "sk-good", "--server", f"http://127.0.0.1:{port}", "--prompt", "a robot",
                    "--out", str(tmp_path))
    assert code == 1 and len(err) == 1 and err[0].startswith(f"lift3d: error: cannot reach http://127.0.0.1:{port}: ")


def test_a_dropped_event_stream_is_resumed_with_last_event_id(capsys, monkeypatch, tmp_path):
    job_id, seen = "e" * 32, []
    summary = {"id": job_id, "status": "succeeded", "seed": 1, "cost_usd": 0.001, "random_weights": False,
               "artifacts": [{"name": "model.glb", "url": f"/v1/generation/{job_id}/artifacts/model.glb"}]}
    api = FastAPI()

    @api.post("/v1/generation/text-to-3d")
    async def submit() -> Response:
        return JSONResponse({"id": job_id}, status_code=202)

    @api.get("/v1/generation/{id}/events")
    async def events(request: Request) -> Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:  # two events, then the connection ends without a terminal event
            body = ('id: 8\nevent: status\ndata: {"status":"running","stage":"sds_training","eta_s":null}\n\n'
                    'id: 9\nevent: progress\ndata: {"stage":"sds_training","step":1,"total":2,"eta_s":3}\n\n')
        else:
            body = f"id: 14\nevent: succeeded\ndata: {json.dumps(summary)}\n\n"
        return StreamingResponse(iter([body]), media_type="text/event-stream")

    @api.get("/v1/generation/{id}/artifacts/{name:path}")
    async def artifact(id: str, name: str) -> Response:
        return Response(b"glb-bytes")

    with serve_in_thread(api) as url:
        code, err = run(capsys, monkeypatch, "sk-good", "--server", url, "--prompt", "a robot", "--out",
                        str(tmp_path))
    assert code == 0, err
    assert seen == [None, "9"]
    assert (tmp_path / "model.glb").read_bytes() == b"glb-bytes"


def test_downloads_send_the_key_only_to_the_server(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, content=request.url.path.encode())

    client = RemoteClient("https://api.example.test", "sk-good", transport=httpx.MockTransport(handler))
    client.download("f" * 32, [
        {"name": "model.glb", "url": f"/v1/generation/{'f' * 32}/artifacts/model.glb"},
        {"name": "views/a b.png", "url": "https://bucket.s3.example.test/generations/x/a%20b.png?X-Amz-Signature=1"},
        {"name": "metadata.json", "url": "file:///tmp/lift3d/store/generations/x/metadata.json"},
        {"name": "views.png", "url": "https://api.example.test/v1/generation/x/artifacts/views.png"},
    ], tmp_path)
    assert calls == [
        (f"https://api.example.test/v1/generation/{'f' * 32}/artifacts/model.glb", "Bearer sk-good"),
        ("https://bucket.s3.example.test/generations/x/a%20b.png?X-Amz-Signature=1", None),
        (f"https://api.example.test/v1/generation/{'f' * 32}/artifacts/metadata.json", "Bearer sk-good"),
        ("https://api.example.test/v1/generation/x/artifacts/views.png", "Bearer sk-good"),
    ]
    assert (tmp_path / "views" / "a b.png").read_bytes() == b"/generations/x/a b.png"  # the body, in place
    with pytest.raises(RemoteError, match="refusing artifact name '../escape.glb'"):
        client.download("f" * 32, [{"name": "../escape.glb", "url": "/x"}], tmp_path)
    assert not (tmp_path.parent / "escape.glb").exists()


def test_parse_sse_reads_ids_events_multiline_data_and_skips_comments():
    lines = [": ping", "id: 4", "event: status", 'data: {"a":', "data: 1}", "", ": keep-alive", "",
             "event: progress", 'data: {"step": 2}']
    assert list(parse_sse(lines)) == [("4", "status", {"a": 1}), (None, "progress", {"step": 2})]
