"""An HTTP client for OpenAI-compatible servers: the publisher's local backends and the hub's
public (config-declared) upstreams both speak through it.

Connections are kept alive (urllib3 pools) and set TCP_NODELAY: a small request written in
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


def pool(maxsize: int) -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=maxsize, block=False, retries=False,
                               socket_options=SOCKET_OPTIONS)


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
    def __init__(self, base_url: str, api_key: str | None, concurrency: int,
                 read_timeout: float = 3600.0) -> None:
        self.base_url = base_url
        self.read_timeout = read_timeout
        self._http = pool(concurrency + 2)
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
                headers=self._headers, timeout=urllib3.Timeout(connect=5, read=self.read_timeout),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None
        return r.status, decode(r.data)

    def stream(self, endpoint: str, request: dict[str, Any]) -> Iterator[str]:
        """Yield each `data:` payload of the backend's SSE answer, up to `[DONE]`."""
        try:
            r = self._http.request(
                "POST", f"{self.base_url}/{endpoint}", body=json.dumps(request).encode(),
                headers={**self._headers, "Accept": "text/event-stream"},
                preload_content=False, timeout=urllib3.Timeout(connect=5, read=self.read_timeout),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unreachable(str(exc)) from None
        finished = False
        try:
            if r.status != 200:
                raise BackendError(r.status, decode(r.read()))
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
