"""The client for OpenAI-compatible servers: the publisher's local backends and the hub's
public (config-declared) upstreams both speak through `BackendClient`.

It runs over tether.common.wire (keep-alive connections, TCP_NODELAY, one write per request):
the relay's hot path. `Unreachable` and `decode` are shared with the publisher's client of
the hub (tether/publisher/hub_client.py), so callers catch one error type for both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tether.common import sse, wire

DONE = "[DONE]"  # the last `data:` of an OpenAI stream
# A cancelled call keeps its caller's concurrency slot until the backend closes the
# connection (it saw us leave and stopped, or finished anyway), at most this long: freed at
# the cancel, the slot's next task would run beside the one still running, and the backend
# would run more than its `maxConcurrency` (the chaos test saw 3 of 2).
CANCEL_SETTLE_S = 30.0


class Unreachable(Exception):
    """The other side did not answer (refused, reset, timed out). `before_any_byte`: it
    was refused or reset before answering anything, so it never ran the request."""

    def __init__(self, message: str, before_any_byte: bool = False) -> None:
        super().__init__(message)
        self.before_any_byte = before_any_byte


def decode(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        text = data[:2000].decode(errors="replace")
        return {"error": {"message": text, "type": "backend_error"}}


class BackendError(Exception):
    """The backend answered a streamed request with a non-2xx status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body


class BackendClient:
    """An OpenAI-compatible server at `base_url` (e.g. http://127.0.0.1:11434/v1)."""

    def __init__(self, base_url: str, api_key: str | None, concurrency: int,
                 read_timeout: float = 3600.0, settle_s: float = 0.0) -> None:
        """`settle_s` > 0: a cancelled call returns once the backend is done with it (at
        most that long; wire's settle): the publisher's slots, which stand for the backend's
        own (CANCEL_SETTLE_S)."""
        self.base_url = base_url
        self.read_timeout = read_timeout
        self._pool = wire.Pool(base_url, maxsize=concurrency + 2, settle_s=settle_s)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def probe(self, timeout: float = 2.0) -> bool:
        """Up means GET {base_url}/models answers 200."""
        try:
            r = self._pool.request("GET", "/models", headers=self._headers, timeout=timeout)
            r.read()
        except wire.WireError:
            return False
        return r.status == 200

    def call(self, endpoint: str, request: dict[str, Any]) -> tuple[int, Any]:
        try:
            r = self._pool.request("POST", f"/{endpoint}", json.dumps(request).encode(),
                                   self._headers, timeout=self.read_timeout)
            return r.status, decode(r.read())
        except wire.WireError as exc:
            raise Unreachable(str(exc), isinstance(exc, wire.Unreached)) from None

    def stream(self, endpoint: str, request: dict[str, Any],
               with_done: bool = False) -> Iterator[str]:
        """Yield each `data:` payload of the backend's SSE answer, up to `[DONE]`; with
        `with_done`, `[DONE]` itself too (DONE), so the caller can tell a stream that ended
        from one that was cut."""
        try:
            r = self._pool.request("POST", f"/{endpoint}", json.dumps(request).encode(),
                                   {**self._headers, "Accept": "text/event-stream"},
                                   timeout=self.read_timeout)
        except wire.WireError as exc:
            raise Unreachable(str(exc), isinstance(exc, wire.Unreached)) from None
        finished = False
        try:
            if r.status != 200:
                try:
                    body = r.read()
                except wire.WireError as exc:
                    raise Unreachable(str(exc)) from None
                raise BackendError(r.status, decode(body))
            chunks = r.chunks()
            try:
                for item in sse.parse(sse.iter_lines(chunks)):
                    if isinstance(item, str):
                        continue
                    if item.data == DONE:
                        if with_done:
                            yield DONE
                        break
                    yield item.data
                for _ in chunks:  # the end of the response follows [DONE]: read it, keep the
                    pass        # connection for the next request
            except wire.WireError as exc:
                raise Unreachable(f"the backend stream broke: {exc}") from None
            finished = True
        finally:
            if not finished:
                r.close()  # aborted (cancel, error): drop the connection, never reuse it
