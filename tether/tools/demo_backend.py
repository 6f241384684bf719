"""A small OpenAI-compatible backend with deterministic answers, for `tether demo`, the tests
and the benchmarks. It is a stand-in for Ollama / llama.cpp / vLLM, not a model.

Routes: GET /v1/models, POST /v1/chat/completions (streamed or not), POST /v1/completions,
POST /v1/embeddings, POST /v1/responses (streamed or not), GET /_demo/stats (requests
seen, streams the client aborted).
A streamed answer ends with a usage chunk when the request asks for it
(`stream_options.include_usage`), as OpenAI's does.
Request knobs (in the body, ignored by real backends): `demo_chunks` (how many chunks),
`demo_delay_s` (pause before each chunk), `demo_status` (answer this HTTP status),
`demo_reply` (answer exactly this text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

WORDS = ("tether", "relays", "your", "local", "model", "through", "one", "endpoint")


@dataclass
class DemoStats:
    """What GET /_demo/stats reports: what reached the backend and how it ended."""

    requests: int = 0
    streams: int = 0
    aborted: int = 0  # streams the client left before their end
    completed: int = 0
    inflight: int = 0
    max_inflight: int = 0
    models: list[Any] = field(default_factory=list)  # the last ten requests' "model"


class DemoBackend:
    def __init__(self, model: str = "demo-model", api_key: str | None = None) -> None:
        self.model = model
        self.api_key = api_key
        self.stats = DemoStats()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if path == "/_demo/stats":
            return _json(start_response, 200, asdict(self.stats))
        if self.api_key and environ.get("HTTP_AUTHORIZATION") != f"Bearer {self.api_key}":
            return _json(start_response, 401, _error("invalid api key", "invalid_api_key"))
        if method == "GET" and path == "/v1/models":
            return _json(start_response, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "demo"}]})
        if method != "POST" or path not in (
            "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"
        ):
            return _json(start_response, 404, _error(f"no route {method} {path}", "not_found"))
        self.stats.requests += 1
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        except ValueError:
            return _json(start_response, 400, _error("body is not JSON", "invalid_json"))
        self.stats.models = [*self.stats.models[-9:], body.get("model")]
        self._enter()
        if body.get("stream") and path != "/v1/embeddings" and "demo_status" not in body:
            # the stream leaves by itself
            return self._answer(start_response, path, body, environ.get(CLIENT_SOCKET))
        try:
            return self._answer(start_response, path, body)
        finally:
            self.stats.inflight -= 1

    def _enter(self) -> None:
        self.stats.inflight += 1
        self.stats.max_inflight = max(self.stats.max_inflight, self.stats.inflight)

    def _answer(self, start_response: Any, path: str, body: dict[str, Any],
                client: Any = None) -> Any:
        if "demo_status" in body:
            status = int(body["demo_status"])
            return _json(start_response, status, _error(f"demo status {status}", "demo"))
        if path == "/v1/embeddings":
            return _json(start_response, 200, self._embeddings(body))
        if path == "/v1/responses":
            return self._responses(start_response, body)
        chat = path == "/v1/chat/completions"
        if body.get("stream"):
            self.stats.streams += 1
            start_response("200 OK", [("Content-Type", "text/event-stream"),
                                      ("Cache-Control", "no-cache")])
            return self._stream(body, chat, client)
        self.stats.completed += 1
        return _json(start_response, 200, self._completion(body, chat))

    # --- answers -------------------------------------------------------------------------

    def _words(self, body: dict[str, Any]) -> list[str]:
        if "demo_reply" in body:  # answer exactly this text (tests: a canary)
            return str(body["demo_reply"]).split() or [""]
        n = int(body.get("demo_chunks", body.get("max_tokens") or 8))
        seed = int(hashlib.sha256(json.dumps(body.get("messages") or body.get("prompt"),
                                             sort_keys=True).encode()).hexdigest(), 16)
        return [WORDS[(seed + i) % len(WORDS)] for i in range(max(n, 1))]

    def _completion(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        text = " ".join(self._words(body))
        delay = float(body.get("demo_delay_s", 0))
        if delay:
            time.sleep(delay)
        usage = {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                 "total_tokens": 1 + len(text.split())}
        if chat:
            return {"id": "chatcmpl-demo", "object": "chat.completion", "created": 0,
                    "model": body.get("model", self.model), "usage": usage,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}]}
        return {"id": "cmpl-demo", "object": "text_completion", "created": 0,
                "model": body.get("model", self.model), "usage": usage,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}

    def _stream(self, body: dict[str, Any], chat: bool, client: Any) -> Iterator[bytes]:
        delay = float(body.get("demo_delay_s", 0))
        model = body.get("model", self.model)
        finished = False
        try:
            words = self._words(body)
            for i, word in enumerate(words):
                if delay:
                    time.sleep(delay)
                if _client_left(client):
                    return
                piece = word if i == 0 else f" {word}"
                finish = "stop" if i == len(words) - 1 else None
                if chat:
                    chunk = {"id": "chatcmpl-demo", "object": "chat.completion.chunk",
                             "created": 0, "model": model,
                             "choices": [{"index": 0, "delta": {"content": piece},
                                          "finish_reason": finish}]}
                else:
                    chunk = {"id": "cmpl-demo", "object": "text_completion", "created": 0,
                             "model": model, "choices": [{"index": 0, "text": piece,
                                                          "finish_reason": finish}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                # As OpenAI does: one more chunk, with no choices, before [DONE].
                usage = {"prompt_tokens": 1, "completion_tokens": len(words),
                         "total_tokens": 1 + len(words)}
                chunk = {"id": "demo", "object": "chat.completion.chunk" if chat
                         else "text_completion", "created": 0, "model": model, "choices": [],
                         "usage": usage}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
            self.stats.completed += 1
        finally:
            self.stats.inflight -= 1
            if not finished:
                self.stats.aborted += 1  # the client went away mid-stream

    def _responses(self, start_response: Any, body: dict[str, Any]) -> Any:
        """POST /v1/responses (the Responses API), streamed as typed events or not."""
        words = self._words({**body, "messages": body.get("input"),
                             "max_tokens": body.get("max_output_tokens")})
        model = body.get("model", self.model)
        text = " ".join(words)
        done = {"id": "resp_demo", "object": "response", "created_at": 0, "model": model,
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": None, "metadata": {}, "parallel_tool_calls": True,
                "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [],
                "output": [{"type": "message", "id": "msg_demo", "status": "completed",
                            "role": "assistant", "content": [
                                {"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": 1, "output_tokens": len(words),
                          "total_tokens": 1 + len(words),
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
        if not body.get("stream"):
            self.stats.completed += 1
            return _json(start_response, 200, done)
        self.stats.streams += 1
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])
        events: list[dict[str, Any]] = [{"type": "response.created",
                   "response": {**done, "status": "in_progress", "output": [], "usage": None}}]
        events += [{"type": "response.output_text.delta", "item_id": "msg_demo",
                    "output_index": 0, "content_index": 0, "logprobs": [],
                    "delta": word if i == 0 else f" {word}"} for i, word in enumerate(words)]
        events.append({"type": "response.completed", "response": done})
        return self._events(events)

    def _events(self, events: list[dict[str, Any]]) -> Iterator[bytes]:
        try:
            for n, event in enumerate(events):  # no [DONE]: the Responses API ends the body
                data = json.dumps({**event, "sequence_number": n})
                yield f"event: {event['type']}\ndata: {data}\n\n".encode()
            self.stats.completed += 1
        finally:
            self.stats.inflight -= 1

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append({"object": "embedding", "index": i,
                         "embedding": [round(b / 255, 4) for b in digest[:8]]})
        return {"object": "list", "data": data, "model": body.get("model", self.model),
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def _json(start_response: Any, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {'OK' if status < 400 else 'Error'}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def serve(host: str, port: int, model: str, api_key: str | None = None,
          pidfile: str | None = None) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.pywsgi import WSGIHandler, WSGIServer

    # pywsgi writes headers and body as two segments: without TCP_NODELAY the second waits
    # ~40 ms on Nagle + delayed ACK. Accepted sockets inherit the option from the listener.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((host, port))
    listener.listen(1024)
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))

    class Handler(WSGIHandler):
        def get_environ(self) -> dict[str, Any]:
            environ = super().get_environ()
            environ[CLIENT_SOCKET] = self.socket  # to see a client leave (_client_left)
            return environ

    server = WSGIServer(listener, DemoBackend(model, api_key), log=None, handler_class=Handler)
    server.serve_forever()


CLIENT_SOCKET = "demo.client_socket"


def _client_left(client: Any) -> bool:
    """Whether the client closed its side (EOF, or a reset): checked before each chunk, as
    llama.cpp's server and uvicorn's do, so a client that shut its side (a publisher's
    cancel) stops the stream, not only one whose next write fails."""
    raw = getattr(client, "_sock", client)  # gevent's socket wraps the OS-level one
    if raw is None:
        return False
    try:
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing to read: still there
    except OSError:
        return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tether demo-backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    parser.add_argument("--model", default="demo-model")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pidfile", default=None)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.model, args.api_key, args.pidfile)


if __name__ == "__main__":
    main()
