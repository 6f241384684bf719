"""A backend's state as the publisher sees it, with real processes (hub, `tether publish`,
the demo backend or a small backend of the test's own): a backend that went down is asleep,
no probe runs beside a task, and the publisher's own wake timeout is the hub's 504."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from tests.support.procs import wait_status


def chat(hub, name: str = "llama", **extra) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "Hello"}], **extra}
    return requests.post(f"{hub.url}/api/v1/llms/{name}/infer", json=body, timeout=60,
                         headers={"Connection": "close"})


def counted(command: list[str], count: Path) -> list[str]:
    """`command`, run by a recipe that first adds a line to `count`: how many wakes ran."""
    code = ("import os, sys; open(sys.argv[1], 'a').write('wake\\n'); "
            "os.execv(sys.argv[2], sys.argv[2:])")
    return [sys.executable, "-c", code, str(count), *command]


def wakes(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def test_a_backend_with_a_wake_recipe_that_went_down_is_woken_by_the_requests_that_find_it(
        hub, backend_factory, publish_factory, tmp_path):
    backend = backend_factory()
    count = tmp_path / "wakes"
    publish = publish_factory([{"name": "llama", "model": "demo-model",
                                "base_url": backend.base_url, "wake_timeout_s": 30,
                                "wake": {"command": counted(backend.command(), count)}}])
    wait_status(hub, "llama", "active")
    assert chat(hub).status_code == 200
    backend.kill(signal.SIGKILL)  # an OOM kill, a segfault: nobody told the publisher

    with cf.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: chat(hub), range(3)))
    assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
    assert wakes(count) == 1  # the requests that found it down share one wake
    assert backend.up()
    # It said hibernating when it found the backend down, and active once it was up.
    assert "cannot be reached" in publish.logs()
    wait_status(hub, "llama", "active")


def test_a_backend_without_a_wake_recipe_that_went_down_is_offline_until_its_probe_passes(
        hub, backend_factory, publish_factory):
    backend = backend_factory()
    publish_factory([{"name": "llama", "model": "demo-model", "base_url": backend.base_url}],
                    probe_interval_s=0.5)
    wait_status(hub, "llama", "active")
    backend.kill(signal.SIGKILL)
    r = chat(hub)  # the request that finds it down: nothing can bring it back
    assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    wait_status(hub, "llama", "hibernating")
    r = chat(hub)  # no wake recipe: the wake the hub asks for fails at once
    assert r.status_code == 503 and r.json()["error"]["code"] == "wake_failed"
    assert r.json()["error"]["message"] == \
        "could not wake 'llama': the backend is down and has no wake recipe"

    backend_factory(port=backend.port)  # back by itself: its probe passes
    wait_status(hub, "llama", "active")
    assert chat(hub).status_code == 200


def test_the_publishers_wake_timeout_is_the_hubs_504(hub, backend_factory, publish_factory):
    backend = backend_factory(start=False)  # and the recipe never brings it up
    never = [sys.executable, "-c", "import time; time.sleep(30)"]
    publish_factory([{"name": "llama", "model": "demo-model", "base_url": backend.base_url,
                      "wake_timeout_s": 1, "wake": {"command": never}}])
    wait_status(hub, "llama", "hibernating")
    r = chat(hub)
    assert r.status_code == 504, r.text
    assert r.json()["error"] == {"message": "'llama' did not wake within 1 s",
                                 "type": "server_error", "code": "wake_timeout", "param": None}


class Recorder(BaseHTTPRequestHandler):
    """A backend that streams slowly and notes every probe, and whether a stream ran then."""

    protocol_version = "HTTP/1.1"
    streaming = 0
    probes: list[int] = []  # the number of streams running at each probe

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        type(self).probes.append(type(self).streaming)
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not body.get("stream"):
            self._send(200, {"object": "chat.completion", "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}]})
            return
        type(self).streaming += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(int(body.get("chunks", 10))):
                finish = "stop" if i == int(body.get("chunks", 10)) - 1 else None
                chunk = {"object": "chat.completion.chunk", "model": "m", "choices": [
                    {"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.1)
            self.wfile.write(b"data: [DONE]\n\n")
        finally:
            type(self).streaming -= 1

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_a_wake_asked_while_tasks_run_is_answered_without_a_probe(
        hub, publish_factory):
    handler = type("Backend", (Recorder,), {"probes": [], "streaming": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        publish = publish_factory([{"name": "llama", "model": "m", "max_concurrency": 4,
            "base_url": f"http://127.0.0.1:{server.server_port}/v1",
            "wake": {"command": [sys.executable, "-c", "pass"]}}])
        wait_status(hub, "llama", "active")
        probes_at_start = len(handler.probes)
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True,
                "chunks": 30}
        stream = requests.post(f"{hub.url}/api/v1/llms/llama/infer", json=body, stream=True,
                               timeout=60, headers={"Connection": "close"})
        lines = stream.iter_lines()
        assert next(x for x in lines if x.startswith(b"data:"))
        # The hub believes it asleep (a status report crossed the stream, say): its next
        # request sends a wake to a publisher whose backend is busy streaming.
        session = publish.session_file.read_text().strip()
        requests.post(f"{hub.url}/api/v1/llms/_provider-status", timeout=10, json={
            "providerSessionId": session, "llms": [{"name": "llama", "status": "hibernating"}]})
        assert chat(hub).status_code == 200
        rest = [x for x in lines if x.startswith(b"data:")]
        assert rest[-1] == b"data: [DONE]" and len(rest) == 30  # the stream was never cut
        assert handler.probes[probes_at_start:] == []  # no probe beside the running stream
    finally:
        server.shutdown()
