"""tether/wire.py against a raw-socket server that answers exactly the bytes a test gives:
chunked bodies split at awkward places, trailers, Connection: close, stale pooled
connections, timeouts, big bodies and malformed answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tether import wire


class Peer:
    """One accepted connection, as the server sees it."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.buf = b""

    def request(self) -> bytes | None:
        """The next request's head and Content-Length body; None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[length:]
        return head

    def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        for piece in pieces:
            self.sock.sendall(piece)
            if pause:
                time.sleep(pause)


class RawServer:
    """Runs `handler(peer)` for each connection, on its own thread; counts what it saw."""

    def __init__(self, handler: Callable[[Peer], None]) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.requests: list[bytes] = []
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks.append(sock)
            peer = Peer(sock, self.connections)
            self.connections += 1
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: Peer) -> None:
        with contextlib.suppress(OSError):
            self.handler(peer)

    def next_request(self, peer: Peer) -> bytes | None:
        head = peer.request()
        if head is not None:
            self.requests.append(head)
        return head

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def serve():
    servers: list[RawServer] = []

    def make(handler: Callable[[RawServer, Peer], None]) -> RawServer:
        server = RawServer(lambda peer: handler(server, peer))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def keep_answering(answer: bytes) -> Callable[[RawServer, Peer], None]:
    def handler(server: RawServer, peer: Peer) -> None:
        while server.next_request(peer) is not None:
            peer.send(answer)
    return handler


def test_chunked_body_split_at_awkward_places_then_the_connection_is_reused(serve):
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\n\r\n")

    def handler(server: RawServer, peer: Peer) -> None:
        while server.next_request(peer) is not None:
            # One byte per write: every boundary (inside the size line, between CR and
            # LF, inside the data) falls between two reads somewhere.
            peer.send(*[answer[i:i + 1] for i in range(len(answer))], pause=0.001)

    server = serve(handler)
    pool = wire.Pool(server.url)
    for _ in range(2):
        r = pool.request("GET", "/x")
        assert r.status == 200 and r.read() == b"hello world"
    assert server.connections == 1


def test_trailers_are_consumed_so_the_next_answer_parses(serve):
    server = serve(keep_answering(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Checksum: 1234\r\nX-Other: yes\r\n\r\n"))
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"abc"
    assert pool.request("GET", "/b").read() == b"abc"  # same connection, clean start
    assert server.connections == 1


def test_connection_close_body_runs_to_eof_and_is_not_pooled(serve):
    def handler(server: RawServer, peer: Peer) -> None:
        server.next_request(peer)
        peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ", b"part two")
        peer.sock.close()

    server = serve(handler)
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"part one, part two"
    assert pool.request("GET", "/b").read() == b"part one, part two"
    assert server.connections == 2


def test_a_stale_pooled_connection_is_resent_on_a_fresh_one(serve):
    def handler(server: RawServer, peer: Peer) -> None:
        server.next_request(peer)
        peer.send(OK_HELLO)
        if peer.index == 0:
            peer.sock.close()  # the server drops the idle keep-alive connection
            return
        while server.next_request(peer) is not None:
            peer.send(OK_HELLO)

    server = serve(handler)
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"hello"
    time.sleep(0.05)  # the close reaches us: the pooled connection is now stale
    r = pool.request("POST", "/b", b"{}")
    assert r.status == 200 and r.read() == b"hello"
    assert server.connections == 2 and len(server.requests) == 2


def test_a_timeout_is_never_resent(serve):
    def handler(server: RawServer, peer: Peer) -> None:
        server.next_request(peer)
        peer.send(OK_HELLO)
        if server.next_request(peer) is not None:
            time.sleep(3)  # a slow call: the client gives up first

    server = serve(handler)
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"hello"
    started = time.monotonic()
    with pytest.raises(wire.WireError):
        pool.request("POST", "/slow", b"{}", timeout=0.5)
    assert time.monotonic() - started < 2
    time.sleep(0.3)
    assert server.connections == 1 and len(server.requests) == 2  # sent once, not twice


def test_a_reset_after_the_answer_began_is_not_resent(serve):
    def handler(server: RawServer, peer: Peer) -> None:
        server.next_request(peer)
        peer.send(OK_HELLO)
        if server.next_request(peer) is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-")
            peer.sock.close()

    server = serve(handler)
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"hello"
    with pytest.raises(wire.WireError):
        pool.request("POST", "/b", b"{}")
    assert server.connections == 1 and len(server.requests) == 2


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_1_mib(serve, chunked):
    body = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit
    if chunked:
        half = len(body) // 2
        answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n" % half + body[:half] + b"\r\n"
                  + b"%x\r\n" % (len(body) - half) + body[half:] + b"\r\n0\r\n\r\n")
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    server = serve(keep_answering(answer))
    pool = wire.Pool(server.url)
    for _ in range(2):
        assert pool.request("GET", "/big").read() == body
    assert server.connections == 1


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",             # status is not a number
    b"SSH-2.0-OpenSSH\r\n\r\n",                                   # not HTTP at all
    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\nxx",         # bad length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",  # bad size
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",  # overrun
])
def test_a_malformed_answer_is_a_wire_error(serve, answer):
    server = serve(keep_answering(answer))
    pool = wire.Pool(server.url)
    with pytest.raises(wire.WireError):
        pool.request("GET", "/x").read()


def test_no_content_is_bodyless_and_keeps_the_connection(serve):
    server = serve(keep_answering(b"HTTP/1.1 204 No Content\r\n\r\n"))
    pool = wire.Pool(server.url)
    for _ in range(2):
        r = pool.request("POST", "/x", b"{}", timeout=2)
        assert r.status == 204 and r.read() == b""
    assert server.connections == 1


def test_a_refused_connection_is_a_wire_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(wire.WireError):
            wire.Pool(f"http://127.0.0.1:{port}").request("GET", "/")


def test_close_drops_the_idle_connections(serve):
    server = serve(keep_answering(OK_HELLO))
    pool = wire.Pool(server.url)
    assert pool.request("GET", "/a").read() == b"hello"
    pool.close()
    assert pool.request("GET", "/b").read() == b"hello"
    assert server.connections == 2
