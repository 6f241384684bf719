"""tether/common/wire.py against a raw-socket server that answers exactly the bytes a test gives:
chunked bodies split at awkward places, trailers, Connection: close, stale pooled
connections, timeouts, big bodies and malformed answers."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.hub import wait_until
from tests.support.raw_server import Peer, RawServer
from tether.common import wire

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
    wait_until(lambda: server.served == 1, interval=0.01)  # it closed: ours is now stale
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
    assert server.connections_before_now() == 1  # sent once, not again on a new connection
    assert len(server.requests) == 2


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


def test_a_retired_pool_closes_each_connection_once_its_answer_ends(serve):
    """The publisher swaps its pool when it moves to another hub: a request under way
    finishes on its connection, and no connection to the old peer is kept afterwards."""
    answer_slow = threading.Event()
    ended: list[int] = []  # the connections the client closed, by index

    def handler(server: RawServer, peer: Peer) -> None:
        while (head := server.next_request(peer)) is not None:
            if b"/slow" in head:
                answer_slow.wait(10)
            peer.send(OK_HELLO)
        ended.append(peer.index)

    server = serve(handler)
    pool = wire.Pool(server.url)
    with cf.ThreadPoolExecutor(1) as run:
        slow = run.submit(lambda: pool.request("GET", "/slow").read())  # connection 0
        wait_until(lambda: len(server.requests) == 1, interval=0.01)
        assert pool.request("GET", "/a").read() == b"hello"  # connection 1, now idle
        pool.retire()
        wait_until(lambda: ended == [1], interval=0.01)  # the idle one at once
        answer_slow.set()
        assert slow.result(timeout=10) == b"hello"  # the one in use finishes its answer...
    wait_until(lambda: sorted(ended) == [0, 1], interval=0.01)  # ...then is closed, not kept


def test_an_upload_answered_and_closed_part_way_still_gets_its_answer(serve):
    """A hub that refuses an upload part-way answers 503 and closes without reading the
    rest, so the next write fails (a broken pipe, or a reset). The answer was sent first:
    the client reads it instead of reporting a break (the publisher ends the task with the
    hub's code, not publisher_disconnected)."""
    closed = threading.Event()
    refusal = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n"
               b"Connection: close\r\n\r\nno")

    def handler(server: RawServer, peer: Peer) -> None:
        server.next_request(peer)  # the head (and what came with it): the rest is unread
        peer.send(refusal)
        peer.sock.close()  # unread bytes in its buffer: the kernel resets
        closed.set()

    def pieces():
        yield b"first line\n"
        assert closed.wait(10)
        for _ in range(200):  # until a write meets the reset
            yield b"x" * 4096

    server = serve(handler)
    r = wire.Pool(server.url).request("POST", "/upload", pieces())
    assert r.status == 503 and r.read() == b"no"
