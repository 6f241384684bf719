"""Withdraw in a cluster (docs/protocol.md, Withdraw; Several hub processes): the withdraw
lands on a process that neither owns the name nor homes the session, and still retires the
name at its owner (whose waiting requests get 503 publisher_offline) and drops it from the
session's names at its home (the next hello lists what is left)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import SLEEPY, in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import Stream

pytestmark = pytest.mark.timeout(90)


def test_a_withdraw_on_another_process_retires_the_name_at_its_owner(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pub, stream = online(a, SLEEPY, "kept")  # a homes the session and owns both names
    waiting = in_background(lambda: a.infer("sleepy", "wait"))
    stream.next_task("wake", timeout=10)
    wait_until(shows(a, "sleepy", queued=1), timeout=10)
    r = b.post("/api/v1/llms/_provider-withdraw",
               json={"providerSessionId": pub.session_id, "names": ["sleepy"]})
    assert r.status_code == 200, r.text
    answer = result_of(waiting)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "publisher_offline"
    for hub in (a, b):
        assert hub.get("/api/v1/llms/sleepy").status_code == 404
        assert hub.infer("sleepy", timeout=10).json()["error"]["code"] == "llm_not_found"
    # Its home knows: a new stream's hello lists only what is left.
    pub.close()
    again = Stream(a.url, pub.session_id)
    assert again.next().json()["llms"] == ["kept"]
    again.close()
