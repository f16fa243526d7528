"""k8s/rayservice.yaml's serveConfigV2 is generated from serve_config.yaml by tools/sync_rayservice.py (`make k8s`)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "sync_rayservice.py"
MANIFEST = Path("k8s") / "rayservice.yaml"
BLOCK_KEY = "  serveConfigV2: |"
AFTER_BLOCK = "  rayClusterConfig:"


def sync(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def outside_block(text: str) -> tuple[list[str], list[str]]:
    """The manifest's lines before serveConfigV2's content and from the key after it on (PodMonitor included)."""
    lines = text.splitlines(keepends=True)
    start = lines.index(BLOCK_KEY + "\n") + 1
    end = lines.index(AFTER_BLOCK + "\n")
    return lines[:start], lines[end:]


def embedded_serve_config(manifest_text: str) -> dict:
    service = next(yaml.safe_load_all(manifest_text))
    assert service["kind"] == "RayService"
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_repository_manifest_is_up_to_date():
    result = sync(ROOT, "--check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_fails_on_drift_and_sync_fixes_only_the_block(tmp_path):
    (tmp_path / "k8s").mkdir()
    shutil.copy(ROOT / "serve_config.yaml", tmp_path / "serve_config.yaml")
    shutil.copy(ROOT / MANIFEST, tmp_path / MANIFEST)
    original = (tmp_path / MANIFEST).read_bytes().decode()
    serve_config = (tmp_path / "serve_config.yaml").read_text()
    edited = serve_config.replace("{min_replicas: 1, max_replicas: 8, target_ongoing_requests: 8}",
                                  "{min_replicas: 1, max_replicas: 6, target_ongoing_requests: 8}")
    assert edited != serve_config  # the MultiView line exists
    (tmp_path / "serve_config.yaml").write_text(edited)

    check = sync(tmp_path, "--check")
    assert check.returncode == 1
    assert "make k8s" in check.stderr and len(check.stderr.strip().splitlines()) == 1
    assert (tmp_path / MANIFEST).read_bytes().decode() == original  # --check writes nothing

    fixed = sync(tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert sync(tmp_path, "--check").returncode == 0
    regenerated = (tmp_path / MANIFEST).read_bytes().decode()
    assert regenerated != original
    assert outside_block(regenerated) == outside_block(original)
    assert regenerated.split("\n---\n")[1:] == original.split("\n---\n")[1:]  # the PodMonitor
    deployments = {d["name"]: d for d in embedded_serve_config(regenerated)["applications"][0]["deployments"]}
    assert deployments["MultiView"]["autoscaling_config"]["max_replicas"] == 6

    assert sync(tmp_path).returncode == 0  # idempotent
    assert (tmp_path / MANIFEST).read_bytes().decode() == regenerated


def test_embedded_config_equals_serve_config_except_runtime_env():
    manifest_text = (ROOT / MANIFEST).read_text()
    embedded = embedded_serve_config(manifest_text)
    direct = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert list(embedded) == list(direct) == ["proxy_location", "http_options", "applications"]
    assert [app.pop("runtime_env") for app in embedded["applications"]] == [{"working_dir": "file:///app"}]
    for app in direct["applications"]:
        app.pop("runtime_env", None)
    assert embedded == direct
    block_start = manifest_text.splitlines().index(BLOCK_KEY) + 1
    assert manifest_text.splitlines()[block_start].strip().startswith("# generated from serve_config.yaml")


def test_ingress_exposes_only_the_api_paths():
    """Ray Serve's proxy answers /-/routes (the applications) itself; the edge must route only the API's paths."""
    ingress = yaml.safe_load((ROOT / "k8s" / "ingress.yaml").read_text())
    assert ingress["kind"] == "Ingress"
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/v1/", "Prefix"), ("/healthz", "Exact"), ("/docs", "Exact"), ("/openapi.json", "Exact")}
    service = next(yaml.safe_load_all((ROOT / MANIFEST).read_text()))["metadata"]["name"]
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {f"{service}-serve-svc"}
    for probe in ("/-/routes", "/-/healthz", "/", "/v1"):  # what an Ingress with these rules would not route
        assert not any(probe == path or (kind == "Prefix" and probe.startswith(path)) for path, kind in paths)
