"""A lean HTTP/1.1 keep-alive client for the relay's hot path (publisher → backend, publisher
→ hub results, hub → public upstreams).

Profiling showed urllib3 taking most of the publisher's CPU (a liveness poll per pooled
connection, URL and header machinery). This client sends each request in one write with
TCP_NODELAY, parses only what it needs, and keeps connections per origin. A request whose
reused idle connection turns out reset or closed before any answer byte is sent again on
another connection (the peer closed it while idle, so the request never reached it); after
a timeout, or once an answer has begun, it never is: a slow call must not run twice.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import gevent


class WireError(Exception):
    """The peer could not be reached or broke the exchange. Every low-level error (OSError,
    a malformed answer's ValueError, ...) reaches callers as this type."""


class _PeerClosed(ConnectionResetError):
    """EOF where more of the answer was due."""


# What an idle connection the peer closed looks like when it is used again. Only these,
# before any byte of an answer, allow a resend: the request never reached the peer's
# application. A timeout never does (the peer may be working on it: a slow call would run
# twice).
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError,
          ssl.SSLZeroReturnError)
_LOW_LEVEL = (OSError, ValueError, WireError)
MAX_HEAD = 65536


class Unreached(WireError):
    """Nothing reached the peer's application: the connection was refused, or refused or
    reset before any byte of an answer (a pool may run the request elsewhere)."""


def _send_pieces(conn: _Conn, pieces: Iterator[bytes]) -> None:
    """Send a chunked body. A peer may answer before it has read the whole body (a hub that
    refuses an upload part-way answers 503 and closes): the write then fails with a broken
    pipe or a reset, but the answer is already in our receive buffer. Stop sending and let
    the caller read it; when there is none, the read fails and reports the break."""
    try:
        for piece in pieces:
            if piece:
                conn.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass


