"""SIGTERM on one process of a cluster (docs/protocol.md, Shutdown; PROTOCOL.md: a draining
process gives its names' leases to a live process before it stops answering): the names
it owned move, with the requests waiting for them on behalf of other processes, so the
other process serves them and never answers 503 `shutting_down` for them."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import requests

from tests.cluster.test_reads import shows
from tests.cluster.test_reconciliation import (
    CLIENT_TIMEOUT_S,
    ONE_SLOT,
    content,
    serve,
    split,
)
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)

TWO_SLOTS = {**ONE_SLOT, "maxConcurrency": 2}


def test_a_draining_owner_hands_its_names_and_their_waiters_over(
        cluster: Callable[..., Hub]) -> None:
    a = cluster(env={"TETHER_GRACEFUL_TIMEOUT_S": "10"})
    b = cluster()
    pub, stream = split(a, b)  # a owns m1 (one slot); its member's session is homed on b
    serve(pub, stream, in_background(lambda: b.infer("m1", "warm")), "warm")
    first = in_background(lambda: b.infer("m1", "first", timeout=CLIENT_TIMEOUT_S))
    running = stream.next_task("infer", timeout=10)
    waiting = [in_background(lambda n=n: b.infer("m1", f"w{n}", timeout=CLIENT_TIMEOUT_S))
               for n in range(2)]
    wait_until(shows(a, "m1", queued=2), timeout=10)  # they wait at a, the owner

    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(20) == 0
    # The running task's slot is counted by the new owner: the waiters come one by one.
    assert pub.result(running["taskId"], {"status": 200, "body": "first"}).status_code == 200
    assert result_of(first).json() == "first"
    served = set()
    for _ in waiting:
        task = stream.next_task("infer", timeout=10)
        served.add(content(task))
        assert pub.result(task["taskId"], {"status": 200, "body": content(task)}).status_code \
            == 200
    assert served == {"w0", "w1"}
    for n, call in enumerate(waiting):
        answer = result_of(call)
        assert answer.status_code == 200, answer.text
        assert answer.json() == f"w{n}"
    serve(pub, stream, in_background(lambda: b.infer("m1", "after")), "after")
    pub.close()


def refuses_registers(hub: Hub) -> bool:
    """A register (of a name nobody asks for) is answered 503 once the process drains."""
    r = requests.post(f"{hub.url}/api/v1/llms/_provider-register", timeout=10, json={
        "providers": [{"name": "idle", "type": "openai", "model": "m"}]})
    return r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


def test_a_live_owner_keeps_a_request_its_member_refused_for_draining(
        cluster: Callable[..., Hub]) -> None:
    """The member's session is homed on the draining process, the name owned by the live
    one: a task sent to that session while it drains comes back to the owner, which waits
    for the publisher's next stream (here, on the live process) and serves it there."""
    a = cluster(env={"TETHER_GRACEFUL_TIMEOUT_S": "10"})
    b = cluster(publisher_grace_s=10)  # the default: a lost stream may come back
    pub, stream = split(b, a, TWO_SLOTS)  # b owns m1; its member's session is homed on a
    serve(pub, stream, in_background(lambda: b.infer("m1", "warm")), "warm")
    first = in_background(lambda: b.infer("m1", "first", timeout=CLIENT_TIMEOUT_S))
    running = stream.next_task("infer", timeout=10)  # a's drain waits for it

    a.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_registers(a), timeout=10)  # a drains
    second = in_background(lambda: b.infer("m1", "second", timeout=CLIENT_TIMEOUT_S))
    wait_until(shows(b, "m1", queued=1), timeout=10)  # refused by the session, kept by b
    assert pub.result(running["taskId"], {"status": 200, "body": "first"}).status_code == 200
    assert result_of(first).json() == "first"
    stream.wait_closed(timeout=10)  # drained: the publisher reconnects, to b
    assert a.proc.wait(20) == 0
    pub.url = b.url
    serve(pub, pub.open(), second, "second")
    pub.close()


def test_a_request_forwarded_to_a_draining_former_owner_goes_to_its_heir(
        cluster: Callable[..., Hub]) -> None:
    """b looked m1's owner up a moment ago (a) and sends it there after a handed m1 over:
    a, which no longer owns it, passes it on to its heir (here b, which takes the name),
    never drops it (b's client would wait for an acknowledgement, then get 503)."""
    a = cluster(env={"TETHER_GRACEFUL_TIMEOUT_S": "10"})
    b = cluster()
    pub, stream = split(a, b)  # a owns m1; its member's session is homed on b
    other = TestPublisher(a.url)  # a session on a with a task under way: a drains a while
    other.register({**ONE_SLOT, "name": "m2"})
    other_stream = other.open()
    busy = in_background(lambda: a.infer("m2", "busy", timeout=CLIENT_TIMEOUT_S))
    running = other_stream.next_task("infer", timeout=10)
    serve(pub, stream, in_background(lambda: b.infer("m1", "warm")), "warm")  # b: a owns m1

    a.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: refuses_registers(a), timeout=10)  # a handed its names over
    late = in_background(lambda: b.infer("m1", "late", timeout=CLIENT_TIMEOUT_S))
    serve(pub, stream, late, "late")
    assert other.result(running["taskId"], {"status": 200, "body": "busy"}).status_code == 200
    assert result_of(busy).json() == "busy"
    assert a.proc.wait(20) == 0
    pub.close()
    other.close()
