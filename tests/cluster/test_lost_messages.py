"""A forwarded infer whose bus message is lost (docs/protocol.md, Several hub processes:
at-most-once bus, a message lost in flight ends in a deadline's answer, never a hang).

The owner acknowledges every infer forwarded to it (its first event for the request, or
`Queued` when the request only waits); without one within `liveness_ttl_s` + a tick, the
forwarding process answers 503 `hub_busy` and withdraws the request at the owner.

The loss is Redis's own: a pub/sub subscriber whose output buffer passes
`client-output-buffer-limit pubsub` is disconnected and what was queued for it is dropped,
while PUBLISH still counted it as a receiver. Redis's default hard limit is 32 MB; the
test's redis-server gets a lower one, so that one large request (1 MiB) is lost while both
processes stay alive and every other message goes through.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.redisdb import Server

pytestmark = pytest.mark.timeout(120)

LIVENESS_TTL_S = 5.0  # the default
TICK_S = 1.0  # tether.cluster.bus.TICK_S: the check runs once a tick
ACK_S = LIVENESS_TTL_S + TICK_S  # tether.cluster.router: the PendingRequests' ack_s
SLACK_S = 4.0  # a busy machine's scheduling, two HTTP hops
LARGE = "x" * (1 << 20)  # larger than the buffer limit below: its message is dropped
# Far below the relay's own deadline (wake + infer timeouts + 30 s: 750 s by default),
# which is how long such a client waited before.
CLIENT_TIMEOUT_S = 60


def lossy(server: Server) -> None:
    """Redis cuts off a subscriber with more than 256 KiB of messages queued for it."""
    with redis.Redis.from_url(server.url) as admin:
        admin.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")


def served(pub, stream, via: Hub, content: str) -> bool:  # noqa: ANN001 - test helpers
    """A request through `via` reaches the publisher and is answered; False if the owner
    cannot be reached yet (its subscription is being renewed)."""
    call = in_background(lambda: via.infer("m1", content))
    try:
        task = stream.next_task("infer", timeout=3)
    except Exception:  # noqa: BLE001 - no task: the request got its 503
        assert result_of(call).status_code == 503
        return False
    # The first task the publisher sees after the loss: never the lost request's.
    assert task["request"]["messages"][0]["content"] == content
    assert pub.result(task["taskId"], {"status": 200, "body": content}).status_code == 200
    assert result_of(call).json() == content
    return True


def test_a_forwarded_infer_lost_on_the_bus_is_answered_503_within_seconds(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    a = cluster(bus_url=redis_server.url, liveness_ttl_s=LIVENESS_TTL_S)
    b = cluster(bus_url=redis_server.url, liveness_ttl_s=LIVENESS_TTL_S)
    pub, stream = online(a, "m1")  # a owns m1; b forwards to it
    wait_until(lambda: served(pub, stream, b, "before"), timeout=15)
    lossy(redis_server)

    started = time.monotonic()
    answer = b.infer("m1", LARGE, timeout=CLIENT_TIMEOUT_S)
    waited = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "hub_busy"
    assert waited < ACK_S + TICK_S + SLACK_S, waited

    # Both processes lived through it (a only renewed its subscription): nothing is left
    # of the lost request at a, and no task ever goes out for it.
    wait_until(lambda: served(pub, stream, b, "after"), timeout=15)
    wait_until(shows(a, "m1", queued=0, inFlight=0), timeout=10)
    assert a.get("/healthz").json()["bus"] == "ok"
    pub.close()


def test_a_forwarded_infer_that_waits_at_the_owner_is_not_given_up(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    """The acknowledgement of a request that only waits (its member is full) keeps it:
    it is served once a slot frees, however long after the acknowledgement deadline."""
    a = cluster(bus_url=redis_server.url, liveness_ttl_s=LIVENESS_TTL_S)
    b = cluster(bus_url=redis_server.url, liveness_ttl_s=LIVENESS_TTL_S)
    publisher, stream = online(a, {"name": "m1", "type": "openai", "model": "m",
                                   "maxConcurrency": 1})
    first = in_background(lambda: b.infer("m1", "first"))
    task = stream.next_task("infer", timeout=10)
    waiting = in_background(lambda: b.infer("m1", "waits", timeout=CLIENT_TIMEOUT_S))
    wait_until(shows(a, "m1", queued=1), timeout=10)
    queued_at = time.monotonic()
    # Past the deadline of an unacknowledged request, it still waits.
    wait_until(lambda: time.monotonic() - queued_at > ACK_S + 2 * TICK_S, timeout=30)
    assert "value" not in waiting and "error" not in waiting, (
        waiting, getattr(waiting.get("value"), "text", None))
    assert shows(a, "m1", queued=1)()
    assert publisher.result(task["taskId"], {"status": 200, "body": "first"}).status_code == 200
    assert result_of(first).json() == "first"
    task = stream.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == "waits"
    assert publisher.result(task["taskId"], {"status": 200, "body": "waits"}).status_code == 200
    assert result_of(waiting).json() == "waits"
    publisher.close()
