"""k8s/rayservice.yaml: its serveConfigV2 is generated from serve_config.yaml by tools/sync_rayservice.py (`make k8s`),
and its worker groups are the pools serve_config.yaml's deployments ask for (what Ray's autoscaler will see)."""

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _get_custom_resources,
    _get_ray_resources_from_group_spec,
    _round_up_k8s_quantity,
)

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
    edited = serve_config.replace("{min_replicas: 2, max_replicas: 8, target_ongoing_requests: 50}",
                                  "{min_replicas: 2, max_replicas: 6, target_ongoing_requests: 50}")
    assert edited != serve_config  # the Ingress line exists
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
    assert deployments["Ingress"]["autoscaling_config"]["max_replicas"] == 6

    assert sync(tmp_path).returncode == 0  # idempotent
    assert (tmp_path / MANIFEST).read_bytes().decode() == regenerated


def test_embedded_config_equals_serve_config_except_runtime_env():
    manifest_text = (ROOT / MANIFEST).read_text()
    embedded = embedded_serve_config(manifest_text)
    direct = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert list(embedded) == list(direct) == ["proxy_location", "http_options", "applications"]
    assert [app.pop("runtime_env") for app in embedded["applications"]] == [{"working_dir": "local:///app"}]
    for app in direct["applications"]:
        app.pop("runtime_env", None)
    assert embedded == direct
    block_start = manifest_text.splitlines().index(BLOCK_KEY) + 1
    assert manifest_text.splitlines()[block_start].strip().startswith("# generated from serve_config.yaml")


def test_the_cluster_working_dir_is_one_ray_accepts():
    """Ray takes the working_dir as it is (no upload) only for a `local://` directory or an archive URI."""
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    (app,) = embedded_serve_config((ROOT / MANIFEST).read_text())["applications"]
    assert upload_working_dir_if_needed(dict(app["runtime_env"]), include_gitignore=False) == app["runtime_env"]
    with pytest.raises(ValueError, match="working_dir"):  # what the previous file:///app got
        upload_working_dir_if_needed({"working_dir": "file:///app"}, include_gitignore=False)


def test_ingress_exposes_only_the_api_paths():
    """Ray Serve's proxy answers /-/routes (the applications) itself; the edge must route only the API's paths."""
    ingress = yaml.safe_load((ROOT / "k8s" / "ingress.yaml").read_text())
    assert ingress["kind"] == "Ingress"
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/v1/", "Prefix"), ("/healthz", "Exact"), ("/docs", "Exact"), ("/openapi.json", "Exact"),
                     ("/redoc", "Exact"),  # the API docs, vendored (issue 23)
                     ("/", "Exact"), ("/static/", "Prefix"),  # the playground's page and files
                     ("/v2beta/3d/stable-fast-3d", "Exact")}  # the synchronous fast 3D endpoint
    service = next(yaml.safe_load_all((ROOT / MANIFEST).read_text()))["metadata"]["name"]
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {f"{service}-serve-svc"}
    # what an Ingress with these rules would not route
    for probe in ("/-/routes", "/-/healthz", "/v1", "/static", "/v2beta/", "/v2beta/3d/stable-fast-3d/x"):
        assert not any(probe == path or (kind == "Prefix" and probe.startswith(path)) for path, kind in paths)


# ------------------------------------------------------------------------------------------------ the pools
GROUP_OF = {"Ingress": "cpu", "JobConsumer": "cpu", "BackgroundRemoval": "cpu",
            "TextToImage": "sdxl", "MultiView": "zero123", "NerfTrainer": "nerf", "FeedForward": "feedforward"}
POOL_OF = {"cpu": "pool_cpu", "sdxl": "pool_sdxl", "zero123": "pool_zero123", "nerf": "pool_nerf",
           "feedforward": "pool_feedforward"}
GPU_GROUPS = ("sdxl", "zero123", "nerf", "feedforward")
PER_NODE = {"TextToImage": 1, "MultiView": 2, "NerfTrainer": 2, "FeedForward": 2}
RAY_MEMORY_SHARE = 0.7  # Ray's `memory` resource: what is left after its object store's default 30 %


def rayservice() -> dict:
    return next(yaml.safe_load_all((ROOT / MANIFEST).read_text()))


