"""A process dies while PostgreSQL is out (docs/protocol.md, Faults: a PostgreSQL outage, and
Several hub processes): the survivor that buries it needs the database to learn which names
the dead process's sessions published. It used to fail there: a traceback ("cleaning up
after process … failed"), the rest of the dead process's sessions skipped, and their rows
left `active` with nobody to serve them until the sweep's heartbeat check. Now a session
whose names cannot be read waits, the process goes back in the set, and a survivor buries
the rest once the database answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.cluster.test_liveness import kill_9
from tests.cluster.test_routing import in_background, result_of
from tests.support.chaos import ChaosProxy
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)

LIVENESS_TTL_S = 5.0
SLACK_S = 5.0
QUIET = {"liveness_ttl_s": LIVENESS_TTL_S}


def test_a_process_that_dies_during_a_database_outage_is_buried_all_the_same(
        cluster: Callable[..., Hub], postgres_db) -> None:
    parts = urlsplit(postgres_db.url)
    proxy = ChaosProxy(parts.port or 5432)
    host = parts.netloc.rpartition("@")[0]
    via_proxy = urlunsplit(parts._replace(netloc=f"{host}@127.0.0.1:{proxy.port}"))
    try:
        a = cluster(**QUIET)
        b = cluster(database_url=via_proxy, **QUIET)  # the survivor, cut from the database
        # The publisher is homed on a; b owns its name (an infer on b found no owner first).
        pub = TestPublisher(a.url)
        pub.register({"name": "m1", "type": "openai", "model": "m", "maxConcurrency": 1})
        assert b.infer("m1").status_code == 503  # no stream yet; b owns the name now
        stream = pub.open()
        call = in_background(lambda: b.infer("m1", "lost", timeout=60))
        stream.next_task("infer", timeout=10)

        proxy.close()  # PostgreSQL is gone for b, and so is every connection to it
        kill_9(a)
        killed = time.monotonic()
        answer = result_of(call, timeout=LIVENESS_TTL_S + 2 + SLACK_S)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "publisher_disconnected"
        assert time.monotonic() - killed < LIVENESS_TTL_S + 2 + SLACK_S

        # The request was answered all the same (the owner learned of the death from the
        # bus); the burial waits for the database.
        wait_until(lambda: "are buried once it does" in b.logs(), timeout=10)

        proxy = ChaosProxy(parts.port or 5432, port=proxy.port)
        wait_until(lambda: b.llm("m1")["status"] == "inactive", timeout=15)
        wait_until(lambda: "is buried, the database answering again" in b.logs(), timeout=10)
        assert "cleaning up after process" not in b.logs()
    finally:
        proxy.close()
