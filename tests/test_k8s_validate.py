"""Every manifest in k8s/ against the schema the API server would check it with, and proof that each check bites.

- Built-in kinds (Service, StatefulSet, NetworkPolicy, Ingress, …): ``kubernetes-validate``'s strict schemas for
  Kubernetes :data:`K8S_VERSION` (``additionalProperties: false`` everywhere, so a typo'd field is an error).
- Custom resources (RayService, PodMonitor): their CRD's ``openAPIV3Schema`` (copies in k8s/schemas/, see its
  README), turned into JSON Schema by :func:`crd_json_schema`. A CRD schema is a Kubernetes *structural* schema:
  it never sets ``additionalProperties: false``, because the API server prunes unknown fields instead of rejecting
  them — a typo would vanish silently. The conversion therefore closes every object that pruning would empty of
  unknown fields, and it handles the ``x-kubernetes-*`` extensions the way the API server does
  (``int-or-string``, ``preserve-unknown-fields``, ``embedded-resource``, list types, the CEL rules these schemas
  use), OpenAPI's ``nullable`` and the ``int32``/``int64`` formats. ``metadata`` is checked as ObjectMeta.

A missing package or schema file fails these tests; nothing here is skipped.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SCHEMAS = K8S / "schemas"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests are meant for (EKS / GKE / AKS supported in 2026)
CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): SCHEMAS / "rayservice-v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "podmonitor-v1.json",
}
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
# Every keyword the stored CRD schemas may use; an unknown one fails the conversion instead of being ignored.
CONVERTED = {"properties", "items", "additionalProperties", "allOf", "anyOf", "oneOf", "not", "nullable",
             "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource"}
AS_IS = {"type", "format", "enum", "default", "required", "pattern", "maxLength", "minLength", "maximum", "minimum",
         "maxItems", "minItems", "maxProperties", "minProperties", "multipleOf", "uniqueItems", "description",
         "title", "example", "x-kubernetes-map-type", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
         "x-kubernetes-validations"}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# --------------------------------------------------------------------------------------------- the validators
def crd_json_schema(node: dict, *, top: bool = True) -> dict:
    """JSON Schema (2020-12) for a CRD's structural ``openAPIV3Schema`` ``node``; ``top``: the object's root.

    Raises:
        ValueError: a keyword this conversion does not know (the schema must be checked by hand first).
    """
    unknown = set(node) - CONVERTED - AS_IS
    if unknown:
        raise ValueError(f"unsupported schema keywords {sorted(unknown)}")
    out = {key: value for key, value in node.items() if key in AS_IS}
    if "properties" in node:
        out["properties"] = {name: crd_json_schema(sub, top=False) for name, sub in node["properties"].items()}
    for key in ("items", "not"):
        if key in node:
            out[key] = crd_json_schema(node[key], top=False)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = crd_json_schema(node["additionalProperties"], top=False)
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [crd_json_schema(sub, top=False) for sub in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if "anyOf" not in out:
            out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    properties = out.get("properties", {})
    if top or node.get("x-kubernetes-embedded-resource"):
        # apiVersion, kind and metadata exist on every object even where the schema leaves them out
        properties = out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, **properties}
        properties["metadata"] = OBJECT_META
    closed = (out.get("type") == "object" and "additionalProperties" not in node
              and not node.get("x-kubernetes-preserve-unknown-fields"))
    if closed:
        out["additionalProperties"] = False  # the fields the API server would prune
    return out


def _list_type(validator, list_type, instance, schema):
    """``x-kubernetes-list-type``: ``set`` items are unique; ``map`` items are unique by their map keys."""
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
        if len(set(seen)) != len(seen):
            yield jsonschema.ValidationError(f"duplicate items in a list-type set: {instance}")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        fields = schema.get("items", {}).get("properties", {})
        seen = [tuple(item.get(key, fields.get(key, {}).get("default")) for key in keys)
                for item in instance if isinstance(item, dict)]
        duplicates = {entry for entry in seen if seen.count(entry) > 1}
        if duplicates:
            yield jsonschema.ValidationError(f"duplicate {keys} in a list-type map: {sorted(duplicates)}")


CEL_MEMBERSHIP = re.compile(r"^self in (\[.*\])$")


def _cel_rules(validator, rules, instance, schema):
    """The CEL rules these schemas carry: transition rules (``oldSelf``: nothing to check on create) and
    ``self in [...]``; any other rule is an error, so that a new rule is read before it is trusted."""
    for rule in rules:
        text = rule["rule"]
        if "oldSelf" in text:
            continue
        membership = CEL_MEMBERSHIP.match(text)
        if membership is None:
            yield jsonschema.ValidationError(f"CEL rule not evaluated by this test: {text!r}")
        elif instance not in json.loads(membership.group(1).replace("'", '"')):
            yield jsonschema.ValidationError(rule.get("message", f"{instance!r} fails {text!r}"))


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, (low, high) in INT_RANGES.items():
        checker.checks(name)(lambda value, low=low, high=high: not isinstance(value, int) or low <= value <= high)
    return checker


CRDValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {
    "x-kubernetes-list-type": _list_type,
    "x-kubernetes-validations": _cel_rules,
})


def k8s_definitions() -> Resource:
    """kubernetes-validate's strict definitions (ObjectMeta and friends) for :data:`K8S_VERSION`."""
    return Resource.from_contents(schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json", K8S_VERSION))


def crd_validator(path: Path) -> jsonschema.protocols.Validator:
    schema = crd_json_schema(json.loads(path.read_text()))
    return CRDValidator(schema, registry=k8s_definitions() @ Registry(), format_checker=_format_checker())


def validation_errors(document: dict) -> list[str]:
    """Why the API server would refuse ``document`` ('' joined paths); empty when it is valid."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key in CRD_SCHEMAS:
        errors = crd_validator(CRD_SCHEMAS[key]).iter_errors(document)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


def manifests() -> list[tuple[str, dict]]:
    """(file#index, document) for every document of every k8s/*.yaml, the files `kubectl apply -f k8s/` reads."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document is not None:
                found.append((f"{path.name}#{index}", document))
    return found


MANIFESTS = manifests()
BY_KIND = {document["kind"]: document for _, document in MANIFESTS}


# --------------------------------------------------------------------------------------------- the manifests
def test_the_expected_manifests_are_there():
    kinds = sorted((name.split("#")[0], document["kind"]) for name, document in MANIFESTS)
    assert kinds == [("ingress.yaml", "Ingress"),
                     ("networkpolicy.yaml", "NetworkPolicy"),
                     ("postgres.yaml", "NetworkPolicy"), ("postgres.yaml", "Service"),
                     ("postgres.yaml", "StatefulSet"),
                     ("rayservice.yaml", "PodMonitor"), ("rayservice.yaml", "RayService"),
                     ("redis.yaml", "NetworkPolicy"), ("redis.yaml", "Service"), ("redis.yaml", "StatefulSet")]


@pytest.mark.parametrize("name, document", MANIFESTS, ids=[name for name, _ in MANIFESTS])
def test_manifest_is_valid(name, document):
    assert validation_errors(document) == []


def test_every_custom_resource_has_a_stored_schema_and_the_rest_are_built_in():
    for name, document in MANIFESTS:
        key = (document["apiVersion"], document["kind"])
        if key in CRD_SCHEMAS:
            continue
        # raises SchemaNotFoundError for a kind kubernetes-validate does not know (a CRD without a stored schema)
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_stored_schemas_convert_completely():
    """Every keyword and every CEL rule of the stored schemas is understood (else a check would be skipped)."""
    for path in CRD_SCHEMAS.values():
        schema = json.loads(path.read_text())
        crd_json_schema(schema)  # raises on an unknown keyword
        rules = re.findall(r'"rule":"((?:[^"\\]|\\.)*)"', path.read_text())
        for rule in rules:
            assert "oldSelf" in rule or CEL_MEMBERSHIP.match(json.loads(f'"{rule}"')), rule
        assert crd_validator(path).schema["properties"]["metadata"] == OBJECT_META


# --------------------------------------------------------------------------- each validation can fail
def _mutated(document: dict, path: str, value) -> dict:
    """A deep copy of ``document`` with ``value`` set at dotted ``path`` (integers index lists)."""
    changed = copy.deepcopy(document)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node = changed
    for part in parents:
        node = node[part]
    node[last] = value
    return changed


BUILT_IN = [(name, document) for name, document in MANIFESTS if (document["apiVersion"], document["kind"])
            not in CRD_SCHEMAS]


@pytest.mark.parametrize("name, document", BUILT_IN, ids=[name for name, _ in BUILT_IN])
def test_built_in_validation_rejects_a_typo_and_a_wrong_type(name, document):
    field = "replicaz" if "replicas" in document["spec"] else "selektor"
    assert validation_errors(_mutated(document, f"spec.{field}", 1)) == [
        f"spec: Additional properties are not allowed ('{field}' was unexpected)"]
    errors = validation_errors(_mutated(document, "metadata.name", ["not", "a", "string"]))
    assert len(errors) == 1 and errors[0].startswith("metadata.name: ") and "is not of type 'string'" in errors[0]


@pytest.mark.parametrize("name", ["redis.yaml#1", "postgres.yaml#1"])
def test_built_in_validation_reaches_into_the_pod_template(name):
    (document,) = [d for n, d in BUILT_IN if n == name]
    typo = _mutated(document, "spec.template.spec.containers.0.imagePullPolice", "Always")
    assert validation_errors(typo) == [
        "spec.template.spec.containers.0: Additional properties are not allowed ('imagePullPolice' was unexpected)"]
    wrong = _mutated(document, "spec.template.spec.containers.0.ports.0.containerPort", "6379")
    assert any("is not of type 'integer'" in error for error in validation_errors(wrong))


RAYSERVICE_BAD = {  # dotted path → (value, what the error must say)
    # typo'd fields at several depths: the API server would prune them silently
    "spec.serveConfigV3": ("x", "'serveConfigV3' was unexpected"),
    "spec.rayClusterConfig.enableInTreeAutoscalling": (True, "'enableInTreeAutoscalling' was unexpected"),
    "spec.rayClusterConfig.workerGroupSpecs.0.minReplica": (0, "'minReplica' was unexpected"),
    "spec.rayClusterConfig.headGroupSpec.template.spec.containers.0.imagePullPolice":
        ("Always", "'imagePullPolice' was unexpected"),
    "spec.rayClusterConfig.gcsFaultToleranceOptions.redisAdress": ("lift3d-redis:6379", "'redisAdress' was unexpected"),
    "metadata.nmae": ("lift3d", "'nmae' was unexpected"),  # ObjectMeta
    # wrong types and values
    "spec.rayClusterConfig.workerGroupSpecs.0.maxReplicas": ("4", "'4' is not of type 'integer'"),
    "spec.rayClusterConfig.workerGroupSpecs.1.minReplicas": (2**31, "is not a 'int32'"),
    "spec.rayClusterConfig.workerGroupSpecs.0.rayStartParams.num-cpus": (4, "4 is not of type 'string'"),
    "spec.rayClusterConfig.autoscalerOptions.upscalingMode": ("Fast", "'Fast' is not one of"),
    "spec.rayClusterConfig.workerGroupSpecs.2.template.spec.containers.0.resources.limits.cpu":
        ([7], "is not valid under any of the given schemas"),  # int-or-string
    "spec.serveConfigV2": ({"applications": []}, "is not of type 'string'"),  # the Serve config is YAML text
    "spec.managedBy": ("someone-else", "the managedBy field value must be"),  # CEL: self in [...]
    "spec.rayClusterConfig.workerGroupSpecs.3.template.spec.containers.0.ports":  # list-type map, same key twice
        ([{"containerPort": 8080, "name": "metrics"}, {"containerPort": 8080, "name": "other"}],
         "duplicate ['containerPort', 'protocol'] in a list-type map"),
}


@pytest.mark.parametrize("path, value, message", [(path, *bad) for path, bad in RAYSERVICE_BAD.items()],
                         ids=list(RAYSERVICE_BAD))
def test_rayservice_validation_rejects(path, value, message):
    errors = validation_errors(_mutated(BY_KIND["RayService"], path, value))
    assert any(message in error for error in errors), errors


@pytest.mark.parametrize("cpu", [7, "7", "6500m"])
def test_rayservice_int_or_string_accepts_both(cpu):
    path = "spec.rayClusterConfig.workerGroupSpecs.2.template.spec.containers.0.resources.limits.cpu"
    assert validation_errors(_mutated(BY_KIND["RayService"], path, cpu)) == []


PODMONITOR_BAD = {
    "spec.podMetricsEndpoint": ([{"port": "metrics"}], "'podMetricsEndpoint' was unexpected"),
    "spec.podMetricsEndpoints.0.path": (8080, "8080 is not of type 'string'"),
    "spec.scrapeProtocols": (["Prometheus"], "'Prometheus' is not one of"),  # enum
    "spec.selector.matchLabel": ({"a": "b"}, "'matchLabel' was unexpected"),  # inside the LabelSelector
    "metadata.labels": ({"app": 1}, "1 is not of type 'string'"),  # ObjectMeta: label values are strings
}


@pytest.mark.parametrize("path, value, message", [(path, *bad) for path, bad in PODMONITOR_BAD.items()],
                         ids=list(PODMONITOR_BAD))
def test_podmonitor_validation_rejects(path, value, message):
    errors = validation_errors(_mutated(BY_KIND["PodMonitor"], path, value))
    assert any(message in error for error in errors), errors


def test_conversion_keeps_open_maps_open_and_closes_objects():
    schema = crd_json_schema({"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "strict": {"type": "object", "properties": {"a": {"type": "string", "nullable": True}}},
        "port": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
    }})
    validator = CRDValidator(schema, registry=k8s_definitions() @ Registry())
    ok = {"labels": {"x": "y"}, "free": {"anything": [1]}, "strict": {"a": None}, "port": "http"}
    assert list(validator.iter_errors(ok)) == []
    for bad in ({"labels": {"x": 1}}, {"strict": {"b": "x"}}, {"port": 1.5}, {"extra": 1}):
        assert list(validator.iter_errors(bad)) != [], bad
    with pytest.raises(ValueError, match="unsupported schema keywords"):
        crd_json_schema({"type": "object", "x-kubernetes-new-thing": True})


# --------------------------------------------------------------------------- the inner doors (issue 23, finding 11)
RAY_POD = {"app.kubernetes.io/part-of": "lift3d", "ray.io/is-ray-node": "yes"}  # KubeRay adds the second label
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def pod_specs() -> dict[str, tuple[dict, dict]]:
    """Every pod the manifests make: name → (pod template metadata, pod spec); the autoscaler sidecar KubeRay adds
    to the head pod is checked through autoscalerOptions (its container fields)."""
    found = {}
    for name, document in MANIFESTS:
        if document["kind"] == "StatefulSet":
            template = document["spec"]["template"]
            found[document["metadata"]["name"]] = (template["metadata"], template["spec"])
        if document["kind"] == "RayService":
            cluster = document["spec"]["rayClusterConfig"]
            head = cluster["headGroupSpec"]["template"]
            found["ray-head"] = (head["metadata"], head["spec"])
            for group in cluster["workerGroupSpecs"]:
                found[f"ray-{group['groupName']}"] = (group["template"]["metadata"], group["template"]["spec"])
    return found


def hardening_problems(pod: dict, containers: list[dict]) -> list[str]:
    """What makes a container less than hardened: privilege escalation, a writable root, kept capabilities, no
    seccomp profile (its own or the pod's), possibly root."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for container in containers:
        context = container.get("securityContext", {})
        for field, value in HARDENED.items():
            if context.get(field) != value:
                problems.append(f"{container['name']}: {field} is {context.get(field)!r}, not {value!r}")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile"))
        if seccomp != {"type": "RuntimeDefault"}:
            problems.append(f"{container['name']}: seccompProfile {seccomp!r}")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{container['name']}: may run as root")
    return problems


def writable_paths(pod: dict, container: dict) -> set[str]:
    """Where a container with a read-only root can write: its emptyDir and persistent-volume mounts."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {mount["mountPath"] for mount in container.get("volumeMounts", [])
            if not mount.get("readOnly") and ("emptyDir" in volumes.get(mount["name"], {})
                                              or mount["name"] == "data")}


