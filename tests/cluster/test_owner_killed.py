"""Requests forwarded to a name's owner just before (or after) it is killed (issue 22 item
1b; docs/protocol.md, Faults between processes): each is answered, served by the new owner
or 503 within the liveness TTL + 2 s, never left to the relay's last-resort timer; a task
already running on a live process's publisher goes on, and its slot is counted by the new
owner."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.test_liveness import kill_9
from tests.cluster.test_reads import shows
from tests.cluster.test_reconciliation import CLIENT_TIMEOUT_S, content, serve, split
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub, wait_until

pytestmark = pytest.mark.timeout(120)

LIVENESS_TTL_S = 5.0
SLACK_S = 4.0


def test_requests_forwarded_to_an_owner_killed_are_answered(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pub, stream = split(b, a)  # b owns m1 (one slot); its member's session is homed on a
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    running = in_background(lambda: a.infer("m1", "running", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    waiting = in_background(lambda: a.infer("m1", "waiting", timeout=CLIENT_TIMEOUT_S))
    wait_until(shows(a, "m1", queued=1), timeout=10)  # at b, the owner
    kill_9(b)
    killed = time.monotonic()
    after = [in_background(lambda n=n: a.infer("m1", f"after{n}", timeout=CLIENT_TIMEOUT_S))
             for n in range(3)]
    for call in [waiting, *after]:
        answer = result_of(call, timeout=LIVENESS_TTL_S + 2 + SLACK_S)
        # Nothing of theirs ran: 503 (the owner is gone), or served by the new owner,
        # which counts the running task first (one slot): never beside it.
        if answer.status_code != 503:
            pytest.fail(f"served beside the running task: {answer.status_code} {answer.text}")
        assert answer.json()["error"]["code"] in ("publisher_offline", "hub_busy")
    assert time.monotonic() - killed < LIVENESS_TTL_S + 2 + SLACK_S
    assert pub.result(task["taskId"], {"status": 200, "body": "running"}).status_code == 200
    assert result_of(running).json() == "running"

    def served() -> bool:
        call = in_background(lambda: a.infer("m1", "later", timeout=CLIENT_TIMEOUT_S))
        try:
            later = stream.next_task("infer", timeout=2)
        except Exception:  # noqa: BLE001 - not yet: the lease has not moved
            assert result_of(call).status_code == 503
            return False
        assert content(later) == "later"
        pub.result(later["taskId"], {"status": 200, "body": "later"})
        assert result_of(call).json() == "later"
        return True

    wait_until(served, timeout=LIVENESS_TTL_S + 2 + SLACK_S)
    pub.close()
