"""Keys and per-key limits hold across hub processes on one bus (docs/protocol.md, Several hub
processes: revocations reach every process within a second; rate_limit_per_min,
max_inflight_per_key and max_streams_per_key are counted in Redis)."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.e2e.test_security import CHAT, KeyedPublisher, call, make_key
from tests.support.factory import factory
from tests.support.hub import wait_until
from tests.support.kill import kill_hub
from tests.support.procs import TETHER
from tests.support.publisher import Stream


@pytest.fixture
def pair(cluster):
    """Two hub processes with auth on, on one database and one bus."""
    return cluster(auth="on"), cluster(auth="on")


def test_a_revocation_reaches_every_process_within_a_second(pair, redis_db):
    a, b = pair
    key = make_key(a, "client", "app")
    seen: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    stop = threading.Event()

    def use(name, hub) -> None:
        while not stop.is_set():
            seen[name].append((time.monotonic(), call(hub, "GET", "/api/v1/llms", key)
                               .status_code))
            time.sleep(0.02)

    users = [threading.Thread(target=use, args=item, daemon=True)
             for item in (("a", a), ("b", b))]
    for user in users:
        user.start()
    try:
        wait_until(lambda: len(seen["a"]) >= 5 and len(seen["b"]) >= 5)
        done = subprocess.run([*TETHER, "keys", "revoke", "app", "--database-url",
                               a.settings["database_url"], "--bus-url", redis_db.url],
                              capture_output=True, text=True, timeout=30, check=True)
        revoked = time.monotonic()
        refused = {name: wait_until(lambda name=name: next(
            (at for at, status in seen[name] if status == 401), None), timeout=5)
            for name in seen}
        wait_until(lambda: min(s[-1][0] for s in seen.values()) > max(refused.values()) + 0.5)
    finally:
        stop.set()
        for user in users:
            user.join(5)
    # Both processes follow the revocation channel: they heard it, not a re-read.
    assert "told 2 hub process(es)" in done.stdout, done.stdout
    for name, at in refused.items():
        assert at - revoked < 1.0, name
        assert {status for t, status in seen[name] if t >= at} == {401}, name
        assert {status for t, status in seen[name] if t < at} == {200}, name


def test_the_rate_limit_is_counted_across_processes(cluster):
    a, b = cluster(auth="on", rate_limit_per_min=4), cluster(auth="on", rate_limit_per_min=4)
    key = make_key(a, "client", "app")
    # An unknown model still counts: the limit is checked before the lookup.
    body = {"model": "nothing-here", **CHAT}
    for hub in (a, b, a, b):
        r = call(hub, "POST", "/v1/chat/completions", key, json=body)
        assert r.status_code == 404, r.text
    for hub in (a, b):  # each process has seen only two, yet the key has spent its four
        r = call(hub, "POST", "/v1/chat/completions", key, json=body)
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited"
        assert "4 requests a minute" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    other = make_key(a, "client", "other")  # counted per key
    assert call(b, "POST", "/v1/chat/completions", other, json=body).status_code == 404


@pytest.fixture
def raw_streams():
    """Open `_provider-stream` requests by hand: `open(hub, key, session_id)`; each status is
    known without reading the SSE body to its end. All closed after the test."""
    def open_one(hub, key: str, session_id: str) -> Stream:
        return Stream(hub.url, session_id, headers={"Authorization": f"Bearer {key}"})

    yield from factory(open_one, Stream.close)


@pytest.fixture
def one_stream_per_key(cluster):
    """Two processes allowing one stream per key, each with a publisher of the same key,
    registered: (a, b, key, first publisher on a, second on b). Closed after the test."""
    a = cluster(auth="on", max_streams_per_key=1)
    b = cluster(auth="on", max_streams_per_key=1)
    key = make_key(a, "publisher", "pub")
    first, second = KeyedPublisher(a.url, key), KeyedPublisher(b.url, key)
    try:
        first.register("one")
        second.register("two")
        yield a, b, key, first, second
    finally:
        first.close()
        second.close()


def test_open_streams_are_counted_across_processes(one_stream_per_key, raw_streams):
    a, b, key, first, second = one_stream_per_key
    held = first.open()
    refused = raw_streams(b, key, second.session_id)
    assert refused.status == 429
    assert json.loads(refused.response.data)["error"]["code"] == "rate_limited"
    held.close()  # given back on a: b takes the key's one stream
    wait_until(lambda: raw_streams(b, key, second.session_id).status == 200, timeout=10)


def test_what_a_killed_process_held_lapses(one_stream_per_key, raw_streams):
    """A process that dies cannot give its holds back: they lapse (HOLD_S) instead of
    counting against the key for good."""
    from tether.http.shared_limits import HOLD_S

    a, b, key, first, second = one_stream_per_key
    first.open()
    assert raw_streams(b, key, second.session_id).status == 429
    killed = time.monotonic()
    kill_hub(a)
    opened = wait_until(lambda: raw_streams(b, key, second.session_id).status == 200
                        and time.monotonic(), timeout=HOLD_S + 10)
    assert opened - killed <= HOLD_S + 1


def test_requests_in_flight_are_counted_across_processes(cluster):
    """max_inflight_per_key = 2: one request waits on each process (for a publisher on a),
    so a third on either is refused, and is admitted once one of them is answered."""
    a = cluster(auth="on", max_inflight_per_key=2)
    b = cluster(auth="on", max_inflight_per_key=2)
    key = make_key(a, "client", "app")
    publisher = KeyedPublisher(a.url, make_key(a, "publisher", "pub"))
    body = {"model": "m1", **CHAT}
    answers: list[int] = []

    def send(hub) -> threading.Thread:
        def run() -> None:
            answers.append(call(hub, "POST", "/v1/chat/completions", key,
                                json=body).status_code)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    try:
        publisher.register("m1")
        stream = publisher.open()
        sent = [send(a), send(b)]
        tasks = [stream.next_task("infer", timeout=10) for _ in sent]  # both dispatched
        for hub in (a, b):
            r = call(hub, "POST", "/v1/chat/completions", key, json=body)
            assert r.status_code == 429, r.text
            assert "2 requests already in flight" in r.json()["error"]["message"]
        assert publisher.result(tasks[0]["taskId"], {"status": 200, "body": {}}).status_code \
            == 200
        wait_until(lambda: sum(t.is_alive() for t in sent) == 1, timeout=10)
        sent.append(send(b))  # a slot was given back: admitted
        tasks.append(stream.next_task("infer", timeout=10))
        for task in tasks[1:]:
            assert publisher.result(task["taskId"], {"status": 200, "body": {}}).status_code \
                == 200
        for thread in sent:
            thread.join(10)
        assert answers == [200, 200, 200]
    finally:
        publisher.close()


def test_without_redis_a_revocation_is_still_refused_within_a_second(cluster, redis_server):
    """Pushed revocations let a hub keep valid keys for 30 s; the moment its subscription is
    gone, it re-reads keys from the database every half second again."""
    hub = cluster(auth="on", bus_url=redis_server.url)
    key = make_key(hub, "client", "app")
    assert call(hub, "GET", "/api/v1/llms", key).status_code == 200  # cached, trusted 30 s
    redis_server.stop()
    wait_until(lambda: hub.get("/healthz", timeout=5).status_code == 503, timeout=10)
    done = subprocess.run([*TETHER, "keys", "revoke", "app", "--database-url",
                           hub.settings["database_url"], "--bus-url", redis_server.url],
                          capture_output=True, text=True, timeout=30, check=True)
    assert "the bus did not answer" in done.stdout, done.stdout
    revoked = time.monotonic()
    wait_until(lambda: call(hub, "GET", "/api/v1/llms", key).status_code == 401, timeout=5)
    assert time.monotonic() - revoked < 1.0
