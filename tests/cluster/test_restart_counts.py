"""In-flight counts across a Redis restart (docs/protocol.md, Several hub processes: Lost
messages): a task's end lost while Redis was away frees its slot once Redis is back, and an
owner that takes a name over counts the tasks still running before it sends more, so
`maxConcurrency` never shrinks for good and is never exceeded. Redis here is a redis-server
of the test's own (the machine's is shared), killed and started again."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis
import requests

from tests.cluster.test_reads import member_in_flight, shows
from tests.cluster.test_reconciliation import (
    BOUND_S,
    CLIENT_TIMEOUT_S,
    ONE_SLOT,
    content,
    serve,
    split,
)
from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.redisdb import Server

pytestmark = pytest.mark.timeout(150)


def bus_ok(*hubs: Hub) -> Callable[[], bool]:
    return lambda: all(h.get("/healthz").json().get("bus") == "ok" for h in hubs)


def retried(call: Callable[[], requests.Response], within: float = 15) -> dict:
    """`call` in the background, made again while it is answered 503 at once (the cluster
    recovering from the restart: owners and homes being written again)."""
    deadline = time.monotonic() + within
    while True:
        made = in_background(call)
        made["thread"].join(1.0)
        if "value" not in made or made["value"].status_code != 503 \
                or time.monotonic() > deadline:
            return made


def test_a_task_end_lost_while_redis_restarts_frees_its_slot(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    """Redis is killed and started again on its saved data within the liveness TTL (a
    failover, say): every lease and liveness key is back, so the name's owner stays the
    same, and never hears that the task that ended meanwhile ended."""
    a, b = cluster(bus_url=redis_server.url), cluster(bus_url=redis_server.url)
    pub, stream = split(a, b)  # a owns m1; its member's session is homed on b
    serve(pub, stream, in_background(lambda: b.infer("m1", "warm")), "warm")
    # Forwarded to the owner, dispatched back here: its events do not cross the bus.
    first = in_background(lambda: b.infer("m1", "first", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    wait_until(lambda: member_in_flight(a, "m1") == 1, timeout=10)
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.save()  # what the restarted server starts from
    redis_server.stop()
    assert pub.result(task["taskId"], {"status": 200, "body": "first"}).status_code == 200
    assert result_of(first).json() == "first"  # its end could not reach the owner
    redis_server.start()
    restarted = time.monotonic()
    wait_until(bus_ok(a, b), timeout=15)
    second = retried(lambda: b.infer("m1", "second", timeout=CLIENT_TIMEOUT_S))
    serve(pub, stream, second, "second", timeout=BOUND_S)
    assert time.monotonic() - restarted < BOUND_S + 5
    wait_until(lambda: member_in_flight(a, "m1") == 0, timeout=5)
    pub.close()


def test_an_owner_that_takes_a_name_over_counts_the_tasks_still_running(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    """Redis restarts empty: the name's lease is gone, and the process that takes it starts
    its LlmActor afresh. The task its predecessor sent still runs at the publisher (one
    slot): the next request waits for it, it is not sent beside it."""
    a, b = cluster(bus_url=redis_server.url), cluster(bus_url=redis_server.url)
    pub, stream = online(b, ONE_SLOT)  # b owns m1 and homes its session
    first = in_background(lambda: b.infer("m1", "first", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    assert content(task) == "first"
    redis_server.stop()
    redis_server.start()  # empty
    wait_until(bus_ok(a, b), timeout=15)
    with redis.Redis.from_url(redis_server.url) as admin:  # taken again
        wait_until(lambda: any(True for _ in admin.scan_iter("*lease*")), timeout=15)

    second = retried(lambda: b.infer("m1", "second", timeout=CLIENT_TIMEOUT_S))
    # It waits at the owner, which counts the first (the owner's count is read from it).
    wait_until(shows(b, "m1", queued=1, inFlight=1), timeout=10)
    assert pub.result(task["taskId"], {"status": 200, "body": "first"}).status_code == 200
    assert result_of(first).json() == "first"
    serve(pub, stream, second, "second")  # the next task the publisher sees
    pub.close()
