"""tasks.run_infer against a real hub, with a backend client that fails in a way nobody
foresaw (a bug): the task is answered at once, never left to `infer_timeout_s`."""

from __future__ import annotations

import concurrent.futures as cf
import http.server
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tether.common.backend_client import BackendClient, BackendError
from tether.publisher import tasks
from tether.publisher.config import BackendConfig
from tether.publisher.hub_client import HubClient


class BuggyBackend(BackendClient):
    def call(self, endpoint: str, request: dict[str, Any]) -> tuple[int, Any]:
        raise KeyError("a bug in the publisher")

    def stream(self, endpoint: str, request: dict[str, Any],
               with_done: bool = False) -> Iterator[str]:
        yield '{"choices": []}'
        raise KeyError("a bug in the publisher")


@pytest.mark.parametrize("streaming", [False, True])
def test_an_unexpected_exception_answers_the_task_at_once(hub, publisher, caplog, streaming):
    publisher.register("llama")
    stream = publisher.open()
    config = BackendConfig(name="llama", model="m", base_url="http://127.0.0.1:9/v1")
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": streaming}
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{hub.url}/api/v1/llms/llama/infer", json=body,
                             timeout=20, headers={"Connection": "close"})
        task = stream.next_task("infer")
        hub_client = HubClient(hub.url, None)
        with caplog.at_level(logging.INFO, "tether.publisher.tasks"):
            tasks.run_infer(task, config, BuggyBackend(config.base_url, None, 1),
                            hub_client, lambda: publisher.session_id)
        hub_client.close()  # no idle keep-alive left to hold up the hub's SIGTERM
        r = answer.result(timeout=10)
    if streaming:  # the first chunk went out: the error ends the stream
        assert r.status_code == 200 and "event: error" in r.text
        assert "publisher_error" in r.text
    else:
        assert r.status_code == 502 and r.json()["error"]["code"] == "publisher_error"
    assert any(task["taskId"] in rec.getMessage() and rec.levelno >= logging.ERROR
               for rec in caplog.records), caplog.text


PATH = "/home/me/models/model.gguf"  # llama.cpp's model id: the file's path


class ScriptedBackend(BackendClient):
    """Answers with what the test gives: (status, body), or these stream payloads."""

    def __init__(self, status: int = 200, body: Any = None, payloads: tuple[str, ...] = (),
                 error: BackendError | None = None) -> None:
        super().__init__("http://127.0.0.1:9/v1", None, 1)
        self.status, self.body, self.payloads, self.error = status, body, payloads, error

    def call(self, endpoint: str, request: dict[str, Any]) -> tuple[int, Any]:
        return self.status, self.body

    def stream(self, endpoint: str, request: dict[str, Any],
               with_done: bool = False) -> Iterator[str]:
        if self.error is not None:
            raise self.error
        for data in self.payloads:
            if data == "[DONE]" and not with_done:
                return
            yield data


def _relay(hub, publisher, backend: BackendClient, streaming: bool) -> requests.Response:
    """One infer for llama through the hub, its task run by tasks.run_infer on `backend`."""
    publisher.register("llama")
    stream = publisher.open()
    config = BackendConfig(name="llama", model=PATH, base_url="http://127.0.0.1:9/v1")
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": streaming}
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{hub.url}/api/v1/llms/llama/infer", json=body,
                             timeout=20, headers={"Connection": "close"})
        task = stream.next_task("infer")
        hub_client = HubClient(hub.url, None)
        tasks.run_infer(task, config, backend, hub_client, lambda: publisher.session_id)
        hub_client.close()
        return answer.result(timeout=10)


def _chunk(content: str, finish: str | None = None) -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "model": PATH,
                       "choices": [{"index": 0, "delta": {"content": content},
                                    "finish_reason": finish}]})


@pytest.mark.parametrize("payloads", [(), (_chunk("Hel"),)], ids=["empty", "cut"])
def test_a_stream_that_ends_without_done_or_finish_reason_ends_in_an_error(
        hub, publisher, payloads):
    # llama-cpp-python on a context overflow: 200, then the stream ends with nothing.
    r = _relay(hub, publisher, ScriptedBackend(payloads=payloads), streaming=True)
    assert "data: [DONE]" not in r.text
    # After chunks, an `event: error`; before any, the same error as a whole answer.
    assert "publisher_error" in r.text and "stream ended early" in r.text, r.text
    assert r.status_code == (200 if payloads else 502)


@pytest.mark.parametrize("payloads", [
    (_chunk("Hi"), _chunk("", "stop"), "[DONE]"),
    (_chunk("Hi"), _chunk("", "stop")),  # a finish_reason: ended, even without [DONE]
    (_chunk("Hi"), "[DONE]"),
], ids=["both", "finish_reason", "done"])
def test_a_stream_that_ended_is_relayed_with_the_llm_name(hub, publisher, payloads):
    r = _relay(hub, publisher, ScriptedBackend(payloads=payloads), streaming=True)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
    data = [line[6:] for line in r.text.splitlines()
            if line.startswith("data: {")]
    assert [json.loads(d)["model"] for d in data] == ["llama"] * (len(payloads) - (
        payloads[-1] == "[DONE]"))
    assert PATH not in r.text


