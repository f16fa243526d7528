"""The OpenAPI document of the HTTP API is the recorded one, apart from ordering.

Two apps are built as :func:`lift3d.service.server.build_api` builds them over SQLite: ``production`` (API keys on,
so the security schemes, the account routes, 401 and ``X-Remaining-Credits`` are in it) and ``local`` (``auth:
false``). Their documents must equal ``tests/service/data/openapi_<name>.json`` once both are normalized
(:func:`normalize`: keys sorted; ``required``, ``enum``, ``type``, ``tags``, ``security`` and ``parameters`` lists
sorted, since their order means nothing). The recorded files are the documents of main at 9c7f88b (before the API
was split into routers); a refactor that changes a route, a body, a status code or a header fails here.

To re-record after an intended API change (then review ``git diff tests/service/data``)::

    .venv/bin/python tests/service/test_openapi_snapshot.py --record

Run with ``PYTHONPATH=<another checkout>`` to record that checkout's documents instead.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent / "data"
APPS = ("production", "local")

UNORDERED = frozenset({"required", "enum", "type", "tags", "security", "parameters"})
"""Keys whose list values are sets in OpenAPI / JSON Schema."""


def normalize(node: Any, key: str | None = None) -> Any:
    """``node`` with the lists under :data:`UNORDERED` keys sorted (by their JSON text), recursively; dict order is
    left to ``json.dumps(sort_keys=True)``.

    Examples:
        >>> normalize({"required": ["b", "a"], "anyOf": [{"type": ["null", "string"]}, {"enum": [2, 1]}]})
        {'required': ['a', 'b'], 'anyOf': [{'type': ['null', 'string']}, {'enum': [1, 2]}]}
    """
    if isinstance(node, dict):
        return {k: normalize(v, k) for k, v in node.items()}
    if isinstance(node, list):
        items = [normalize(v) for v in node]
        if key in UNORDERED:
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return node


def build_openapi(name: str, workdir: Path) -> dict:
    """The OpenAPI document of the app ``name`` (:data:`APPS`), built over a SQLite database in ``workdir``."""
    from lift3d.service.config import ServiceConfig
    from lift3d.service.metrics import ServiceMetrics
    from lift3d.service.server import build_api, build_images, build_service
    from lift3d.service.state import open_state

    config = ServiceConfig(preset="tiny", store_url=str(workdir / f"store-{name}"),
                           database_url=f"sqlite:///{workdir / f'{name}.db'}", auth=name == "production")
    state = open_state(config)
    try:
        images = build_images(config, state, lambda call: [])
        api = build_api(config, state, build_service(config, state, lambda job_id: None), ServiceMetrics(),
                        images=images)
        return api.openapi()
    finally:
        state.close()


def dump(document: dict) -> str:
    """The normalized document as the snapshot files hold it."""
    return json.dumps(normalize(document), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", APPS)
def test_openapi_document_is_unchanged(name, tmp_path):
    recorded = json.loads((DATA / f"openapi_{name}.json").read_text(encoding="utf-8"))
    current = json.loads(dump(build_openapi(name, tmp_path)))
    assert current["paths"].keys() == recorded["paths"].keys()
    for path, operations in recorded["paths"].items():
        assert current["paths"][path] == operations, f"OpenAPI of {path} changed"
    assert current == recorded


def test_normalize_keeps_meaningful_order():
    """``anyOf`` and ``items`` lists keep their order; only the set-like lists are sorted."""
    document = {"paths": {"/b": {"parameters": [{"name": "z"}, {"name": "a"}]}},
                "anyOf": [{"type": "string"}, {"type": "null"}], "tags": ["y", "x"]}
    assert normalize(document) == {"paths": {"/b": {"parameters": [{"name": "a"}, {"name": "z"}]}},
                                   "anyOf": [{"type": "string"}, {"type": "null"}], "tags": ["x", "y"]}


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: {sys.argv[0]} --record  (rewrites {DATA}/openapi_*.json)")
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for app_name in APPS:
            (DATA / f"openapi_{app_name}.json").write_text(dump(build_openapi(app_name, Path(tmp))), encoding="utf-8")
            print(f"recorded {DATA / f'openapi_{app_name}.json'}")
