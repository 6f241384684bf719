"""Heartbeats through a real hub (issue 11.11: the rows are written by their actors)."""

from __future__ import annotations

from tests.support.hub import wait_past, wait_until


def test_a_heartbeat_bumps_every_row_of_the_session_and_revives_inactive_ones(
        hub, publisher_factory):
    pub = publisher_factory()
    pub.register("hb-a", "hb-b")
    other = publisher_factory()
    other.register("hb-other")
    before = {name: hub.llm(name)["lastHeartbeatAt"] for name in ("hb-a", "hb-b", "hb-other")}
    wait_past(max(before.values()))  # a heartbeat now is a later one
    r = pub.heartbeat()
    assert r.status_code == 200 and r.json() == {"ok": True, "llms": 2}
    for name in ("hb-a", "hb-b"):
        row = hub.llm(name)
        assert row["status"] == "active" and row["lastHeartbeatAt"] > before[name]
    assert hub.llm("hb-other")["lastHeartbeatAt"] == before["hb-other"]  # not its session
    # A lost stream makes the rows inactive; the next heartbeat revives them.
    pub.open().close()
    wait_until(lambda: hub.llm("hb-a")["status"] == "inactive")
    r = pub.heartbeat()
    assert r.status_code == 200 and r.json()["llms"] == 2
    assert [hub.llm(n)["status"] for n in ("hb-a", "hb-b")] == ["active", "active"]
    assert hub.llm("hb-a")["inactiveSince"] is None


def test_a_heartbeat_of_a_session_without_rows_is_404(hub, publisher_factory):
    r = publisher_factory("never-registered").heartbeat()
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
