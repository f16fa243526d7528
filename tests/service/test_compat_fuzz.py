"""The Cog- and Replicate-compatible routes do what the OpenAPI document says: schemathesis, every check and phase,
on the production app of tests/test_openapi_fuzz.py (which leaves these paths to this test). What the schema cannot
say is supplied as a careful client would: a prediction's schema-valid ``input.image`` becomes a real PNG data URI,
a schema-valid ``webhook`` an address the service allows, and Cog requests carry ``Prefer: respond-async`` (the
queue here runs nothing, so a synchronous prediction would be held until its wait ran out)."""

from __future__ import annotations

import base64
import re

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from test_openapi_fuzz import CONFIG, OWN_FUZZ_TEST, PNG, WEBHOOK_URL, _fix_image_body, _positive, production_app

from lift3d.service.api.compat.docs import FILE_PATTERN
from lift3d.service.api.openapi import WEBHOOK_URL_PATTERN

COMPAT_PATHS = re.compile(OWN_FUZZ_TEST)
"""The paths fuzzed here (tests/test_openapi_fuzz.py leaves them out)."""
MAX_EXAMPLES = 10


@pytest.mark.slow
def test_the_compatible_routes_conform_to_the_openapi_document(tmp_path):
    app, key = production_app(tmp_path)
    spec = app.openapi()
    config = {**CONFIG, "generation": {**CONFIG["generation"], "max-examples": MAX_EXAMPLES},
              "headers": {"Authorization": f"Bearer {key}"},
              "request-timeout": 60}  # a submit on 2 busy shared cores can take more than the default 10 s
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(config))
    schema = schema.include(path_regex=COMPAT_PATHS.pattern)
    data_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()

    @schema.hook
    def map_case(context, case):
        if case.operation.path.startswith("/predictions"):
            case.headers = {**(case.headers or {}), "Prefer": "respond-async"}
        if isinstance(case.body, dict):
            values = case.body.get("input")
            image = values.get("image") if isinstance(values, dict) else None
            # a schema-valid image: a real PNG (an URL, even in a negative case: no DNS lookups of generated names)
            if isinstance(image, str) and re.fullmatch(FILE_PATTERN, image) and (
                    _positive(case) or not image.startswith("data:")):
                values["image"] = data_uri
            if isinstance(values, dict) and _positive(case):
                _fix_image_body(values, "application/json")  # the v1 input rules JSON Schema cannot state
            webhook = case.body.get("webhook")
            if isinstance(webhook, str) and re.fullmatch(WEBHOOK_URL_PATTERN, webhook):
                case.body["webhook"] = WEBHOOK_URL
        return case

    operations: set[str] = set()
    requests, failures, errors = 0, [], []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(event.recorder.label)
            requests += len(event.recorder.interactions)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        interaction = event.recorder.interactions.get(case_id)
                        request = interaction.request if interaction else None
                        response = interaction and interaction.response
                        failures.append(f"{event.recorder.label} [{event.phase.value}] {check.name}: "
                                        f"{check.failure_info.failure.title}; {request and request.method} "
                                        f"{request and request.uri} -> {response and response.status_code} "
                                        f"{response and (response.content or b'')[:200]!r}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {getattr(event, 'value', None)!r}")
    print(f"schemathesis: {len(operations)} operations, {requests} requests, {len(failures)} failures")
    assert errors == []
    assert failures == [], "\n".join(failures[:30])
    routes = {f"{method.upper()} {path}" for path, methods in spec["paths"].items() for method in methods
              if COMPAT_PATHS.match(path)}
    assert len(routes) >= 11 and routes <= operations
    assert requests >= len(routes) * MAX_EXAMPLES
