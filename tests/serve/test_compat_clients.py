"""The Replicate and Cog prediction APIs through the Serve graph (tiny preset): the unmodified ``replicate`` client
runs ``lift3d/image-to-3d`` and gets a GLB that trimesh loads, downloaded by its signed URL without the key; Cog's
synchronous ``POST /predictions`` answers the novel views as data URIs. Jobs are created together so they run while
the checks wait."""

import base64
import io
from pathlib import Path

import httpx
import pytest
import replicate
import trimesh
from PIL import Image

DRAGON = Path(__file__).resolve().parents[2] / "examples" / "dragon2_rgba.png"
FAST = {"num_views": 4, "num_multiview_steps": 2, "num_inference_steps": 2, "num_3d_max_steps": 12, "seed": 3}


@pytest.mark.slow
def test_replicate_and_cog_clients_through_the_graph(serve_graph):
    client = replicate.Client(api_token=serve_graph.key, base_url=serve_graph.url, timeout=60)
    with DRAGON.open("rb") as image:
        prediction = client.models.predictions.create(model="lift3d/image-to-3d", input={"image": image, **FAST})
    assert prediction.status == "starting"
    data_uri = "data:image/png;base64," + base64.b64encode(DRAGON.read_bytes()).decode()
    cog = httpx.post(f"{serve_graph.url}/predictions", json={"input": {"image": data_uri, "return_3d": False,
                                                                       **FAST}},
                     headers={"Authorization": f"Bearer {serve_graph.key}"}, timeout=900)
    assert cog.status_code == 200, cog.text
    views = cog.json()["output"]
    assert len(views) == FAST["num_views"] and cog.json()["status"] == "succeeded"
    assert Image.open(io.BytesIO(base64.b64decode(views[0].partition(",")[2]))).format == "PNG"

    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert prediction.metrics["predict_time"] > 0 and prediction.logs.endswith("done\n")
    assert isinstance(prediction.output, str) and "/download/" in prediction.output  # http: a plain URL
    glb = httpx.get(prediction.output, timeout=30)  # no key: the signature is the credential
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
