"""SIGTERM on one process of a cluster (docs/protocol.md, Shutdown; PROTOCOL.md: a draining
process gives its names' leases to a live process before it stops answering): the names
it owned move, with the requests waiting for them on behalf of other processes, so the
other process serves them and never answers 503 `shutting_down` for them."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.cluster.test_reads import shows
from tests.cluster.test_reconciliation import CLIENT_TIMEOUT_S, content, serve, split
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub, wait_until

pytestmark = pytest.mark.timeout(120)


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
