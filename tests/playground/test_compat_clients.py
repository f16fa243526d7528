"""The Replicate and Cog prediction APIs through ``lift3d playground``'s server (LocalServer: one process, the tiny
preset's real models, API keys on): the unmodified ``replicate`` client's ``run`` returns the GLB's signed URL
(plain http here: the client wraps only https URLs), which trimesh loads after a download without the key, and
Cog's synchronous ``POST /predictions`` answers the views. The same adapters with a played worker:
tests/service/test_compat_predictions.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
import replicate
import requests
import trimesh
from PIL import Image

from lift3d.service.config import ServiceConfig
from lift3d.service.local_server import LocalServer

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
TINY = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 10, "seed": 7}


@pytest.mark.slow
def test_replicate_run_and_cog_predictions_on_the_playground_server(tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"),
                           database_url=f"sqlite:///{tmp_path / 'db'}", default_rate_limit_per_min=10_000,
                           heartbeat_s=0.5, events_poll_interval_s=0.1)
    with LocalServer(config) as server:
        key = server.state.keys.create(name="compat", credits=1000).key
        data_uri = "data:image/png;base64," + base64.b64encode(DRAGON.read_bytes()).decode()
        cog = requests.post(server.url + "/predictions", json={"input": {"image": data_uri, "return_3d": False,
                                                                         **TINY}},
                            headers={"Authorization": f"Bearer {key}"}, timeout=900)
        assert cog.status_code == 200, cog.text
        assert cog.json()["status"] == "succeeded" and len(cog.json()["output"]) == TINY["num_views"]
        view = Image.open(io.BytesIO(base64.b64decode(cog.json()["output"][0].partition(",")[2])))
        assert view.format == "PNG" and min(view.size) > 0

        client = replicate.Client(api_token=key, base_url=server.url, timeout=120)
        with DRAGON.open("rb") as image:
            output = client.run("lift3d/image-to-3d", input={"image": image, **TINY}, wait=60)
        if not isinstance(output, str):  # Prefer: wait ran out: the client polled; output is the URL either way
            output = str(output)
        assert "/download/" in output
        glb = httpx.get(output, timeout=30)
        assert glb.status_code == 200 and glb.content[:4] == b"glTF"
        mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
        assert len(mesh.faces) > 0
