"""Plain JSON routes through falcon.testing (streams are tested against a real server)."""

from __future__ import annotations

import io
import json

import pytest
from falcon import testing

from tether.http.app import create_app


class Exploding(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise AssertionError("the body was read")


@pytest.fixture
def app(system_factory):
    system = system_factory(max_body_bytes=1024)
    return create_app(system.settings, system)


@pytest.fixture
def client(app):
    return testing.TestClient(app)


def test_oversized_body_is_413_without_reading_it(app):
    environ = testing.create_environ(
        "/api/v1/llms/_provider-register", method="POST",
        headers={"Content-Length": str(100 * 1024 * 1024), "Content-Type": "application/json"},
    )
    environ["wsgi.input"] = Exploding()
    start = testing.StartResponseMock()
    body = json.loads(b"".join(app(environ, start)))
    assert start.status.startswith("413")
    assert body["error"]["code"] == "body_too_large"
    assert body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "body"),
        ({"status": 99}, "status"),
        ({"chunk": {}}, "chunk"),
        ({"chunks": []}, "chunks"),
        ({"chunk": {"data": 5}}, "chunk.data"),
        ({"error": {"status": 200}}, "error.status"),
        ([1, 2], "body"),
    ],
)
def test_task_result_bodies_are_validated_first(client, body, param):
    r = client.simulate_post("/api/v1/llms/_provider-task/1-x/result", json=body)
    assert r.status_code == 400, r.text
    assert r.json["error"]["param"] == param


def test_control_plane_bodies(client):
    r = client.simulate_post("/api/v1/llms/_provider-heartbeat", json={})
    assert r.status_code == 400 and r.json["error"]["param"] == "providerSessionId"
    r = client.simulate_post(
        "/api/v1/llms/_provider-status",
        json={"providerSessionId": "s", "llms": [{"name": "a", "status": "inactive"}]},
    )
    assert r.status_code == 400 and r.json["error"]["param"] == "llms[0].status"
    r = client.simulate_get("/api/v1/llms/_provider-stream")
    assert r.status_code == 400 and "X-Provider-Session-Id" in r.json["error"]["message"]


def test_every_error_is_the_openai_envelope(client):
    for r, status in (
        (client.simulate_get("/nowhere"), 404),
        (client.simulate_patch("/healthz"), 405),
        (client.simulate_post("/api/v1/llms/ghost/infer", json={"messages": [{"role": "u"}]}),
         404),
        (client.simulate_post("/api/v1/llms/_provider-register", body="[", headers={}), 400),
    ):
        assert set(r.json) == {"error"}
        assert set(r.json["error"]) == {"message", "type", "code", "param"}
        assert r.status_code == status, r.json


@pytest.fixture
def cors_client(system_factory):
    def make(origins: tuple[str, ...], auth: str = "on") -> testing.TestClient:
        system = system_factory(auth=auth, cors_origins=origins)
        return testing.TestClient(create_app(system.settings, system))

    return make


APP = "https://app.example"


def test_cors_preflight_is_answered_without_a_key(cors_client):
    client = cors_client((APP, "http://localhost:3000"))
    for path in ("/v1/chat/completions", "/v1/responses", "/api/v1/llms/m/infer"):
        r = client.simulate_options(path, headers={
            "Origin": APP, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status_code == 200, (path, r.text)
        assert r.headers["Access-Control-Allow-Origin"] == APP
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "Origin" in r.headers["Vary"]


def test_cors_headers_are_on_every_answer_errors_included(cors_client):
    client = cors_client((APP,))
    for r in (client.simulate_get("/healthz", headers={"Origin": APP}),
              client.simulate_get("/v1/models", headers={"Origin": APP}),  # 401: no key
              client.simulate_get("/nowhere", headers={"Origin": APP})):
        assert r.headers["Access-Control-Allow-Origin"] == APP, r.status_code
        assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
        assert "X-Tether-Llm" in r.headers["Access-Control-Expose-Headers"]
    assert client.simulate_get("/v1/models", headers={"Origin": APP}).status_code == 401
    # Another origin, or no Origin at all (not a browser): no CORS headers.
    for headers in ({"Origin": "https://evil.example"}, {}):
        r = client.simulate_get("/healthz", headers=headers)
        assert "Access-Control-Allow-Origin" not in r.headers
        r = client.simulate_options("/v1/chat/completions", headers={
            **headers, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_wildcard_and_default_off(cors_client):
    anyone = cors_client(("*",), auth="off")
    r = anyone.simulate_get("/v1/models", headers={"Origin": "https://x.example"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    closed = cors_client((), auth="off")
    r = closed.simulate_get("/v1/models", headers={"Origin": APP})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_a_publisher_key_over_max_llms_per_key_is_409_and_nothing_is_applied(system_factory):
    from tether.store import keys

    system = system_factory(auth="on", max_llms_per_key=2)
    client = testing.TestClient(create_app(system.settings, system))

    def register(key: str, *names: str):
        return client.simulate_post(
            "/api/v1/llms/_provider-register", headers={"Authorization": f"Bearer {key}"},
            json={"providers": [{"name": n, "type": "t", "model": "m"} for n in names]})

    alice, admin = keys.create("alice", "publisher"), keys.create("root", "admin")
    assert register(alice, "a", "b").status_code == 200
    r = register(alice, "c")
    assert r.status_code == 409 and r.json["error"]["code"] == "too_many_llms", r.text
    assert r.json["error"]["param"] == "providers"
    assert client.simulate_get("/api/v1/llms/c", headers={
        "Authorization": f"Bearer {admin}"}).status_code == 404
    assert register(admin, "c", "d", "e").status_code == 200  # admin keys are not counted
