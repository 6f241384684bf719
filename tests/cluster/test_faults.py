"""Redis goes away under load and comes back empty (docs/protocol.md, Several hub processes:
at-most-once bus, a restarted Redis loses only live work): every request in flight ends
with an HTTP answer, none hangs, and the cluster serves through both processes again once
Redis is back. Redis here is a redis-server of the test's own (the machine's is shared)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from tests.support.hub import wait_until
from tests.support.procs import Publish, wait_status

pytestmark = pytest.mark.timeout(180)

# What a request may end with while Redis is gone: served, or a 5xx saying why. A request
# whose message to its owner was lost with Redis ends in hub_busy (no acknowledgement); one
# whose answer back was lost ends in infer_timeout, after the relay's deadline
# (wake_timeout_s + infer_timeout_s + 30 s), hence short timeouts here.
FAILURES_ALLOWED = {"publisher_offline", "publisher_disconnected", "hub_busy", "infer_timeout"}
TIMEOUTS = {"wake_timeout_s": 2, "infer_timeout_s": 5}
CLIENT_TIMEOUT_S = 60  # longer than any deadline of the hub's


def chat(url: str, timeout: float) -> tuple[int, str | None]:
    body = {"messages": [{"role": "user", "content": "Hello"}], "demo_delay_s": 0.2}
    r = requests.post(f"{url}/api/v1/llms/llama/infer", json=body, timeout=timeout,
                      headers={"Connection": "close"})
    code = r.json()["error"]["code"] if r.status_code != 200 else None
    return r.status_code, code


class Load:
    """Clients sending requests to the hubs, round robin, until stopped; every outcome kept
    (an exception, such as a read timeout, is an outcome too: it fails the test)."""

    def __init__(self, urls: list[str], clients: int, timeout: float) -> None:
        self.urls = urls
        self.timeout = timeout
        self.outcomes: list[tuple[float, str, int | str, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        n = i
        while not self._stop.is_set():
            url = self.urls[n % len(self.urls)]
            n += 1
            try:
                status, code = chat(url, self.timeout)
            except requests.RequestException as exc:
                status, code = type(exc).__name__, str(exc)
            self.outcomes.append((time.monotonic(), url, status, code))

    def served_since(self, since: float, url: str) -> int:
        return sum(1 for at, u, status, _ in self.outcomes
                   if at > since and u == url and status == 200)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a request never ended"


def test_a_redis_restart_under_load_answers_every_request_and_the_cluster_serves_again(
        cluster, redis_server, backend_factory, tmp_path):
    a = cluster(bus_url=redis_server.url, **TIMEOUTS)
    b = cluster(bus_url=redis_server.url, **TIMEOUTS)
    backend = backend_factory()
    publish = Publish(tmp_path, a.url, [{"name": "llama", "model": "demo-model",
                                         "base_url": backend.base_url,
                                         "max_concurrency": 8}]).start()
    try:
        wait_status(a, "llama", "active", timeout=30)
        load = Load([a.url, b.url], clients=6, timeout=CLIENT_TIMEOUT_S)
        try:
            started = time.monotonic()
            wait_until(lambda: load.served_since(started, a.url) >= 3
                       and load.served_since(started, b.url) >= 3, timeout=30)
            redis_server.stop()  # gone, with every lease, liveness key and message
            down = time.monotonic()
            for hub in (a, b):  # both processes noticed
                wait_until(lambda hub=hub: hub.get("/healthz", timeout=5).status_code == 503,
                           timeout=15)
            redis_server.start()  # back, empty
            back = time.monotonic()
            # The cluster serves again, through both processes.
            wait_until(lambda: load.served_since(back, a.url) >= 3
                       and load.served_since(back, b.url) >= 3, timeout=45)
        finally:
            load.stop()
    finally:
        publish.stop()
    # Every request ended with an HTTP answer: served, or a 5xx naming why.
    kinds = Counter((status, code) for _, _, status, code in load.outcomes)
    assert all(status == 200 or (isinstance(status, int) and status >= 500
                                 and code in FAILURES_ALLOWED)
               for status, code in kinds), kinds
    assert kinds[(200, None)] >= 12
    assert down < back
    for hub in (a, b):
        assert hub.get("/healthz").json() == {"status": "ok", "database": "ok", "bus": "ok"}
