"""Plain JSON routes through falcon.testing (streams are tested against a real server)."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from falcon import testing

from tether.actors.system import ActorSystem
from tether.config import Settings
from tether.http.app import create_app


class Exploding(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise AssertionError("the body was read")


@pytest.fixture
def app(tmp_path):
    settings = dataclasses.replace(
        Settings(database_url=f"sqlite:///{tmp_path / 'http.db'}"), max_body_bytes=1024
    )
    system = ActorSystem(settings).start()
    yield create_app(settings, system)
    system.stop()


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
    for r in (
        client.simulate_get("/nowhere"),
        client.simulate_patch("/healthz"),
        client.simulate_post("/api/v1/llms/ghost/infer", json={"messages": [{"role": "u"}]}),
        client.simulate_post("/api/v1/llms/_provider-register", body="[", headers={}),
    ):
        assert set(r.json) == {"error"}
        assert set(r.json["error"]) == {"message", "type", "code", "param"}
        assert r.status_code in (400, 404, 405)
