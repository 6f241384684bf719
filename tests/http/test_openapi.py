"""/openapi.json against the app itself: every route falcon serves is in the document and
nothing else; the roles it names are the ones the hub enforces; a body its schemas refuse
is a 400 and the error has the documented shape; and schemathesis fuzzes each operation
(in-process WSGI, bounded examples): no crash, and no response that breaks the document."""

from __future__ import annotations

import dataclasses
import re

import falcon.inspect
import jsonschema
import pytest
import schemathesis
from falcon import testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.config import SchemathesisConfig

from tether.actors.system import ActorSystem
from tether.config import Settings
from tether.http import schemas
from tether.http.app import create_app
from tether.store import keys

SSE = "text/event-stream"


def _app(path, **overrides):
    settings = dataclasses.replace(Settings(database_url=f"sqlite:///{path}"), keepalive_s=0.2,
                                   wake_timeout_s=1, infer_timeout_s=1, **overrides)
    system = ActorSystem(settings).start()
    return create_app(settings, system), system


@pytest.fixture
def app(tmp_path):
    # Per test: conftest stops every actor after each test.
    app, system = _app(tmp_path / "fuzz.db")
    yield app
    system.stop()


def document(app) -> dict:
    r = testing.TestClient(app).simulate_get("/openapi.json")
    assert r.status_code == 200
    return r.json


def operations(doc: dict) -> list[tuple[str, str, dict]]:
    return [(path, method.upper(), op) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def endless(op: dict) -> bool:
    """An answer that is only an SSE stream never ends by itself: not for in-process
    clients, which read a body to its end."""
    return list(op["responses"]["200"]["content"]) == [SSE]


def error_schema(op: dict) -> dict:
    """What the document says an error of `op` looks like (the OpenAI envelope; a relayed
    route's may be its publisher's, anything; the Ollama routes' is their own)."""
    return op["responses"]["default"]["content"]["application/json"]["schema"]


def shape(path: str) -> str:
    return re.sub(r"{\w+}", "{}", path)  # the document names fields camelCase


def served(app) -> set[tuple[str, str]]:
    return {(shape(route.path), method.method) for route in falcon.inspect.inspect_routes(app)
            for method in route.methods if not method.internal}


def test_every_route_falcon_serves_is_documented_and_nothing_else(app, tmp_path):
    documented = {(shape(path), method) for path, method, _ in operations(document(app))}
    assert served(app) == documented
    assert ("/api/v1/llms/{}/infer", "POST") in documented  # the walk sees templated routes
    # The test-only route exists, and is documented, only where fault injection is on.
    faulty, system = _app(tmp_path / "faults.db", fault_injection=True)
    try:
        documented = {(shape(path), m) for path, m, _ in operations(document(faulty))}
        assert served(faulty) == documented and ("/_faults/crash", "POST") in documented
    finally:
        system.stop()


def concrete(path: str) -> str:
    return path.replace("{name}", "x").replace("{taskId}", "t-1")


def test_the_roles_the_document_names_are_the_roles_the_hub_enforces(tmp_path):
    secured, system = _app(tmp_path / "keys.db", auth="on")
    try:
        key = {role: keys.create(role, role) for role in ("publisher", "client", "admin")}
        client = testing.TestClient(secured)
        checked = 0
        for path, method, op in operations(document(secured)):
            role = op["x-tether-role"]
            assert ("security" in op) == (role != "none"), path
            # An invalid body: a request that gets past the key check ends at once.
            body = {"json": []} if "requestBody" in op else {}

            def call(who, path=path, method=method, body=body):
                headers = {"Authorization": f"Bearer {key[who]}"} if who else {}
                return client.simulate_request(method, concrete(path), headers=headers,
                                               **body)

            if role == "none":
                if not endless(op):
                    assert call(None).status_code not in (401, 403), (method, path)
                continue
            assert call(None).status_code == 401, (method, path)
            for other in ("publisher", "client"):
                if other != role:
                    refused = call(other)
                    assert refused.status_code == 403, (method, path, other)
                    jsonschema.validate(refused.json, error_schema(op))
                    if error_schema(op) in ({}, schemas.ERROR):  # the OpenAI envelope
                        assert refused.json["error"]["code"] == "forbidden"
            if not endless(op):
                for holder in {role, "admin"}:
                    assert call(holder).status_code not in (401, 403), (method, path, holder)
            checked += 1
        assert checked >= 15
    finally:
        system.stop()


def test_a_body_the_document_refuses_is_a_400_in_the_documented_shape(app):
    client = testing.TestClient(app)
    checked = 0
    for path, method, op in operations(document(app)):
        if "requestBody" not in op:
            continue
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        for body in ([], {}, {"providers": "no"}, "text"):
            if jsonschema.Draft202012Validator(schema).is_valid(body):
                continue  # the document accepts it: the fuzz test below covers those
            r = client.simulate_request(method, concrete(path), json=body)
            assert r.status_code == 400, (method, path, body, r.text)
            jsonschema.validate(r.json, error_schema(op))
            if error_schema(op) in ({}, schemas.ERROR):  # relayed routes' own refusals too
                jsonschema.validate(r.json, schemas.ERROR)
                assert r.json["error"]["code"] == "invalid_request"
            else:  # Ollama's shape names the field too
                assert r.json["error"].startswith(("body", "model", "messages")), r.json
            checked += 1
    assert checked >= 4 * 9  # nine operations take a body


# The document itself is what schemathesis loads (and validates) to begin with. Every
# check schemathesis has runs, with auth off and with a key of each role (auth on); the
# only 5xx allowed is the documented 503 (the fuzzed Llms have no publisher stream).
MODES = ["off", "publisher", "client", "admin"]
ALLOWED_5XX = ["503"]


class Restartable:
    """The fuzzed hub as a WSGI app that can start over on its database: its actors,
    limiters and the liveness of what registered are new, its keys and rows kept (a start
    marks every row inactive)."""

    def __init__(self, path, auth: str) -> None:
        self.path, self.auth = path, auth
        self.app, self.system = _app(path, auth=auth)

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)

    def restart(self) -> None:
        self.system.stop()
        self.app, self.system = _app(self.path, auth=self.auth)


