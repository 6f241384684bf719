"""A fake OpenAI-compatible backend whose model list a test changes while it runs (a model
pulled, one removed, the listing failing), for discovery (docs/protocol.md, Discovery).

It serves on a real socket, in a thread of the test process: `GET /v1/models` (the current
list, or 500 while `failing`), `GET /api/tags` when `ollama` (each model's details, as
Ollama words them), `POST /v1/chat/completions` (answers naming the model it was asked
for; `hold` keeps answers back, to count how many the publisher runs at once) and `POST
/_wake` and `POST /_sleep` (what its recipes call: the listing works, or fails, from then
on).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.hub import free_port


class ListingBackend:
    def __init__(self, models: list[str], ollama: bool = False, port: int | None = None) -> None:
        self.models = list(models)
        self.ollama = ollama
        self.failing = False
        self.wakes = 0  # POST /_wake calls (a wake recipe)
        self.sleeps = 0  # POST /_sleep calls (a sleep recipe)
        self.listings = 0  # GET /v1/models answered (or failed) so far
        self.asked: list[str] = []  # the `model` of each completion request
        self.inflight = 0
        self.max_inflight = 0
        self.hold = threading.Event()
        self.hold.set()  # set: answer at once
        self.lock = threading.Lock()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ListingBackend:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def details(self, model: str) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": "llama",
                "families": ["llama"], "parameter_size": "8.0B",
                "quantization_level": "Q4_K_M"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/v1/models":
                    with backend.lock:
                        backend.listings += 1
                        failing, models = backend.failing, list(backend.models)
                    if failing:
                        self._send(500, {"error": {"message": "listing broke"}})
                    else:
                        self._send(200, {"object": "list", "data": [
                            {"id": m, "object": "model", "owned_by": "fake"} for m in models]})
                elif self.path == "/api/tags" and backend.ollama:
                    self._send(200, {"models": [
                        {"name": m, "model": m, "details": backend.details(m)}
                        for m in list(backend.models)]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path in ("/_wake", "/_sleep"):  # a recipe's call
                    waking = self.path == "/_wake"
                    backend.wakes += waking
                    backend.sleeps += not waking
                    backend.failing = not waking  # asleep: its list cannot be read
                    self._send(200, {"awake": waking})
                    return
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with backend.lock:
                    backend.asked.append(body.get("model"))
                    backend.inflight += 1
                    backend.max_inflight = max(backend.max_inflight, backend.inflight)
                try:
                    backend.hold.wait(30)
                    self._send(200, {
                        "id": "c1", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": f"from {body.get('model')}"}}]})
                finally:
                    with backend.lock:
                        backend.inflight -= 1

        return Handler
