"""HTTP clients for the two sides of a publisher: the hub and the local backend.

Both keep connections alive (urllib3 pools) and set TCP_NODELAY: a small request written in
two segments otherwise waits 40 ms on Nagle and delayed ACKs.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection

from tether import sse

SOCKET_OPTIONS = [*HTTPConnection.default_socket_options,
                  (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class Unreachable(Exception):
    """The other side did not answer (refused, reset, timed out)."""


def body_chunks(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body as it arrives (read1: whatever is there, chunked or not), for SSE."""
    while True:
        data = response.read1(65536)
        if not data:
            return
        yield data


def _pool(maxsize: int) -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=maxsize, block=False, retries=False,
                               socket_options=SOCKET_OPTIONS)


def _decode(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        text = data[:2000].decode(errors="replace")
        return {"error": {"message": text, "type": "backend_error"}}


class HubClient:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self._http = _pool(64)
        self._headers = {"Content-Type": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, Any]:
        try:
            r = self._http.request(
                "POST", self.url + path, body=json.dumps(body).encode(),
                headers={**self._headers, **(headers or {})},
                timeout=urllib3.Timeout(connect=5, read=timeout),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None
        return r.status, _decode(r.data)

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


class BackendError(Exception):
    """The backend answered a streamed request with a non-2xx status."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body


class BackendClient:
    def __init__(self, base_url: str, api_key: str | None, concurrency: int) -> None:
        self.base_url = base_url
        self._http = _pool(concurrency + 2)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def probe(self, timeout: float = 2.0) -> bool:
        """Up means GET {base_url}/models answers 200."""
        try:
            r = self._http.request("GET", f"{self.base_url}/models", headers=self._headers,
                                   timeout=urllib3.Timeout(total=timeout))
        except urllib3.exceptions.HTTPError:
            return False
        return r.status == 200

    def call(self, endpoint: str, request: dict[str, Any]) -> tuple[int, Any]:
        try:
            r = self._http.request(
                "POST", f"{self.base_url}/{endpoint}", body=json.dumps(request).encode(),
                headers=self._headers, timeout=urllib3.Timeout(connect=5, read=3600),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None
        return r.status, _decode(r.data)

    def stream(self, endpoint: str, request: dict[str, Any]) -> Iterator[str]:
        """Yield each `data:` payload of the backend's SSE answer, up to `[DONE]`."""
        try:
            r = self._http.request(
                "POST", f"{self.base_url}/{endpoint}", body=json.dumps(request).encode(),
                headers={**self._headers, "Accept": "text/event-stream"},
                preload_content=False, timeout=urllib3.Timeout(connect=5, read=3600),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None
        finished = False
        try:
            if r.status != 200:
                raise BackendError(r.status, _decode(r.read()))
            try:
                for item in sse.parse(sse.iter_lines(body_chunks(r))):
                    if isinstance(item, str):
                        continue
                    if item.data == "[DONE]":
                        break
                    yield item.data
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Unreachable(f"the backend stream broke: {exc}") from None
            finished = True
        finally:
            if finished:
                r.release_conn()
            else:
                r.close()  # aborted (cancel, error): drop the connection, never reuse it