@pytest.fixture(params=MODES)
def fuzzed_app(request, tmp_path):
    """(the hub, the Authorization header of the mode's key, or none with auth off)."""
    mode = request.param
    hub = Restartable(tmp_path / "fuzz.db", auth="off" if mode == "off" else "on")

    def bearer(role: str) -> dict:
        return {"Authorization": f"Bearer {keys.create(f'fuzz-{role}', role)}"}

    headers = {} if mode == "off" else bearer(mode)
    # One Llm for the fuzzer to find, with no stream: its infers are the documented 503.
    publisher = {} if mode == "off" else headers if mode in ("publisher", "admin") \
        else bearer("publisher")
    r = testing.TestClient(hub.app).simulate_post(
        "/api/v1/llms/_provider-register", headers=publisher,
        json={"providers": [{"name": "m1", "type": "t", "model": "m"}]})
    assert r.status_code == 200, r.text
    yield hub, headers
    hub.system.stop()


ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis' own


def config(headers: dict) -> SchemathesisConfig:
    # The key as the document's bearer scheme, so that schemathesis knows it for the auth
    # it removes or garbles on purpose (ignored_auth), rather than as a fixed header.
    key = headers.get("Authorization", "").removeprefix("Bearer ")
    return SchemathesisConfig.from_dict({
        **({"auth": {"openapi": {"bearer": {"bearer": key}}}} if key else {}),
        "checks": {
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", *ALLOWED_5XX]},
        },
        # The one rule JSON Schema cannot say (the document says it in words): a register
        # naming an Llm twice is 400, as PROTOCOL.md has it.
        "operations": [{
            "include-path": "/api/v1/llms/_provider-register",
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
        }],
    })


def loaded(app, headers: dict):
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=config(headers))


def fuzzed(app) -> list[str]:
    return [f"{method} {path}" for path, method, op in operations(document(app))
            if not endless(op) and path != "/openapi.json"]


LABELS = [
    "GET /healthz", "GET /metrics", "GET /status", "GET /status/status.js",
    "GET /status/status.css", "GET /status/state", "GET /api/v1/llms", "GET /api/v1/usage",
    "POST /api/v1/llms/_provider-register", "POST /api/v1/llms/_provider-heartbeat",
    "POST /api/v1/llms/_provider-status", "POST /api/v1/llms/_provider-withdraw",
    "POST /api/v1/llms/_provider-task/{taskId}/result", "POST /api/v1/llms/_provider-results",
    "GET /api/v1/llms/{name}", "POST /api/v1/llms/{name}/infer", "POST /v1/chat/completions",
    "POST /v1/completions", "POST /v1/embeddings", "POST /v1/responses", "GET /v1/models",
    "GET /v1/models/{name}",
    "GET /", "HEAD /", "GET /api/version", "GET /api/tags", "GET /api/ps", "POST /api/show",
    "POST /api/chat", "POST /api/generate", "POST /api/embed", "POST /api/embeddings",
]


def test_the_fuzz_list_is_the_documents(app):
    # pytest needs the labels before any app exists; this keeps them honest.
    assert sorted(LABELS) == sorted(fuzzed(app))


@pytest.mark.timeout(300)
def test_the_api_keeps_to_its_openapi_document(fuzzed_app):
    """Every operation, every check, in each mode. Driven through hypothesis directly:
    schemathesis' pytest plugin lags pytest 9."""
    app, headers = fuzzed_app
    api = {op.ok().label: op.ok() for op in loaded(app, headers).get_all_operations()}
    assert sorted(LABELS) == sorted(set(api) & set(LABELS))
    let_in: set[str] = set()  # operations that answered something past the key check
    for label in LABELS:
        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=api[label].as_strategy())
        def run(case) -> None:
            if case.call_and_validate().status_code not in (401, 403):
                let_in.add(case.operation.label)

        run()
    # The key is really sent: its role's operations let it in (with auth off, all do).
    assert {"GET /api/v1/llms", "POST /v1/chat/completions"} <= let_in or \
        headers and "POST /api/v1/llms/_provider-heartbeat" in let_in, let_in


@pytest.mark.timeout(300)
def test_the_api_keeps_to_its_openapi_document_through_its_links(fuzzed_app):
    """The stateful phase: sequences of calls that follow the document's links (a
    register's session into its heartbeat, its Llm into a read and an infer)."""
    hub, headers = fuzzed_app

    class EachOnAFreshHub(loaded(hub, headers).as_state_machine()):
        # Which links a sequence can follow depends on the answers it got (a register
        # refused 409 because an earlier sequence's session still holds the name, or 429
        # past the register rate, fills no bundle). Carried over from one sequence to the
        # next, and changing with time, that state made the same draws open other rules:
        # hypothesis' "inconsistent data generation" in about one run in eight.
        def setup(self) -> None:
            hub.restart()

    # Generation only: a failure is reported as it was found, not replayed to shrink it.
    run_state_machine_as_test(EachOnAFreshHub, settings=settings(
        max_examples=12, stateful_step_count=6, deadline=None, database=None,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck)))


# --- issue 27: the document tells the truth ---------------------------------------------


def test_with_auth_off_the_document_asks_for_no_key_and_with_it_names_the_roles(tmp_path):
    for auth in ("off", "on"):
        hub, system = _app(tmp_path / f"{auth}.db", auth=auth)
        try:
            doc = document(hub)
            for path, method, op in operations(doc):
                role = op["x-tether-role"]
                secured = auth == "on" and role != "none"
                assert ("security" in op) == secured, (auth, method, path)
                assert ({"401", "403"} <= set(op["responses"])) == secured, (method, path)
                if secured:
                    roles = [r for req in op["security"] for r in req["bearer"]]
                    assert roles == ([role] if role == "admin" else [role, "admin"])
            assert ("components" in doc) == (auth == "on")
        finally:
            system.stop()


def test_options_and_405_say_the_same_allow(app):
    client = testing.TestClient(app)
    for path, _, _ in operations(document(app)):
        allowed = client.simulate_options(concrete(path))
        refused = client.simulate_request("PATCH", concrete(path))
        assert allowed.status_code == 200 and refused.status_code == 405, path
        assert allowed.headers["Allow"] == refused.headers["Allow"], path
        assert "OPTIONS" in allowed.headers["Allow"].split(", "), path


@pytest.mark.parametrize("how", ["header", "query"])
def test_the_stream_session_id_is_required_and_must_fit_its_pattern(app, how):
    client = testing.TestClient(app)
    r = client.simulate_get("/api/v1/llms/_provider-stream")
    assert r.status_code == 400 and r.json["error"]["param"] == "X-Provider-Session-Id"
    for bad in ("-leading-dash", "a" * 129, "has space", "slash/in"):
        kw = ({"headers": {"X-Provider-Session-Id": bad}} if how == "header"
              else {"params": {"providerSessionId": bad}})
        r = client.simulate_get("/api/v1/llms/_provider-stream", **kw)
        assert r.status_code == 400, (bad, r.text)  # not 404: the id cannot exist
        assert r.json["error"]["code"] == "invalid_request"


def test_a_task_result_matches_exactly_one_branch_of_the_documents_oneof(app):
    doc = document(app)
    path = "/api/v1/llms/_provider-task/{taskId}/result"
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    client = testing.TestClient(app)
    for body in ({"status": 200, "chunk": {"data": "x"}}, {"chunks": [{"data": "x"}],
                                                           "error": {}}):
        assert not jsonschema.Draft202012Validator(schema).is_valid(body)
        r = client.simulate_post(concrete(path), json=body)
        assert r.status_code == 400, r.text  # two kinds at once are none of them
    for body in ({"status": 200}, {"chunk": {"data": "x"}}, {"chunks": [{"data": "x"}]},
                 {"error": {"message": "m"}}):
        branches = [b for b in schema["oneOf"]
                    if jsonschema.Draft202012Validator(b).is_valid(body)]
        assert len(branches) == 1, body
    assert "application/x-ndjson" in doc["paths"][path]["post"]["requestBody"]["content"]


def test_the_documented_shapes_of_rows_and_state_are_what_the_hub_serves(app):
    client = testing.TestClient(app)
    r = client.simulate_post("/api/v1/llms/_provider-register", json={
        "providers": [{"name": "m1", "type": "t", "model": "m"}]})
    assert r.status_code == 200, r.text
    doc = document(app)

    def answer(path: str) -> dict:
        return doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"]

    rows = client.simulate_get("/api/v1/llms").json
    assert rows["llms"][0]["members"]  # documented, and there
    jsonschema.validate(rows, answer("/api/v1/llms"))
    assert "members" in answer("/api/v1/llms")["properties"]["llms"]["items"]["properties"]
    state = client.simulate_get("/status/state").json
    assert state["llms"]
    jsonschema.validate(state, answer("/status/state"))
    assert answer("/status/state")["required"] == ["at", "llms", "errors", "totals"]
