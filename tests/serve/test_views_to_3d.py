"""``POST /v1/generation/views-to-3d`` on the session's graph (tiny preset): a sphere's posed views → GLB, and the
request and job errors. Submissions happen once per module so that the jobs run while the checks wait."""

import io
import json
import zipfile

import pytest
from keyed import HTTP, wait_done
import trimesh


FAST = {"steps": "30", "mesh_resolution": "48", "texture": "false", "seed": "1"}


def zip_dir(root, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix != ".glb":
                archive.write(path, prefix + path.relative_to(root).as_posix())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def views_jobs(serve_graph, tmp_path_factory):
    """8 views (32²) of a sphere, zipped in one top-level folder; plus a ZIP with a bad transforms.json."""
    from lift3d.reconstruct import RenderViewsOptions, render_views

    root = tmp_path_factory.mktemp("views")
    trimesh.creation.icosphere(subdivisions=2, radius=0.5).export(root / "sphere.ply")
    render_views(root / "sphere.ply", root / "views", RenderViewsOptions(num_views=8, resolution=32, supersample=1))
    url = f"{serve_graph.url}/v1/generation/views-to-3d"
    ids = {}
    response = HTTP.post(url, files={"views": ("sphere.zip", zip_dir(root / "views", "sphere/"))}, data=FAST,
                          timeout=30)
    assert response.status_code == 202, response.text
    ids["sphere"] = response.json()["id"]
    (root / "views" / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": "nope"}))
    response = HTTP.post(url, files={"views": ("bad.zip", zip_dir(root / "views"))}, data=FAST, timeout=30)
    assert response.status_code == 202, response.text
    ids["bad"] = response.json()["id"]
    return ids


@pytest.mark.slow
def test_views_to_3d_returns_a_glb_in_the_views_frame(serve_graph, views_jobs):
    done = wait_done(serve_graph.url, views_jobs["sphere"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["content_type"] == "model/gltf-binary" and body["seed"] == 1
    assert {"model.glb", "preview.png", "metadata.json"} <= {a["name"] for a in body["artifacts"]}
    assert "nerf_training" in body["timings_s"]
    glb = HTTP.get(f"{serve_graph.url}/v1/generation/{views_jobs['sphere']}", timeout=30)
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    assert glb.content[:4] == b"glTF"
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert len(mesh.vertices) > 0
    # render_views scales the box diagonal to 1, so the diameter is 1/sqrt(3); reconstruct keeps that frame
    assert abs(mesh.bounding_box.extents.max() - 3**-0.5) < 0.1


@pytest.mark.slow
def test_bad_transforms_json_fails_the_job_with_the_reason(serve_graph, views_jobs):
    done = wait_done(serve_graph.url, views_jobs["bad"])
    assert done.status_code == 422, done.text
    body = done.json()
    assert body["name"] == "invalid_parameters" and "frames" in body["errors"][0]


@pytest.mark.slow
@pytest.mark.parametrize("files, code, name", [
    ({"views": ("evil.zip", None)}, 400, "bad_request"),
    ({"views": ("v.png", b"\x89PNG not a zip")}, 400, "bad_request"),
    ({"views": ("v.zip", None)}, 422, "invalid_parameters"),
])
def test_views_request_errors_through_the_proxy(serve_graph, files, code, name):
    if files["views"][1] is None:  # build the ZIPs here (parametrize ids stay short)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            if files["views"][0] == "evil.zip":
                archive.writestr("transforms.json", "{}")
                archive.writestr("../evil", b"x")
            else:
                archive.writestr("images/r_0.png", b"x")  # no transforms.json
        files = {"views": (files["views"][0], buffer.getvalue())}
    response = HTTP.post(f"{serve_graph.url}/v1/generation/views-to-3d", files=files, timeout=30)
    assert response.status_code == code, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == name
