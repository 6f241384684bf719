"""Requests whose name's owner process dies (docs/protocol.md, Several hub processes: a dead
process is noticed by its liveness key): one still waiting there is answered 503
`publisher_offline` within the liveness TTL; one already running on a publisher of a live
process goes on."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.test_liveness import kill_9
from tests.cluster.test_routing import SLEEPY, in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)


def test_a_request_waiting_at_an_owner_that_dies_is_answered_within_the_ttl(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pub, stream = online(a, SLEEPY)  # a owns sleepy
    waiting = in_background(lambda: b.infer("sleepy", "wait"))
    stream.next_task("wake", timeout=10)  # the request waits in a's queue for the wake
    kill_9(a)
    killed = time.monotonic()
    answer = result_of(waiting, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "publisher_offline"
    assert time.monotonic() - killed < 10  # the liveness TTL (5 s), not wake_timeout_s


def test_a_request_running_on_its_own_process_outlives_the_owner(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pub = TestPublisher(b.url)
    pub.register("owned-by-a")
    assert a.infer("owned-by-a").status_code == 503  # no stream yet; a owns the name now
    stream = pub.open()  # homed on b
    running = in_background(lambda: b.infer("owned-by-a", "outlive"))
    task = stream.next_task("infer", timeout=10)  # sent by a, the owner, to b's session
    kill_9(a)
    # b noticed: it buried a (and checked every request waiting on a in the same tick).
    wait_until(lambda: "is gone; its sessions' rows go inactive" in b.logs(), timeout=20)
    # The first request's task ran on b all along: its answer still reaches its client.
    assert pub.result(task["taskId"], {"status": 200, "body": "done"}).status_code == 200
    answer = result_of(running)
    assert answer.status_code == 200, answer.text
    assert answer.json() == "done"
    pub.close()
