"""The publisher's withdraw call (docs/protocol.md, Withdraw), against a fake hub:
at most 64 names a call, a hub that cannot answer now (503) is asked again, a refusal
(403) is not."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tether.publisher import registration
from tether.publisher.hub_client import HubClient


class FakeHub:
    """Answers each withdraw with the next of `statuses` (the last one from then on),
    keeping each request's body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                hub.bodies.append(json.loads(self.rfile.read(length)))
                status = hub.statuses[min(len(hub.bodies), len(hub.statuses)) - 1]
                data = json.dumps({"ok": True} if status == 200 else
                                  {"error": {"message": f"answered {status}"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = HubClient(f"http://127.0.0.1:{self.server.server_address[1]}", None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub() -> Iterator[Callable[[list[int]], FakeHub]]:
    made: list[FakeHub] = []

    def build(statuses: list[int]) -> FakeHub:
        made.append(FakeHub(statuses))
        return made[-1]

    yield build
    for hub in made:
        hub.close()


def test_a_hub_that_cannot_answer_now_is_asked_again(fake_hub, monkeypatch):
    monkeypatch.setattr(registration, "WITHDRAW_RETRIES_S", (0.0, 0.01, 0.01, 0.01))
    hub = fake_hub([503, 503, 200])
    assert registration.withdraw(hub.client, "s1", ["b", "a"]) is True
    assert hub.bodies == [{"providerSessionId": "s1", "names": ["a", "b"]}] * 3


def test_names_go_64_a_call_and_a_refusal_is_not_retried_as_such(fake_hub, monkeypatch):
    monkeypatch.setattr(registration, "WITHDRAW_RETRIES_S", (0.0, 0.01))
    hub = fake_hub([403])
    names = [f"m{i:03d}" for i in range(130)]
    assert registration.withdraw(hub.client, "s1", names) is True  # 403: nothing to do
    # 64 a call; refused, each name of a batch goes alone (only the one that is no
    # longer ours would be refused then).
    expected = []
    for batch in (names[:64], names[64:128], names[128:]):
        expected += [batch, *[[name] for name in batch]]  # each 403 once: not retried
    assert [b["names"] for b in hub.bodies] == expected


def test_a_hub_that_never_answers_is_given_up_on(fake_hub, monkeypatch):
    monkeypatch.setattr(registration, "WITHDRAW_RETRIES_S", (0.0, 0.01, 0.01))
    hub = fake_hub([503])
    assert registration.withdraw(hub.client, "s1", ["a"]) is False
    assert len(hub.bodies) == 3