def worker_groups() -> dict[str, dict]:
    return {group["groupName"]: group for group in rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def deployments(config: str = "serve_config.yaml") -> dict[str, dict]:
    (app,) = yaml.safe_load((ROOT / config).read_text())["applications"]
    return {d["name"]: d for d in app["deployments"]}


def demand(deployment: dict) -> dict[str, float]:
    """The resources one replica asks Ray for: what a pending replica shows the autoscaler."""
    options = deployment.get("ray_actor_options", {})
    wanted = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), "memory": options.get("memory", 0),
              **options.get("resources", {})}
    if "accelerator_type" in options:  # Ray turns it into this resource
        wanted[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return {name: amount for name, amount in wanted.items() if amount}


def fits(wanted: dict[str, float], offered: dict[str, float]) -> bool:
    return all(offered.get(name, 0) >= amount for name, amount in wanted.items())


def autoscaler_view() -> dict[str, dict[str, float]]:
    """What each node type offers, as Ray's KubeRay autoscaler reads it from the RayService (head included)."""
    cluster = rayservice()["spec"]["rayClusterConfig"]
    view = {"head": _get_ray_resources_from_group_spec(cluster["headGroupSpec"], True)}
    view.update({name: _get_ray_resources_from_group_spec(group, False) for name, group in worker_groups().items()})
    return view


def node_resources(group: dict) -> dict[str, float]:
    """What a running node of ``group`` offers Ray's scheduler (memory: the share left to actors)."""
    offered = _get_ray_resources_from_group_spec(group, False)
    memory_limit = _round_up_k8s_quantity(group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
    return {**offered, "memory": RAY_MEMORY_SHARE * memory_limit}


def test_each_deployment_fits_only_its_own_group_as_the_autoscaler_sees_it():
    """A pending replica makes the autoscaler add a node to exactly one group: its own (never the head)."""
    view = autoscaler_view()
    for name, deployment in deployments().items():
        hosts = {group for group, offered in view.items() if fits(demand(deployment), offered)}
        assert hosts == {GROUP_OF[name]}, (name, demand(deployment), hosts)


def test_without_its_pool_or_with_an_accelerator_type_a_replica_would_be_misplaced_or_stuck():
    """Why the pools: without one, a GPU replica fits every GPU group; with `accelerator_type`, none (the KubeRay
    autoscaler does not know which group has an A10G), so it would wait forever for a node that never starts."""
    view = autoscaler_view()
    options = deployments()["TextToImage"]["ray_actor_options"]
    no_pool = {"ray_actor_options": {k: v for k, v in options.items() if k != "resources"}}
    assert {g for g, offered in view.items() if fits(demand(no_pool), offered)} == set(GPU_GROUPS)
    typed = {"ray_actor_options": {**options, "accelerator_type": "A10G"}}
    assert {g for g, offered in view.items() if fits(demand(typed), offered)} == set()


def test_each_group_offers_only_its_own_pool():
    view = autoscaler_view()
    pools = {name: {r for r in offered if r.startswith("pool_")} for name, offered in view.items()}
    assert pools == {"head": set(), **{group: {pool} for group, pool in POOL_OF.items()}}
    assert {group: view[group].get("GPU", 0) for group in POOL_OF} == {"cpu": 0, "sdxl": 1, "zero123": 1, "nerf": 1,
                                                                        "feedforward": 1}


def test_gpu_deployments_ask_for_the_pool_share_of_their_gpu_share():
    """pool_x equals num_gpus (one pool unit per GPU), so both limits admit the same replicas per node."""
    for name, deployment in deployments().items():
        options = deployment["ray_actor_options"]
        assert options["resources"] == {POOL_OF[GROUP_OF[name]]: options.get("num_gpus") or 1}, name
        assert "accelerator_type" not in options, name  # the autoscaler cannot see which group offers it


def test_replicas_per_node_and_group_sizes_match_the_deployments():
    """GPU groups: replicas per node from the resources; minReplicas / maxReplicas = the deployments' bounds in
    nodes (no idle floor node, no replica that can never be placed). The CPU group holds its deployments."""
    groups, serve = worker_groups(), deployments()
    for name, per_node in PER_NODE.items():
        group, wanted = groups[GROUP_OF[name]], demand(serve[name])
        offered = node_resources(group)
        assert min(math.floor(offered[r] / amount + 1e-9) for r, amount in wanted.items()) == per_node, name
        bounds = serve[name]["autoscaling_config"]
        assert group["minReplicas"] == math.ceil(bounds["min_replicas"] / per_node), name
        assert group["maxReplicas"] == math.ceil(bounds["max_replicas"] / per_node), name
        assert group["replicas"] == group["minReplicas"], name
    cpu_node = node_resources(groups["cpu"])
    cpu_deployments = [serve[name] for name, group in GROUP_OF.items() if group == "cpu"]
    cpu = groups["cpu"]
    for bound, nodes in (("min_replicas", cpu["minReplicas"]), ("max_replicas", cpu["maxReplicas"])):
        for resource in ("CPU", "memory", "pool_cpu"):
            total = sum(d["autoscaling_config"][bound] * demand(d).get(resource, 0) for d in cpu_deployments)
            assert total <= nodes * cpu_node[resource], (bound, resource, total)
    assert groups["sdxl"]["minReplicas"] == 0  # SDXL scales to zero
    assert groups["feedforward"]["minReplicas"] >= 1  # the synchronous endpoint never waits for a GPU node


def test_pool_resources_parse_the_same_for_the_shell_the_operator_and_the_autoscaler():
    """KubeRay pastes rayStartParams into `ray start --resources=...` (a shell command), reads the value back for
    its accelerator scan (quotes trimmed, then JSON), and Ray's autoscaler parses it on its own."""
    for name, group in worker_groups().items():
        value = group["rayStartParams"]["resources"]
        (argument,) = shlex.split(f"--resources={value}")
        by_shell = json.loads(argument.split("=", 1)[1])
        by_operator = json.loads(value.strip("'\"` "))
        by_autoscaler = _get_custom_resources({}, group["rayStartParams"], name)
        assert by_shell == by_operator == by_autoscaler == {POOL_OF[name]: 100 if name == "cpu" else 1}, name


def test_the_local_config_asks_for_no_pool():
    for name, deployment in deployments("serve_config.local.yaml").items():
        options = deployment.get("ray_actor_options", {})
        assert "resources" not in options and "accelerator_type" not in options, name


def _pod_templates() -> dict[str, dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"]["template"],
            **{name: group["template"] for name, group in worker_groups().items()}}


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_ray_pods_share_the_image_and_gpu_pods_mount_the_models_read_only():
    templates = _pod_templates()
    images = {t["spec"]["containers"][0]["image"] for t in templates.values()}
    assert len(images) == 1 and images.pop().startswith("ghcr.io/lift3d/lift3d:")
    for name in (*GPU_GROUPS, "cpu"):  # cpu: rembg's model under /models/rembg
        spec = templates[name]["spec"]
        (container,) = spec["containers"]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"], name
        assert {"name": "models", "persistentVolumeClaim": {"claimName": "lift3d-models", "readOnly": True}} \
            in spec["volumes"], name
        assert spec["securityContext"]["runAsUser"] == 1000, name  # the image's user
        assert "node.kubernetes.io/instance-type" in spec["nodeSelector"], name
    for name in GPU_GROUPS:
        spec = templates[name]["spec"]
        (container,) = spec["containers"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"], name
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert _env(container)["HF_HOME"]["value"] == "/models/huggingface", name
        assert _env(container)["HF_HUB_OFFLINE"]["value"] == "1", name
    assert "tolerations" not in templates["cpu"]["spec"] and "tolerations" not in templates["head"]["spec"]


def test_the_database_url_comes_from_the_postgres_secret_where_the_database_is_used():
    """Head (`lift3d keys create`), cpu (Ingress, JobConsumer) and nerf (NerfTrainer); the model pools need none."""
    postgres = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "k8s" / "postgres.yaml").read_text())}
    (container,) = postgres["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    secret = _env(container)["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    for name, template in _pod_templates().items():
        env = _env(template["spec"]["containers"][0])
        if name in ("head", "cpu", "nerf"):
            assert env["LIFT3D_DATABASE_URL"] == {"name": "LIFT3D_DATABASE_URL", "valueFrom": {
                "secretKeyRef": {"name": secret, "key": "database-url"}}}, name
        else:
            assert "LIFT3D_DATABASE_URL" not in env, name
    service = postgres["Service"]
    assert (service["metadata"]["name"], service["spec"]["ports"][0]["port"]) == ("lift3d-postgres", 5432)


def test_redis_serves_the_queue_and_gcs_fault_tolerance():
    redis = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "k8s" / "redis.yaml").read_text())}
    address = f"{redis['Service']['metadata']['name']}:{redis['Service']['spec']['ports'][0]['port']}"
    assert rayservice()["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {"redisAddress": address, \
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "lift3d-redis", "key": "password"}}}}  # issue 23
    (app,) = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    assert app["args"]["queue"]["broker_url"].startswith(f"redis://{address}/")
    (container,) = redis["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    flags = dict(zip(container["args"][::2], container["args"][1::2]))
    assert flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"


def test_podmonitor_and_network_policies_select_every_ray_pod():
    documents = [d for f in ("rayservice.yaml", "redis.yaml", "postgres.yaml")
                 for d in yaml.safe_load_all((ROOT / "k8s" / f).read_text())]
    (monitor,) = [d for d in documents if d["kind"] == "PodMonitor"]
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 2
    for name, template in _pod_templates().items():
        labels = {**template["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # the second one set by KubeRay
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for policy in policies:
            (rule,) = policy["spec"]["ingress"]
            assert any(peer["podSelector"]["matchLabels"].items() <= labels.items() for peer in rule["from"]), name
