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