def test_every_container_runs_hardened_with_somewhere_to_write():
    pods = pod_specs()
    assert set(pods) == {"lift3d-redis", "lift3d-postgres", "ray-head", "ray-cpu", "ray-sdxl", "ray-zero123",
                         "ray-nerf", "ray-feedforward"}
    for name, (_, pod) in pods.items():
        assert hardening_problems(pod, pod["containers"]) == [], name
        assert pod.get("initContainers", []) == [], name  # none to forget
        (container,) = pod["containers"]
        paths = writable_paths(pod, container)
        needed = {"lift3d-redis": {"/data"}, "lift3d-postgres": {"/var/lib/postgresql/data", "/var/run/postgresql",
                                                                 "/tmp"}}.get(name, {"/tmp", "/home/ray"})
        assert needed <= paths, (name, paths)
    autoscaler = BY_KIND["RayService"]["spec"]["rayClusterConfig"]["autoscalerOptions"]
    head_pod = pods["ray-head"][1]
    assert hardening_problems(head_pod, [{"name": "autoscaler", **autoscaler}]) == []
    assert {m["mountPath"] for m in autoscaler["volumeMounts"]} == {"/tmp"}


def test_the_hardening_check_bites():
    _, pod = pod_specs()["ray-nerf"]
    for field, value in (("readOnlyRootFilesystem", False), ("allowPrivilegeEscalation", True),
                         ("capabilities", {"drop": ["NET_RAW"]})):
        container = copy.deepcopy(pod["containers"][0])
        container["securityContext"] = {**container["securityContext"], field: value}
        assert hardening_problems(pod, [container]) == [f"ray-worker: {field} is {value!r}, not {HARDENED[field]!r}"]
    bare = {**pod, "securityContext": {"runAsUser": 1000}}
    container = {"name": "x", "securityContext": dict(HARDENED)}
    assert hardening_problems(bare, [container]) == ["x: seccompProfile None", "x: may run as root"]


