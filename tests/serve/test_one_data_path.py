"""One data path, one result: the same seed, device, thread count and parameters give the same views and the
same GLB bytes through the CLI (in-process stages), the Python handle API and HTTP (stages on Serve replicas).

Before the pipeline ran on one StageProvider protocol with per-step SDS seeds, the same seed gave a 32,116-byte GLB
through the CLI and a 31,388-byte one through HTTP.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from keyed import HTTP, wait_done
from support import wait_until

from lift3d.service.schemas import GenerationRequest, GenerationResult

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
PARAMS = {"num_views": 4, "num_multiview_steps": 3, "num_3d_max_steps": 16, "seed": 11, "texture_size": 512}
COMPARED = ["input.png", "views/000_az000_el0.png", "views/001_az090_el0.png", "views/002_az180_el0.png",
            "views/003_az270_el0.png", "views.png", "model.glb", "model_textured.glb"]


def _wait_until_idle(jobs, timeout_s: float = 240.0) -> None:
    """No other job may run beside the one under test: concurrent jobs share SDS batches, whose batched UNet
    forward changes the last bits of every gradient in it."""
    wait_until(lambda: not jobs.active_ids(), timeout_s, "no active job", interval_s=0.5)


def _artifacts(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in COMPARED}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, serve_graph):
    """``lift3d generate`` in a fresh process with the graph replicas' torch thread count, started here so that it
    runs beside the graph's jobs (its own process and thread count: nothing they do changes its bits). Call the
    fixture's value for the artifacts: it waits for the process."""
    out, logs = tmp_path_factory.mktemp("cli"), tmp_path_factory.mktemp("cli-log") / "generate.log"
    options = [f"--{key.replace('_', '-')}={value}" for key, value in PARAMS.items()]
    with logs.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lift3d.cli", "generate", "--image", str(DRAGON), "--out", str(out), "--preset",
             "tiny", "--device", "cpu", f"--threads={serve_graph.config.torch_threads}", *options],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def artifacts() -> dict[str, bytes]:
        assert process.wait(timeout=600) == 0, logs.read_text()[-3000:]
        return _artifacts(out)

    yield artifacts
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_cli_http_and_handle_give_the_same_views_and_glb_bytes(serve_graph, cli_run):
    # 1. HTTP (multipart upload), alone on the graph
    _wait_until_idle(serve_graph.jobs)
    response = HTTP.post(f"{serve_graph.url}/v1/generation/image-to-3d", files={"image": DRAGON.read_bytes()},
                          data={key: str(value) for key, value in PARAMS.items()}, timeout=30)
    assert response.status_code == 202, response.text
    http_id = response.json()["id"]
    assert wait_done(serve_graph.url, http_id).status_code == 200
    glb = HTTP.get(f"{serve_graph.url}/v1/generation/{http_id}", timeout=30).content

    # 2. the Python handle API (base64 image), alone too
    accepted = serve_graph.handle.generate.remote(GenerationRequest.with_image(DRAGON.read_bytes(), **PARAMS)).result()
    deadline = time.monotonic() + 240
    while not isinstance(status := serve_graph.handle.status.remote(accepted.id).result(), GenerationResult):
        assert status.status in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.5)

    # 3. byte for byte: every view, the contact sheet, both GLBs
    cli = cli_run()
    generations = serve_graph.store_dir / "generations"
    via_http, via_handle = _artifacts(generations / http_id), _artifacts(generations / accepted.id)
    for name in COMPARED:
        assert via_http[name] == cli[name], f"{name}: HTTP {len(via_http[name])} B, CLI {len(cli[name])} B"
        assert via_handle[name] == cli[name], f"{name}: handle differs from CLI"
    assert glb == cli["model.glb"] and len(glb) > 10_000
