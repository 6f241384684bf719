"""A lean HTTP/1.1 keep-alive client for the relay's hot path (publisher → backend, publisher
→ hub results, hub → public upstreams).

Profiling showed urllib3 taking most of the publisher's CPU (a liveness poll per pooled
connection, URL and header machinery). This client sends each request in one write with
TCP_NODELAY, parses only what it needs, and keeps connections per origin. A request that
fails on a reused idle connection before any answer byte is retried once on a fresh one:
the server may have closed it while idle.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit


class WireError(Exception):
    """The peer could not be reached or broke the exchange."""


class _Conn:
    __slots__ = ("sock", "buf", "reused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.reused = False

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("connection closed by the peer")
        self.buf += data

    def read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > 65536:
                raise WireError("response head too large")
            self.fill()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise WireError(f"not an HTTP response: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def iter_body(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The body as it arrives; ends where the response ends."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while (eol := self.buf.find(b"\r\n")) < 0:
                    self.fill()
                size = int(self.buf[:eol].split(b";")[0], 16)
                self.buf = self.buf[eol + 2:]
                if size == 0:
                    while (eol := self.buf.find(b"\r\n")) < 0:  # trailers end with CRLF
                        self.fill()
                    self.buf = self.buf[eol + 2:]
                    return
                while len(self.buf) < size + 2:
                    self.fill()
                chunk, self.buf = self.buf[:size], self.buf[size + 2:]
                yield chunk
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                if not self.buf:
                    self.fill()
                chunk, self.buf = self.buf[:left], self.buf[left:]
                left -= len(chunk)
                yield chunk
        else:  # delimited by close
            if self.buf:
                yield self.buf
                self.buf = b""
            while data := self.sock.recv(65536):
                yield data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Response:
    """A response whose body is read as it arrives (`chunks()`) or whole (`read()`)."""

    def __init__(self, pool: Pool, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        self._keep = headers.get("connection", "").lower() != "close" and (
            "content-length" in headers
            or headers.get("transfer-encoding", "").lower() == "chunked")

    def chunks(self) -> Iterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            yield from conn.iter_body(self.headers)
        except (OSError, ValueError) as exc:
            self.close()
            raise WireError(str(exc)) from None
        self._conn = None
        if self._keep:
            self._pool.release(conn)
        else:
            conn.close()

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        """Drop the connection (an aborted read must never be reused)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Pool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(self, base_url: str, maxsize: int = 32, connect_timeout: float = 5.0) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self.host_header = url.netloc.rpartition("@")[2]
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.maxsize = maxsize
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []

    def _connect(self, timeout: float) -> _Conn:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            raise WireError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        sock.settimeout(timeout)
        return _Conn(sock)

    def release(self, conn: _Conn) -> None:
        if len(self._idle) < self.maxsize:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()

    def request(self, method: str, path: str, body: bytes | Iterator[bytes] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        """Send a request; the response head is read, its body is left to the caller.

        A `body` that is an iterator is sent chunked, each piece as it is produced (an
        NDJSON upload); such a request is not retried.
        """
        head = [f"{method} {self.prefix}{path} HTTP/1.1", f"Host: {self.host_header}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        streamed = body is not None and not isinstance(body, bytes)
        if streamed:
            head.append("Transfer-Encoding: chunked")
        elif body is not None:
            head.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not streamed:
            data += body or b""
        while True:
            # A streamed body cannot be sent twice, so it never risks an idle connection the
            # peer may have closed: it opens its own (it is long-lived anyway).
            fresh = streamed or not self._idle
            conn = self._connect(timeout) if fresh else self._idle.pop()
            try:
                conn.sock.settimeout(timeout)
                conn.sock.sendall(data)
                if streamed:
                    for piece in body:  # type: ignore[union-attr]
                        if piece:
                            conn.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.sock.sendall(b"0\r\n\r\n")
                status, response_headers = conn.read_head()
            except (OSError, WireError) as exc:
                conn.close()
                if conn.reused and not conn.buf:
                    continue  # the peer closed it while idle: once more, on a fresh one
                raise WireError(str(exc)) from None
            return Response(self, conn, status, response_headers)
