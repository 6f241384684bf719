"""A fake OpenAI-compatible chat backend with a prefix (KV) cache, for the pools benchmark:
`python -m bench.kv_backend --port P [--ms-per-message 2] [--prefill-slots 1]
[--cache-entries 8192]`.

Real servers (vLLM, SGLang, llama.cpp) keep the attention state of prompts they have seen
and skip recomputing a prompt's cached prefix; only the rest costs prefill time. This
models that per message: it remembers the message prefixes it has served (a bounded LRU of
hashes, one per message boundary, the answer it generated included, as vLLM caches decoded
blocks too) and sleeps `ms_per_message` for each message of a prompt past its longest
cached prefix. It sleeps cooperatively (gevent), so a slow answer costs no CPU.

Prefill is compute-bound: a GPU computing several prompts shares one throughput between
them rather than multiplying it. So by default one prompt is prefilled at a time
(`prefill_slots` 1) and a cache miss costs every request queued behind it too, as on a real
server. `--prefill-slots 0` lifts the bound (prefill overlaps for free): then a miss costs
only its own request's latency.

Routes: GET /v1/models, POST /v1/chat/completions (not streamed), GET /stats (requests,
prompt messages, messages found cached, ms slept for prefill).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
from collections import OrderedDict
from typing import Any

import gevent
from gevent.lock import Semaphore

MODEL = "kv-model"


def _step(previous: bytes, message: Any) -> bytes:
    text = json.dumps(message, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(previous + text.encode(), digest_size=8).digest()


def _chain(messages: list[Any]) -> list[bytes]:
    """One hash per message boundary: element i identifies messages[: i + 1]."""
    out, h = [], b""
    for message in messages:
        h = _step(h, message)
        out.append(h)
    return out


class PrefixCache:
    """Message-prefix hashes, least recently used out beyond `entries`."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._lru: OrderedDict[bytes, None] = OrderedDict()

    def cached(self, chain: list[bytes]) -> int:
        """How many leading messages are cached (the longest cached prefix)."""
        for n in range(len(chain), 0, -1):
            if chain[n - 1] in self._lru:
                return n
        return 0

    def add(self, chain: list[bytes]) -> None:
        for h in chain:
            self._lru[h] = None
            self._lru.move_to_end(h)
        while len(self._lru) > self.entries:
            self._lru.popitem(last=False)


class KvBackend:
    def __init__(self, ms_per_message: float, entries: int, prefill_slots: int = 1) -> None:
        self.cost_s = ms_per_message / 1000
        self.cache = PrefixCache(entries)
        self.prefill: Any = Semaphore(prefill_slots) if prefill_slots else \
            contextlib.nullcontext()
        self.stats = {"requests": 0, "messages": 0, "cached": 0, "prefill_ms": 0.0}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method == "GET" and path == "/stats":
            return _json(start_response, 200, self.stats)
        if method == "GET" and path == "/v1/models":
            return _json(start_response, 200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})
        if method == "POST" and path == "/v1/chat/completions":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            return _json(start_response, 200, self.complete(
                json.loads(environ["wsgi.input"].read(length))))
        return _json(start_response, 404, {"error": {"message": f"no route {method} {path}",
                                                     "type": "invalid_request_error"}})

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        chain = _chain(messages)
        cached = self.cache.cached(chain)
        uncached = len(messages) - cached
        self.stats["requests"] += 1
        self.stats["messages"] += len(messages)
        self.stats["cached"] += cached
        self.stats["prefill_ms"] += uncached * self.cost_s * 1000
        if uncached:
            with self.prefill:
                gevent.sleep(uncached * self.cost_s)
        last = chain[-1] if chain else b""
        answer = {"role": "assistant", "content": f"answer {last.hex()}"}
        self.cache.add([*chain, _step(last, answer)])  # the next turn's prefix
        return {"id": f"chatcmpl-{last.hex()}", "object": "chat.completion", "created": 0,
                "model": body.get("model", MODEL),
                "usage": {"prompt_tokens": len(messages), "completion_tokens": 2,
                          "total_tokens": len(messages) + 2},
                "choices": [{"index": 0, "finish_reason": "stop", "message": answer}]}


def _json(start_response: Any, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {'OK' if status < 400 else 'Error'}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ms-per-message", type=float, default=2.0,
                        help="prefill time of each message past the cached prefix")
    parser.add_argument("--prefill-slots", type=int, default=1,
                        help="prompts prefilled at once (0: no bound)")
    parser.add_argument("--cache-entries", type=int, default=8192,
                        help="message-prefix hashes kept (LRU)")
    args = parser.parse_args(argv)
    from gevent import monkey

    monkey.patch_all()
    import socket

    from gevent.pywsgi import WSGIServer

    # As the demo backend: without TCP_NODELAY, pywsgi's second segment waits ~40 ms.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    backend = KvBackend(args.ms_per_message, args.cache_entries, args.prefill_slots)
    WSGIServer(listener, backend, log=None).serve_forever()


if __name__ == "__main__":
    main()