def test_a_whole_answer_carries_the_llm_name(hub, publisher):
    body = {"id": "c", "object": "chat.completion", "model": PATH,
            "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    r = _relay(hub, publisher, ScriptedBackend(200, body), streaming=False)
    assert r.status_code == 200 and r.json() == {**body, "model": "llama"}


@pytest.mark.parametrize("streaming", [False, True])
def test_an_error_body_not_in_the_openai_envelope_is_wrapped_status_unchanged(
        hub, publisher, streaming):
    backend = ScriptedBackend(404, {"detail": "Not Found"},
                              error=BackendError(404, {"detail": "Not Found"}))
    r = _relay(hub, publisher, backend, streaming)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Not Found", "type": "invalid_request_error",
                                  "code": None, "param": None}}


class _DoorHub:
    """A stand-in hub whose result route answers 503 (hub_busy) `refusals` times, then 200;
    it records each POST."""

    def __init__(self, refusals: int, upload_refused: str | None = None) -> None:
        self.refusals = refusals
        self.upload_refused = upload_refused  # a code: the upload is answered 503 with it
        self.posts: list[dict] = []
        self.uploads = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.headers.get("Content-Type") == "application/x-ndjson":
                    self.rfile.readline()
                    outer.uploads += 1
                    if outer.upload_refused is not None:
                        # A hub that cannot apply a line (the task's home unreachable
                        # over the bus, a drain) answers 503 part-way.
                        data = json.dumps({"error": {"code": outer.upload_refused}}).encode()
                        self.send_response(503)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.send_header("Connection", "close")
                        self.end_headers()
                        self.wfile.write(data)
                        self.close_connection = True
                        return
                    # A hub process killed mid-upload: the connection resets.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts.append(body)
                refused = len(outer.posts) <= outer.refusals
                answer = ({"error": {"code": "hub_busy"}} if refused else {"ok": True})
                data = json.dumps(answer).encode()
                self.send_response(503 if refused else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def door_hub() -> Iterator[Any]:
    made: list[_DoorHub] = []
    yield lambda refusals, upload_refused=None: made.append(
        _DoorHub(refusals, upload_refused)) or made[-1]
    for hub in made:
        hub.close()


def test_a_result_refused_503_is_posted_again_until_taken(door_hub):
    """A result landing on a process that could not reach the task's home (503 hub_busy)
    used to be dropped: its client waited until infer_timeout_s."""
    hub = door_hub(2)
    client = HubClient(hub.url, None)
    body = {"status": 200, "body": {"ok": 1}}
    tasks.post_result(client, lambda: "s1", "t1", body)
    client.close()
    assert hub.posts == [body] * 3


def test_a_result_refused_until_its_deadline_is_given_up(door_hub):
    hub = door_hub(1000)
    client = HubClient(hub.url, None)
    tasks.post_result(client, lambda: "s1", "t1", {"status": 200, "body": {}},
                      deadline=time.monotonic() + 1.0)
    client.close()
    assert 2 <= len(hub.posts) < 10  # backoff, and an end


def test_an_upload_broken_by_a_dying_hub_process_ends_as_publisher_disconnected(door_hub):
    """A worker killed mid-stream used to end its streams as publisher_error ("Broken
    pipe"): to the client, the publisher went away before answering."""
    hub = door_hub(0)
    client = HubClient(hub.url, None)
    config = BackendConfig(name="llama", model=PATH, base_url="http://127.0.0.1:9/v1")
    backend = ScriptedBackend(payloads=tuple(_chunk("x" * 200) for _ in range(50)))
    task = {"kind": "infer", "taskId": "t1", "llmName": "llama", "streaming": True,
            "request": {"messages": []}}
    tasks.run_infer(task, config, backend, client, lambda: "s1")
    client.close()
    assert hub.uploads == 1
    [posted] = hub.posts
    assert posted["error"]["code"] == "publisher_disconnected"
    assert posted["error"]["status"] == 503


@pytest.mark.parametrize("code", ["hub_busy", "database_unavailable", "shutting_down"])
def test_an_upload_refused_part_way_ends_with_the_hubs_own_fault_code(door_hub, code):
    """A stream whose upload a hub refused part-way (a Redis restart while the task's home
    was on another process: 503 hub_busy) used to end as publisher_error, which blames the
    Llm; the client now sees the hub's fault, as it would for a request refused whole."""
    hub = door_hub(0, upload_refused=code)
    client = HubClient(hub.url, None)
    config = BackendConfig(name="llama", model=PATH, base_url="http://127.0.0.1:9/v1")
    backend = ScriptedBackend(payloads=tuple(_chunk("x" * 200) for _ in range(50)))
    task = {"kind": "infer", "taskId": "t1", "llmName": "llama", "streaming": True,
            "request": {"messages": []}}
    tasks.run_infer(task, config, backend, client, lambda: "s1")
    client.close()
    assert hub.uploads == 1
    [posted] = hub.posts
    assert posted["error"]["code"] == code
    assert posted["error"]["status"] == 503