def _ray_policy() -> dict:
    (policy,) = [d for n, d in MANIFESTS if n.startswith("networkpolicy.yaml")]
    return policy


def _peer_name(peer: dict) -> str:
    if "namespaceSelector" not in peer and peer.get("podSelector", {}).get("matchLabels") == RAY_POD:
        return "ray pods"
    namespace = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name", "*")
    return f"{namespace}/{peer.get('podSelector', {}).get('matchLabels', {}).get('app.kubernetes.io/name', '*')}"


def open_doors(policy: dict) -> dict[str, set]:
    """Who may connect to the selected pods: peer name → ports ('all' when a rule names none)."""
    doors: dict[str, set] = {}
    for rule in policy["spec"].get("ingress", []):
        ports = {port["port"] for port in rule.get("ports", [])} or {"all"}
        for peer in rule.get("from", [{"namespaceSelector": {}}]):  # no `from`: everyone
            doors.setdefault(_peer_name(peer), set()).update(ports)
    return doors


def test_the_ray_pods_open_only_the_doors_each_peer_needs():
    policy = _ray_policy()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"] == {"matchLabels": RAY_POD}
    assert open_doors(policy) == {
        "ray pods": {"all"},
        "ingress-nginx/ingress-nginx": {8000},  # the Serve proxy, and nothing else
        "kuberay-system/kuberay-operator": {8265},  # the dashboard (RayService management)
        "monitoring/prometheus": {8080},  # metrics
    }
    rules = policy["spec"]["ingress"]
    nginx = [peer for rule in rules for peer in rule["from"] if _peer_name(peer).startswith("ingress-nginx")]
    assert nginx[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"  # not its webhook


def test_the_ray_policy_selects_every_ray_pod_and_nothing_else():
    selector = _ray_policy()["spec"]["podSelector"]["matchLabels"]
    for name, (metadata, _) in pod_specs().items():
        labels = dict(metadata.get("labels", {}))
        if name.startswith("ray-"):
            labels["ray.io/is-ray-node"] = "yes"  # set by KubeRay on every Ray pod
            assert selector.items() <= labels.items(), name
        else:
            assert not selector.items() <= labels.items(), name  # Redis and PostgreSQL have their own policies
    for store in ("redis.yaml", "postgres.yaml"):  # and those admit the Ray pods only
        (policy,) = [d for n, d in MANIFESTS if n.startswith(store) and d["kind"] == "NetworkPolicy"]
        assert set(open_doors(policy)) == {"ray pods"}, store


def test_the_door_check_bites():
    policy = copy.deepcopy(_ray_policy())
    policy["spec"]["ingress"][1]["ports"].append({"protocol": "TCP", "port": 6379})  # GCS to the Ingress controller
    assert open_doors(policy)["ingress-nginx/ingress-nginx"] == {8000, 6379}
    del policy["spec"]["ingress"][2]["ports"]  # every port to the operator
    assert open_doors(policy)["kuberay-system/kuberay-operator"] == {"all"}
    policy["spec"]["ingress"].append({})  # a rule without `from`: everyone
    assert "*/*" in open_doors(policy)


def _container_env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_redis_needs_a_password_that_every_user_gets_from_one_secret():
    redis = {d["kind"]: d for n, d in MANIFESTS if n.startswith("redis.yaml")}
    (container,) = redis["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    env = _container_env(container)
    secret = {"secretKeyRef": {"name": "lift3d-redis", "key": "password"}}
    assert env["REDIS_PASSWORD"]["valueFrom"] == secret and env["REDISCLI_AUTH"]["valueFrom"] == secret
    flags = dict(zip(container["args"][::2], container["args"][1::2]))
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"  # the kubelet expands it from the env
    cluster = BY_KIND["RayService"]["spec"]["rayClusterConfig"]
    assert cluster["gcsFaultToleranceOptions"]["redisPassword"] == {"valueFrom": secret}
    for name, (_, pod) in pod_specs().items():
        if name.startswith("ray-"):
            (ray,) = pod["containers"]
            assert _container_env(ray)["LIFT3D_REDIS_PASSWORD"]["valueFrom"] == secret, name


def test_the_encryption_key_goes_wherever_the_database_does():
    pods = pod_specs()
    with_database = set()
    for name, (_, pod) in pods.items():
        if not name.startswith("ray-"):
            continue
        env = _container_env(pod["containers"][0])
        if "LIFT3D_DATABASE_URL" in env:
            with_database.add(name)
            assert env["LIFT3D_ENCRYPTION_KEY"]["valueFrom"] == {
                "secretKeyRef": {"name": "lift3d-encryption", "key": "key"}}, name
        else:
            assert "LIFT3D_ENCRYPTION_KEY" not in env, name
    assert with_database == {"ray-head", "ray-cpu", "ray-nerf"}


def test_the_dashboard_is_reachable_only_through_the_policy():
    """KubeRay's RayService controller talks to the dashboard through the head service, so it listens on the pod's
    address; the policy is what keeps everyone but the operator out."""
    params = BY_KIND["RayService"]["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0"
    doors = open_doors(_ray_policy())
    assert [peer for peer, ports in doors.items() if 8265 in ports or "all" in ports] == [
        "ray pods", "kuberay-system/kuberay-operator"]