def _send(sock: socket.socket, data: bytes) -> None:
    # One send() is the common case; gevent's sendall() first asks the kernel for the
    # socket's buffer size (a getsockopt syscall per call).
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class _Conn:
    __slots__ = ("sock", "buf", "reused", "received")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.reused = False
        self.received = False  # any byte of an answer on this use of the connection

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _PeerClosed("connection closed by the peer")
        self.received = True
        self.buf += data

    def line(self) -> bytes:
        """One CRLF-ended line (chunk sizes, trailers), without its ending."""
        while (eol := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise WireError("chunk line too long")
            self.fill()
        line, self.buf = self.buf[:eol], self.buf[eol + 2:]
        return line

    def read_head(self) -> tuple[int, str, dict[str, str]]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > MAX_HEAD:
                raise WireError("response head too large")
            self.fill()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise WireError(f"not an HTTP response: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), parts[0], headers

    def iter_body(self, headers: dict[str, str], bodyless: bool) -> Iterator[bytes]:
        """The body as it arrives; ends where the response ends."""
        if bodyless:
            return
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.line().split(b";")[0].strip(), 16)
                if size < 0:
                    raise WireError("negative chunk size")
                if size == 0:
                    while self.line():  # trailers, up to the empty line
                        pass
                    return
                left = size
                while left:  # a big chunk goes out as it arrives, not buffered whole
                    if not self.buf:
                        self.fill()
                    piece, self.buf = self.buf[:left], self.buf[left:]
                    left -= len(piece)
                    yield piece
                if self.line():
                    raise WireError("chunk data longer than its size")
        elif "content-length" in headers:
            left = int(headers["content-length"])
            if left < 0:
                raise WireError("negative Content-Length")
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

    def settle(self, grace: float) -> None:
        """Abandon a request whose caller was cancelled, and return once the peer is done
        with it: our side of the connection is shut (an engine sees its client leave and
        stops: llama.cpp's server, uvicorn's, vLLM's), what the peer still sends is
        discarded, and its close says its work ended. A server that goes on regardless
        (a non-streamed call is often finished anyway) ends it its own way. Bounded by
        `grace`: a peer that never closes is closed on."""
        timer = gevent.Timeout(grace)
        try:
            with timer:
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(grace)
                while self.sock.recv(65536):
                    pass
        except OSError:
            pass  # reset, or timed out: the peer is done with it either way
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
        finally:
            self.close()


def _abandon(conn: _Conn, exc: BaseException, settle_s: float) -> None:
    """A request given up part-way: a cancel (the greenlet killed) waits for the peer to
    finish with it (`_Conn.settle`) when the pool says so; anything else closes at once."""
    if settle_s > 0 and isinstance(exc, gevent.GreenletExit):
        conn.settle(settle_s)
    else:
        conn.close()


class Response:
    """A response whose body is read as it arrives (`chunks()`) or whole (`read()`)."""

    def __init__(self, pool: Pool, conn: _Conn, status: int, headers: dict[str, str],
                 version: str = "HTTP/1.1", method: str = "GET") -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn: _Conn | None = conn
        self._bodyless = method == "HEAD" or status in (204, 304)
        connection = headers.get("connection", "").lower()
        self._keep = (connection == "keep-alive" if version == "HTTP/1.0"
                      else connection != "close") and (
            self._bodyless or "content-length" in headers
            or headers.get("transfer-encoding", "").lower() == "chunked")

    def chunks(self) -> Iterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            yield from conn.iter_body(self.headers, self._bodyless)
        except _LOW_LEVEL as exc:
            self.close()
            raise WireError(str(exc) or type(exc).__name__) from None
        except gevent.GreenletExit as exc:  # cancelled while reading the answer
            self._conn = None
            _abandon(conn, exc, self._pool.settle_s)
            raise
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

    def __init__(self, base_url: str, maxsize: int = 32, connect_timeout: float = 5.0,
                 settle_s: float = 0.0) -> None:
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
        # > 0: a request cancelled part-way (its greenlet killed) returns only once the peer
        # closed the connection, at most this long (_Conn.settle): its caller's slot on
        # the peer stays taken until the peer's work has really ended.
        self.settle_s = settle_s
        self._idle: list[_Conn] = []
        self._retired = False

    def _connect(self, timeout: float) -> _Conn:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(timeout)
        except (OSError, ValueError, OverflowError) as exc:
            raise Unreached(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        return _Conn(sock)

    def close(self) -> None:
        """Close the idle connections (a server waits for idle keep-alives at shutdown)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def retire(self) -> None:
        """Close the idle connections, and each connection still in use once its answer
        ends: the pool is being replaced (the publisher moved to another hub), and a
        connection that came back to it would stay open to the old peer, never used."""
        self._retired = True
        self.close()

    def release(self, conn: _Conn) -> None:
        if not self._retired and len(self._idle) < self.maxsize:
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
        payload: bytes | None = None
        pieces: Iterator[bytes] | None = None
        if isinstance(body, bytes):
            payload = body
        elif body is not None:
            pieces = body
        streamed = pieces is not None
        if pieces is not None:
            head.append("Transfer-Encoding: chunked")
        elif payload is not None:
            head.append(f"Content-Length: {len(payload)}")
        try:
            data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError as exc:
            raise WireError(f"a header cannot be sent: {exc}") from None
        if payload is not None:
            data += payload
        while True:
            # A streamed body cannot be sent twice, so it never risks an idle connection the
            # peer may have closed: it opens its own (it is long-lived anyway).
            fresh = streamed or not self._idle
            conn = self._connect(timeout) if fresh else self._idle.pop()
            conn.received = False
            try:
                conn.sock.settimeout(timeout)
                _send(conn.sock, data)
                if pieces is not None:
                    _send_pieces(conn, pieces)
                status, version, response_headers = conn.read_head()
                while 100 <= status < 200:  # an interim answer (100 Continue): the next
                    status, version, response_headers = conn.read_head()
            except _LOW_LEVEL as exc:
                conn.close()
                if conn.reused and not conn.received and isinstance(exc, _STALE):
                    continue  # the peer closed it while idle: once more, on another one
                if isinstance(exc, ConnectionError) and not conn.received:
                    raise Unreached(str(exc)) from None  # refused or reset: nothing ran
                raise WireError(str(exc) or type(exc).__name__) from None
            except BaseException as exc:  # the body's producer failed, or a cancel
                _abandon(conn, exc, self.settle_s)
                raise
            return Response(self, conn, status, response_headers, version, method)
