"""/healthz says whether this process reaches PostgreSQL and Redis: 200 with both fields
"ok", 503 `unhealthy` (the fields, and a message naming what is unreachable) while one is
not, 200 again once it is back."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

from tests.support.chaos import ChaosProxy
from tests.support.hub import wait_until


def test_healthz_reports_both_services(cluster):
    hub = cluster()
    r = hub.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "bus": "ok"}


def _health(hub):
    r = hub.get("/healthz", timeout=5)
    return r.status_code, r.json()


def test_healthz_is_503_while_redis_is_gone_and_200_once_it_is_back(cluster, redis_server):
    hub = cluster(bus_url=redis_server.url)
    assert _health(hub) == (200, {"status": "ok", "database": "ok", "bus": "ok"})
    redis_server.stop()
    status, body = wait_until(lambda: (h := _health(hub))[0] == 503 and h, timeout=10)
    assert body["status"] == "unavailable"
    assert (body["database"], body["bus"]) == ("ok", "unreachable")
    assert body["error"]["code"] == "unhealthy"
    assert f"cannot reach the bus redis://127.0.0.1:{redis_server.port}" in \
        body["error"]["message"]
    redis_server.start()
    wait_until(lambda: _health(hub)[0] == 200, timeout=10)


def test_healthz_is_503_while_postgresql_hangs_or_is_unreachable(cluster, postgres_db):
    parts = urlsplit(postgres_db.url)
    proxy = ChaosProxy(parts.port or 5432)
    host = parts.netloc.rpartition("@")[0]
    via_proxy = urlunsplit(parts._replace(netloc=f"{host}@127.0.0.1:{proxy.port}"))
    try:
        hub = cluster(database_url=via_proxy)
        assert _health(hub)[0] == 200
        proxy.latency_s = (3.0, 3.0)  # answers, too late: the probe gives up after 1 s
        started = time.monotonic()
        status, body = wait_until(lambda: (h := _health(hub))[0] == 503 and h, timeout=10)
        assert time.monotonic() - started < 5  # the check itself did not hang
        assert body["database"] == "unreachable"
        assert "no answer within 1 s" in body["error"]["message"]
        proxy.latency_s = (0.0, 0.0)
        wait_until(lambda: _health(hub)[0] == 200, timeout=10)
        proxy.close()  # the server is gone, and so is every connection to it
        status, body = wait_until(lambda: (h := _health(hub))[0] == 503 and h, timeout=10)
        assert (body["database"], body["bus"]) == ("unreachable", "ok")
        assert "cannot reach the database postgresql://" in body["error"]["message"]
        proxy = ChaosProxy(parts.port or 5432, port=proxy.port)  # back, same address
        wait_until(lambda: _health(hub)[0] == 200, timeout=10)
    finally:
        proxy.close()
