"""OpenAI's image API and Stability's v2beta on ``lift3d playground``'s server (LocalServer: one process, the tiny
preset's real models, API keys on): the unmodified ``openai`` client gets a PNG of the asked-for size, ``url``
answers download without the key, and Stability's ``generate/core`` answers bytes with ``finish-reason`` and
``seed``. The same adapters over the in-process SDXL: tests/images/test_openai_stability_compat.py."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
import torch
from PIL import Image

from lift3d.service.config import ServiceConfig
from lift3d.service.local_server import LocalServer


@pytest.fixture
def one_thread():
    """The tiny SDXL runs far faster on one torch thread than on two contended ones (tests/images/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_openai_and_stability_clients_on_the_playground_server(tmp_path, one_thread):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db'}", default_rate_limit_per_min=10_000)
    with LocalServer(config) as server:
        key = server.state.keys.create(name="images", credits=1000).key
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=300)
        answer = client.images.generate(model="tiny", prompt="a wooden toy robot", size="64x128",
                                        response_format="b64_json", extra_body={"steps": 2, "seed": 4})
        image = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
        assert image.format == "PNG" and image.size == (64, 128)
        link = client.images.generate(prompt="a lighthouse", response_format="url",
                                      extra_body={"steps": 2, "seed": 4}).data[0].url
        fetched = httpx.get(link, timeout=30)  # no key
        assert fetched.status_code == 200 and Image.open(io.BytesIO(fetched.content)).size == (64, 64)
        assert [m.id for m in client.models.list().data] == ["sdxl", "tiny"]
        core = httpx.post(server.url + "/v2beta/stable-image/generate/core", files={"none": ""},
                          headers={"authorization": f"Bearer {key}", "accept": "image/*"},
                          data={"prompt": "a lighthouse", "seed": "6", "steps": "2", "output_format": "jpeg"},
                          timeout=300)
        assert core.status_code == 200, core.text
        assert core.headers["content-type"] == "image/jpeg" and core.headers["finish-reason"] == "SUCCESS"
        assert core.headers["seed"] == "6" and Image.open(io.BytesIO(core.content)).format == "JPEG"
