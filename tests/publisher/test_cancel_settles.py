"""A cancelled call keeps its publisher slot until the backend is done with it (the chaos
run saw a backend run 3 calls at once behind `max_concurrency` 2: the slot of a cancelled
call was handed on while the backend still ran it). Real processes: a hub, `tether
publish`, the demo backend, whose `max_inflight` is what it really ran at once."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import pytest

from tests.publisher.test_backend_states import chat
from tests.support.hub import wait_until
from tests.support.procs import wait_status

pytestmark = pytest.mark.timeout(90)

SLOW_S = 3.0  # the cancelled call's time at the backend


def leave_while_running(hub, backend, streaming: bool) -> None:
    """A client asks for a slow answer and leaves while the backend runs it."""
    # A stream's delay is before each of its chunks.
    body = json.dumps({"messages": [{"role": "user", "content": "slow"}], "stream": streaming,
                       **({"demo_chunks": 3, "demo_delay_s": SLOW_S / 3} if streaming else
                          {"demo_delay_s": SLOW_S})}).encode()
    host, port = hub.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/llms/llama/infer HTTP/1.1\r\nHost: hub\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: backend.stats()["inflight"] == 1, timeout=20)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_cancelled_call_holds_its_slot_until_the_backend_is_done(
        hub, backend_factory, publish_factory, streaming):
    backend = backend_factory()
    publish_factory([{"name": "llama", "model": "demo-model", "base_url": backend.base_url,
                      "max_concurrency": 1}])
    wait_status(hub, "llama", "active")
    leave_while_running(hub, backend, streaming)
    # The hub sees the client leave and cancels its task; the next requests must wait for
    # the backend to finish the cancelled call, never run beside it.
    with cf.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: chat(hub), range(2)))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    stats = backend.stats()
    assert stats["max_inflight"] == 1, stats
    assert stats["requests"] == 3, stats
