"""The publisher's hub client over several hub URLs, against raw-socket servers: moving on
swaps its pool under a request in flight (which finishes on the old hub), later calls go
to the new hub, and the list wraps around."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable

from tests.support.hub import wait_until
from tests.support.raw_server import Peer, RawServer
from tether.publisher.hub_client import HubClient

OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def hub_like(slow_path: bytes, go: threading.Event,
             ended: list[int]) -> Callable[[RawServer, Peer], None]:
    """Answers every request 200 {} (a request for `slow_path` once `go` is set); notes
    each connection the client closes."""
    def handler(server: RawServer, peer: Peer) -> None:
        while (head := server.next_request(peer)) is not None:
            if slow_path in head:
                go.wait(10)
            peer.send(OK_JSON)
        ended.append(peer.index)
    return handler


def paths(server: RawServer) -> list[str]:
    return [head.split(b" ")[1].decode() for head in server.requests]


def test_moving_on_sends_later_calls_to_the_next_hub_and_wraps_around(serve):
    go = threading.Event()
    ended_a: list[int] = []
    a = serve(hub_like(b"/t1/result", go, ended_a))
    b = serve(hub_like(b"never", go, []))
    hub = HubClient([a.url, b.url], key="k")
    assert hub.url == a.url
    with cf.ThreadPoolExecutor(1) as run:
        # A task's result under way to A when the publisher moves to B.
        under_way = run.submit(hub.post, "/api/v1/llms/_provider-task/t1/result", {"x": 1})
        wait_until(lambda: len(a.requests) == 1, interval=0.01)
        assert hub.move_on() == b.url and hub.url == b.url
        assert hub.post("/api/v1/llms/_provider-task/t2/result", {"x": 2}) == (200, {})
        assert paths(b) == ["/api/v1/llms/_provider-task/t2/result"]
        go.set()
        assert under_way.result(timeout=10) == (200, {})  # it finished on A...
    wait_until(lambda: ended_a == [0], interval=0.01)  # ...its connection then closed, not kept
    assert paths(a) == ["/api/v1/llms/_provider-task/t1/result"]

    assert hub.move_on() == a.url  # past the last URL: the first again
    assert hub.post("/api/v1/llms/_provider-heartbeat", {}) == (200, {})
    assert paths(a)[-1] == "/api/v1/llms/_provider-heartbeat" and a.connections == 2
    assert len(b.requests) == 1
    hub.close()


def test_one_url_stays_put_and_keeps_its_connections(serve):
    a = serve(hub_like(b"never", threading.Event(), []))
    hub = HubClient(a.url, key=None)  # a single string is one URL, not a list of letters
    assert hub.urls == (a.url,)
    assert hub.post("/x", {}) == (200, {})
    assert hub.move_on() == a.url
    assert hub.post("/y", {}) == (200, {})
    assert a.connections == 1  # the pool was not swapped
    hub.close()
