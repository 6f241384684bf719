"""The publisher's client of the hub's control plane: results and heartbeats over
tether.common.wire (the hot path), the long-lived task stream over urllib3 (a streamed response
whose socket the agent can shut down from another greenlet, see `socket_of`).

It holds the list of hub URLs (docs/protocol.md, Several hub processes) and talks to one at a
time. `move_on` points it at the next one; the agent and every backend actor share this one
client, so a task running across the move posts its later results, chunks and errors to the
new hub: in a cluster any process takes any result, and with one hub per URL the old one is
gone anyway (a result the new one never handed out is answered 404, and the task ends).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import urllib3
from urllib3.connection import HTTPConnection

from tether.common import wire
from tether.common.backend_client import Unreachable, decode

SOCKET_OPTIONS = [*HTTPConnection.default_socket_options,
                  (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class ResultSink(Protocol):
    def post(self, task_id: str, result: Any, deadline: float) -> bool: ...

    def takes_chunks(self) -> bool: ...


def body_chunks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as it arrives (read1: whatever is there, chunked or not), for SSE."""
    while True:
        data = response.read1(65536)
        if not data:
            return
        yield data


class HubClient:
    def __init__(self, urls: str | Sequence[str], key: str | None) -> None:
        self.urls: tuple[str, ...] = (urls,) if isinstance(urls, str) else tuple(urls)
        if not self.urls:
            raise ValueError("HubClient needs at least one hub URL")
        self._at = 0
        self.url = self.urls[0]
        self._http = urllib3.PoolManager(maxsize=8, block=False, retries=False,  # the stream
                                         socket_options=SOCKET_OPTIONS)
        self._posts = wire.Pool(self.url, maxsize=64)  # results and heartbeats: the hot path
        self._headers = {"Content-Type": "application/json"}
        # The session's result channel (tether.publisher.channel), when the publisher keeps
        # one: every result of every task goes there first (tasks.post_result).
        self.results: ResultSink | None = None
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def move_on(self) -> str:
        """Point every later call at the next hub URL (after the last, the first again);
        returns it. Requests under way finish on the old hub's connections, which are then
        closed instead of kept (the pool is swapped, never mutated under them)."""
        if len(self.urls) > 1:
            self._at = (self._at + 1) % len(self.urls)
            self.url = self.urls[self._at]
            old, self._posts = self._posts, wire.Pool(self.url, maxsize=64)
            old.retire()
            self._http.clear()
        return self.url

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, Any]:
        try:
            r = self._posts.request("POST", path, json.dumps(body).encode(),
                                    {**self._headers, **(headers or {})}, timeout=timeout)
            return r.status, decode(r.read())
        except wire.WireError as exc:
            raise Unreachable(str(exc)) from None

    def post_ndjson(self, path: str, lines: Iterator[bytes],
                    headers: dict[str, str] | None = None, timeout: float = 3600) -> \
            tuple[int, Any]:
        """One request whose body is produced as it goes (chunked NDJSON)."""
        try:
            r = self._posts.request(
                "POST", path, lines,
                {**self._headers, "Content-Type": "application/x-ndjson", **(headers or {})},
                timeout=timeout)
            return r.status, decode(r.read())
        except wire.WireError as exc:
            raise Unreachable(str(exc)) from None

    def close(self) -> None:
        """Drop idle keep-alive connections to the hub."""
        self._posts.close()
        self._http.clear()

    def open_stream(self, session_id: str, last_event_id: str | None,
                    read_timeout: float) -> urllib3.BaseHTTPResponse:
        # Connection: close: a stream's connection is never reused. Pooled after the stream
        # ends, it would be stale after a hub restart and hold up the hub's SIGTERM.
        headers = {**self._headers, "X-Provider-Session-Id": session_id,
                   "Accept": "text/event-stream", "Connection": "close"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            return self._http.request(
                "GET", self.url + "/api/v1/llms/_provider-stream", headers=headers,
                preload_content=False, timeout=urllib3.Timeout(connect=5, read=read_timeout),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None


def socket_of(response: Any) -> socket.socket | None:
    """The socket under a streamed urllib3 response. With `Connection: close` http.client
    moves it from the connection to the response's file, so look in both places."""
    if response is None:
        return None
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(response, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock
