"""A process whose connections to Redis go silent, with no reset (a cut network, a dropped
route), while a request it forwarded runs elsewhere: what the owner publishes back is lost,
and the forwarder must notice without an error from the socket. Its subscription pings
Redis while nothing else comes; three pings unanswered are a break (tether.cluster.bus), and
a break answers every request that waits on another process (test_lost_replies.py).
Before, the reader waited in a read without a deadline, and the client for the relay's.

When the owner's Dispatched was lost too, the forwarder's relay withdraws the request before
it answers: that withdraw must not hold the answer while Redis is silent (it did, a lookup's
and a send's socket timeouts, ~6 s: a CI run saw 15 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from tests.cluster.test_routing import in_background, online, result_of
from tests.support.chaos import ChaosProxy
from tests.support.hub import Hub, wait_until
from tests.support.redisdb import Database
from tether.cluster.pending import WITHDRAW_WAIT_S

pytestmark = pytest.mark.timeout(120)

# Longer than the silence, so neither process is taken for dead meanwhile (the same on both).
LIVENESS_TTL_S = 30
PING_S, UNANSWERED = 2.0, 3  # tether.cluster.bus: a break is noticed within ~8 s of silence
NOTICED_S = PING_S * (UNANSWERED + 1)
# A busy machine's scheduling and two HTTP hops: below a Redis socket timeout (5 s), which is
# what any wait on the silent bus in the answer's path would add.
SLACK_S = 3.0
ANSWERED_S = NOTICED_S + WITHDRAW_WAIT_S + SLACK_S


@pytest.mark.parametrize("dispatch_heard", [True, False], ids=["dispatched", "dispatch-lost"])
def test_a_forwarder_whose_redis_goes_silent_answers_its_waiting_request(
        redis_db: Database, cluster: Callable[..., Hub], dispatch_heard: bool) -> None:
    server = urlsplit(redis_db.url)
    proxy = ChaosProxy(server.port or 6379)
    via_proxy = redis_db.url.replace(f":{server.port}/", f":{proxy.port}/")
    # the owner, straight to Redis
    a = cluster(liveness_ttl_s=LIVENESS_TTL_S, fault_injection=not dispatch_heard)
    b = cluster(bus_url=via_proxy, liveness_ttl_s=LIVENESS_TTL_S)
    try:
        pub, stream = online(a, "m1")
        if not dispatch_heard:  # b never learns its request was dispatched: it withdraws it
            drop = a.post("/_faults/drop", {"kind": "reply:Dispatched", "heard": True})
            assert drop.json() == {"dropping": True}, drop.text
        call = in_background(lambda: b.infer("m1", "held", timeout=120))
        task = stream.next_task("infer", timeout=15)  # forwarded by b, running at a

        proxy.blackhole.set()
        silent = time.monotonic()
        # The answer goes to Redis, which sends it to b's subscription, into the void.
        assert pub.result(task["taskId"], {"status": 200, "body": "lost"}).status_code == 200
        answer = result_of(call, timeout=ANSWERED_S + 30)
        waited = time.monotonic() - silent
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "hub_busy"
        assert waited < ANSWERED_S, waited

        proxy.blackhole.clear()  # the network is back: b serves again

        def served() -> bool:
            call = in_background(lambda: b.infer("m1", "after", timeout=20))
            try:
                task = stream.next_task("infer", timeout=5)
            except Exception:  # noqa: BLE001 - not through yet: b's bus still recovering
                return result_of(call, timeout=30).status_code == 200
            pub.result(task["taskId"], {"status": 200, "body": "after"})
            return result_of(call, timeout=30).status_code == 200
        wait_until(served, timeout=40, interval=1)
    finally:
        proxy.close()
