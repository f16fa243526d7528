"""OpenAI's image API and Stability's v2beta through the Serve graph (tiny preset, API keys on): the unmodified
``openai`` client gets a PNG of the asked-for size and an inpainted edit from the SDXL replica, ``models.list`` the
served ids; Stability's ``generate/core`` answers bytes with ``finish-reason`` and ``seed`` (and JSON), and
``GET /v2beta/results/{id}`` follows a multiview job from 202 to its ZIP."""

import base64
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from keyed import HTTP
from PIL import Image
from support import wait_until

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
VIEWS = {"num_views": 4, "num_multiview_steps": 2, "seed": 3}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_openai_and_stability_clients_through_the_graph(serve_graph):
    url = serve_graph.url
    job = HTTP.post(f"{url}/v1/generation/multiview", json={"image": base64.b64encode(DRAGON.read_bytes()).decode(),
                                                             **VIEWS}, timeout=30)
    assert job.status_code == 202, job.text
    client = openai.OpenAI(base_url=url + "/v1", api_key=serve_graph.key, max_retries=0, timeout=120)
    answer = client.images.generate(model="sdxl", prompt="a wooden toy robot", size="128x64",
                                    response_format="b64_json", extra_body={"steps": 2, "seed": 4})
    image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert image.format == "PNG" and image.size == (128, 64)
    red = png(Image.new("RGB", (64, 64), (200, 10, 10)))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))
    edited = client.images.edit(image=("red.png", red, "image/png"), mask=("mask.png", png(mask), "image/png"),
                                prompt="a blue ball", extra_body={"steps": 2, "seed": 5})
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).convert("RGB"), dtype=int)
    assert np.abs(out[:, 32:] - [200, 10, 10]).max() == 0 and np.abs(out[:, :32] - [200, 10, 10]).mean() > 20
    assert [m.id for m in client.models.list().data] == ["sdxl", "tiny"]

    core = HTTP.post(f"{url}/v2beta/stable-image/generate/core", files={"none": ""}, headers={"accept": "image/*"},
                     data={"prompt": "a lighthouse", "seed": "6", "steps": "2"}, timeout=120)
    assert core.status_code == 200, core.text
    assert core.headers["finish-reason"] == "SUCCESS" and core.headers["seed"] == "6"
    assert Image.open(io.BytesIO(core.content)).format == "PNG"
    as_json = HTTP.post(f"{url}/v2beta/stable-image/generate/core", files={"none": ""},
                        headers={"accept": "application/json"},
                        data={"prompt": "a lighthouse", "seed": "6", "steps": "2"}, timeout=120).json()
    assert base64.b64decode(as_json["image"]) == core.content and as_json["finish_reason"] == "SUCCESS"

    job_id, seen = job.json()["id"], set()

    def result() -> httpx.Response | None:
        answer = HTTP.get(f"{url}/v2beta/results/{job_id}", timeout=30)
        seen.add(answer.status_code)
        return answer if answer.status_code != 202 else None

    done = wait_until(result, 240, f"job {job_id} done", interval_s=0.5)
    assert done.status_code == 200 and done.headers["content-type"] == "application/zip", done.text
    assert done.headers["seed"] == "3" and done.headers["finish-reason"] == "SUCCESS"
    with zipfile.ZipFile(io.BytesIO(done.content)) as archive:
        assert sum(name.endswith(".png") for name in archive.namelist()) == VIEWS["num_views"]
