"""/openapi.json is generated from the validation schemas; schemathesis fuzzes the app
against it (in-process WSGI, bounded examples): no crash, and no response that breaks it."""

from __future__ import annotations

import dataclasses

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tether.actors.system import ActorSystem
from tether.config import Settings
from tether.http import schemas
from tether.http.app import create_app
from tether.http.openapi import ROUTES, document


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("openapi") / "fuzz.db"
    settings = dataclasses.replace(Settings(database_url=f"sqlite:///{path}"),
                                   keepalive_s=0.2, wake_timeout_s=1, infer_timeout_s=1)
    system = ActorSystem(settings).start()
    yield create_app(settings, system)
    system.stop()


# The publisher's task stream never ends by itself: it cannot be read in-process. The
# document itself is what schemathesis loads (and validates) to begin with.
FUZZED = [f"{method.upper()} {path}" for path, method, *_ in ROUTES
          if path not in ("/api/v1/llms/_provider-stream", "/openapi.json", "/status/events")]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


@pytest.fixture(scope="module")
def api(app):
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return {op.ok().label: op.ok() for op in loaded.get_all_operations()}


def no_internal_error(response, case) -> None:
    """502/503/504 are documented protocol answers (offline publisher, timeouts); a 500
    means the hub itself failed."""
    assert response.status_code != 500, f"{case.method} {case.path}: {response.text[:300]}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("label", FUZZED)
def test_the_api_keeps_to_its_openapi_document(api, label):
    # Driven through hypothesis directly: schemathesis' pytest plugin lags pytest 9.
    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=api[label].as_strategy())
    def run(case) -> None:
        response = case.call_and_validate(checks=CHECKS)
        no_internal_error(response, case)

    run()


def test_the_document_is_built_from_the_validation_schemas():
    doc = document()
    register = doc["paths"]["/api/v1/llms/_provider-register"]["post"]
    assert register["requestBody"]["content"]["application/json"]["schema"] is schemas.REGISTER
    assert len(ROUTES) == sum(len(ops) for ops in doc["paths"].values())
    assert {path for path, *_ in ROUTES} >= {
        "/healthz", "/v1/chat/completions", "/v1/models", "/api/v1/llms/{name}/infer",
        "/api/v1/llms/_provider-task/{taskId}/result"}
