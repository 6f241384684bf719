"""Startup in a cluster (docs/protocol.md, Several hub processes): a process marks `inactive`
only the rows whose session has no live home; for the first process of a cluster that is
every row."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.test_liveness import kill_9
from tests.cluster.test_routing import online
from tests.cluster.test_takeover import served_by
from tests.support.hub import Hub

pytestmark = pytest.mark.timeout(120)


def test_a_process_joining_leaves_the_rows_of_live_sessions_active(
        cluster: Callable[..., Hub]) -> None:
    a = cluster()
    pub, stream = online(a, "m1")
    b = cluster()  # starts while a's session is live there
    for hub in (a, b):
        row = hub.llm("m1")
        assert (row["status"], row["inactiveSince"]) == ("active", None), row
    for hub in (a, b):
        served_by(hub, "m1", pub, stream, hub.port)
    pub.close()


def test_the_first_process_of_a_cluster_marks_every_row_inactive(
        cluster: Callable[..., Hub], redis_db) -> None:
    a = cluster()
    pub, _ = online(a, "m1")
    kill_9(a)  # nobody is left to mark its rows: they stay active in the database
    redis_db.client().flushdb()  # and Redis restarted: no home, no process is known
    b = cluster()
    row = b.llm("m1")  # as soon as it serves
    assert row["status"] == "inactive", row
    # Its publisher comes back (to b) and takes the row again.
    pub.url = b.url
    pub.register("m1")
    back = pub.open()
    served_by(b, "m1", pub, back, "back")
    assert b.llm("m1")["status"] == "active"
    pub.close()
