"""The cluster supervisor during a Redis outage: its Redis calls are guarded, so a stream
lost or opened meanwhile neither crashes it (a traceback, a restart) nor is dropped."""

from __future__ import annotations

import psycopg2
import pytest

from tests.support.hub import wait_until
from tests.support.procs import wait_status
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(90)


def _row_status(url: str, name: str) -> str | None:
    """Read straight from PostgreSQL: the hub's reads may need Redis, which is down."""
    with psycopg2.connect(url, connect_timeout=3) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM llm WHERE name = %s", (name,))
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def test_a_stream_lost_while_redis_is_down_is_applied_without_a_crash(
        cluster, redis_server, postgres_db):
    hub = cluster(bus_url=redis_server.url)
    pub = TestPublisher(hub.url)
    pub.register("llama")
    stream = pub.open()
    wait_status(hub, "llama", "active")
    redis_server.stop()
    wait_until(lambda: hub.get("/healthz", timeout=5).status_code == 503, timeout=10)
    stream.close()  # the supervisor looks the session's home up in Redis: it does not answer
    wait_until(lambda: _row_status(postgres_db.url, "llama") == "inactive", timeout=10)
    redis_server.start()
    wait_until(lambda: hub.get("/healthz", timeout=5).status_code == 200, timeout=15)
    assert "restarted the supervisor" not in hub.logs()
    assert "Traceback" not in hub.logs(), hub.logs()
    pub.register("llama")
    pub.open()
    wait_status(hub, "llama", "active")


def test_a_read_while_redis_is_down_shows_what_this_process_knows(cluster, redis_server):
    """The in-flight counts of names owned elsewhere come from Redis: while it does not
    answer, a read shows the rows without them (logged once), not an error."""
    owner = cluster(bus_url=redis_server.url)
    other = cluster(bus_url=redis_server.url)
    pub = TestPublisher(owner.url)
    pub.register("llama")
    pub.open()
    wait_status(owner, "llama", "active")
    redis_server.stop()
    wait_until(lambda: other.get("/healthz", timeout=5).status_code == 503, timeout=10)
    r = other.get("/api/v1/llms", timeout=10)
    assert r.status_code == 200, r.text
    assert [x["name"] for x in r.json()["llms"]] == ["llama"]
    assert "Traceback" not in other.logs(), other.logs()
