"""While Redis does not answer, a request that needs it gets 503 `hub_busy` (retry), never
500 `internal_error`: what the bus could not do is not a fault of the hub's code."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster.test_routing import online
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher
from tests.support.redisdb import Server

pytestmark = pytest.mark.timeout(90)

BURST = 300


def test_a_heartbeat_routed_through_another_process_gets_503_while_redis_is_down(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    a = cluster(bus_url=redis_server.url)
    b = cluster(bus_url=redis_server.url)
    pub, stream = online(a, "m1")  # the session's home is a
    through_b = TestPublisher(b.url, pub.session_id)
    wait_until(lambda: through_b.heartbeat().status_code == 200, timeout=15)

    redis_server.stop()
    answer = through_b.heartbeat()  # b must ask Redis where the session lives
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "hub_busy"
    assert "internal_error" not in b.logs()

    redis_server.start()
    wait_until(lambda: through_b.heartbeat().status_code == 200, timeout=30)
    stream.close()


def test_a_burst_of_requests_needing_redis_waits_for_connections_instead_of_failing(
        cluster: Callable[..., Hub]) -> None:
    a = cluster()
    b = cluster()
    pub, stream = online(a, "m1")
    through_b = TestPublisher(b.url, pub.session_id)
    wait_until(lambda: through_b.heartbeat().status_code == 200, timeout=15)
    # More at once than a process keeps Redis connections (100): each needs Redis to find
    # the session's home, and then the bus to reach it.
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        codes = Counter(pool.map(lambda _: through_b.heartbeat().status_code, range(BURST)))
    assert codes == {200: BURST}
    stream.close()
