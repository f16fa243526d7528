"""One data path, one result: the same seed, device, thread count and parameters give the same views and the
same GLB bytes through the CLI (in-process stages), the Python handle API and HTTP (stages on Serve replicas).

Before the pipeline ran on one StageProvider protocol with per-step SDS seeds, the same seed gave a 32,116-byte GLB
through the CLI and a 31,388-byte one through HTTP.
"""

import subprocess
import sys
import time
from pathlib import Path

from keyed import HTTP
import pytest

from lift3d.service.schemas import GenerationRequest, GenerationResult

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
PARAMS = {"num_views": 4, "num_multiview_steps": 3, "num_3d_max_steps": 16, "seed": 11, "texture_size": 512}
COMPARED = ["input.png", "views/000_az000_el0.png", "views/001_az090_el0.png", "views/002_az180_el0.png",
            "views/003_az270_el0.png", "views.png", "model.glb", "model_textured.glb"]


def _wait_until_idle(jobs, timeout_s: float = 240.0) -> None:
    """No other job may run beside the one under test: concurrent jobs share SDS batches, whose batched UNet
    forward changes the last bits of every gradient in it."""
    deadline = time.monotonic() + timeout_s
    while jobs.active_ids():
        assert time.monotonic() < deadline, f"jobs still active: {jobs.active_ids()}"
        time.sleep(0.5)


def _wait_done(url: str, job_id: str, timeout_s: float = 240.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := HTTP.get(f"{url}/v1/generation/{job_id}", timeout=30).status_code) == 202:
        assert time.monotonic() < deadline, f"job {job_id} still running"
        time.sleep(0.5)
    return code


def _artifacts(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in COMPARED}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, serve_graph) -> dict[str, bytes]:
    """``lift3d generate`` in a fresh process with the graph replicas' torch thread count."""
    out = tmp_path_factory.mktemp("cli")
    options = [f"--{key.replace('_', '-')}={value}" for key, value in PARAMS.items()]
    result = subprocess.run(
        [sys.executable, "-m", "lift3d.cli", "generate", "--image", str(DRAGON), "--out", str(out), "--preset", "tiny",
         "--device", "cpu", f"--threads={serve_graph.config.torch_threads}", *options],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return _artifacts(out)


@pytest.mark.slow
def test_cli_http_and_handle_give_the_same_views_and_glb_bytes(serve_graph, cli_run):
    # 1. HTTP (multipart upload), alone on the graph
    _wait_until_idle(serve_graph.jobs)
    response = HTTP.post(f"{serve_graph.url}/v1/generation/image-to-3d", files={"image": DRAGON.read_bytes()},
                          data={key: str(value) for key, value in PARAMS.items()}, timeout=30)
    assert response.status_code == 202, response.text
    http_id = response.json()["id"]
    assert _wait_done(serve_graph.url, http_id) == 200
    glb = HTTP.get(f"{serve_graph.url}/v1/generation/{http_id}", timeout=30).content

    # 2. the Python handle API (base64 image), alone too
    accepted = serve_graph.handle.generate.remote(GenerationRequest.with_image(DRAGON.read_bytes(), **PARAMS)).result()
    deadline = time.monotonic() + 240
    while not isinstance(status := serve_graph.handle.status.remote(accepted.id).result(), GenerationResult):
        assert status.status in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.5)

    # 3. byte for byte: every view, the contact sheet, both GLBs
    generations = serve_graph.store_dir / "generations"
    via_http, via_handle = _artifacts(generations / http_id), _artifacts(generations / accepted.id)
    for name in COMPARED:
        assert via_http[name] == cli_run[name], f"{name}: HTTP {len(via_http[name])} B, CLI {len(cli_run[name])} B"
        assert via_handle[name] == cli_run[name], f"{name}: handle differs from CLI"
    assert glb == cli_run["model.glb"] and len(glb) > 10_000
