"""The bench's own HTTP/1.1 client, on raw sockets: keep-alive, chunked bodies read as they
arrive, SSE frames; cheap enough not to be the limit. Also the requests several benches
send (a chat completion, streamed or not)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}


class Conn:
    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.addr)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        return self.sock

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: str = "") -> None:
        sock = self._connect()
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        return int(lines[0].split()[1]), headers

    def body(self, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._fill()
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """Yield each chunk of a chunked body as it arrives."""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size_line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(self.buf) < size + 2:
                self._fill()
            chunk, self.buf = self.buf[:size], self.buf[size + 2:]
            if size == 0:
                return
            yield chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def post_json(conn: Conn, path: str, body: dict[str, Any],
              headers: str = "") -> tuple[int, Any]:
    conn.send("POST", path, json.dumps(body).encode(), headers)
    status, hdrs = conn.head()
    return status, json.loads(conn.body(hdrs) or b"null")


def sse_frames(conn: Conn) -> Iterator[tuple[str, str]]:
    """Yield (event, data) of an SSE response already past its head."""
    pending = b""
    for chunk in conn.chunks():
        pending += chunk
        while b"\n\n" in pending:
            frame, pending = pending.split(b"\n\n", 1)
            event, data = "message", []
            for line in frame.decode().split("\n"):
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                yield event, "\n".join(data)


def stream_once(base: str, path: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """One streamed completion: (time to first chunk, total time, chunks)."""
    conn = Conn(base)
    started = time.perf_counter()
    conn.send("POST", path, json.dumps(body).encode())
    status, headers = conn.head()
    assert status == 200, (status, conn.buf[:200])
    first, count = None, 0
    for chunk in conn.chunks():
        n = chunk.count(b"data: {")
        if n and first is None:
            first = time.perf_counter() - started
        count += n
    conn.close()
    return first or 0.0, time.perf_counter() - started, count


def relay_n(base: str, n: int, concurrency: int,
            headers: dict[str, str] | None = None, model: str | None = None) -> None:
    """Exactly `n` non-streamed chat completions over `concurrency` keep-alive connections
    (to `model`, else CHAT's)."""
    body = json.dumps(CHAT if model is None else {**CHAT, "model": model}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    def worker(count: int) -> None:
        conn = Conn(base)
        for _ in range(count):
            conn.send("POST", "/v1/chat/completions", body, extra)
            status, headers = conn.head()
            conn.body(headers)
            assert status == 200, status
        conn.close()

    jobs = [gevent.spawn(worker, n // concurrency + (i < n % concurrency))
            for i in range(concurrency)]
    gevent.joinall(jobs, raise_error=True)
