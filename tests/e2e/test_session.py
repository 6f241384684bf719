"""Stream, heartbeat and status (PROTOCOL.md, Publisher control plane)."""

from __future__ import annotations

import time

from tests.support.hub import wait_until
from tests.support.publisher import Stream


def test_stream_says_hello_and_keeps_alive(hub, publisher):
    publisher.register("m1")
    stream = Stream(hub.url, publisher.session_id)
    assert stream.status == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    hello = stream.next()
    assert hello.event == "hello"
    assert hello.json() == {"providerSessionId": publisher.session_id, "heartbeatIntervalS": 30}
    wait_until(lambda: "keepalive" in stream.comments, timeout=5)  # keepalive_s = 1 in tests
    stream.close()


def test_stream_needs_a_registered_session(hub):
    stream = Stream(hub.url, "never-registered")
    assert stream.status == 404
    assert b"session_not_found" in stream.response.data


def test_opening_a_stream_changes_no_status(hub, publisher):
    publisher.register({"name": "sleepy", "type": "o", "model": "m",
                        "initialStatus": "hibernating"})
    publisher.open()
    time.sleep(0.2)
    assert hub.llm("sleepy")["status"] == "hibernating"


def test_a_second_stream_replaces_the_first(hub, publisher):
    publisher.register("m1")
    first = publisher.open()
    second = publisher.open()
    first.wait_closed()
    # Tasks go to the new stream, and the row stayed active through the swap.
    assert hub.llm("m1")["status"] == "active"
    import threading

    threading.Thread(target=hub.infer, args=("m1",), daemon=True).start()
    task = second.next_task("infer")
    assert task["llmName"] == "m1"
    publisher.result(task["taskId"], {"status": 200, "body": {}})


def test_stream_loss_makes_rows_inactive_and_answers_waiting_infers(hub, publisher):
    publisher.register("m1", "m2")
    publisher.register({"name": "sleepy", "type": "o", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(hub.infer, "m1")
        stream.next_task("infer")
        started = time.monotonic()
        stream.close()
        response = pending.result(timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "publisher_disconnected"
    wait_until(lambda: hub.llm("m2")["status"] == "inactive", timeout=3)
    assert time.monotonic() - started < 3  # noticed from the read side, not a later write
    assert hub.llm("m1")["inactiveSince"] is not None
    assert hub.llm("sleepy")["status"] == "hibernating"  # only active rows go inactive
    r = hub.infer("m1")
    assert r.status_code == 503 and r.json()["error"]["code"] == "publisher_offline"


def test_heartbeat_bumps_and_revives(hub, publisher):
    publisher.register("m1")
    before = hub.llm("m1")["lastHeartbeatAt"]
    stream = publisher.open()
    stream.close()
    wait_until(lambda: hub.llm("m1")["status"] == "inactive")
    time.sleep(0.01)
    r = publisher.heartbeat()
    assert r.status_code == 200 and r.json() == {"ok": True, "llms": 1}
    row = hub.llm("m1")
    assert row["status"] == "active" and row["inactiveSince"] is None
    assert row["lastHeartbeatAt"] > before


def test_heartbeat_of_an_unknown_session_is_404(hub, publisher_factory):
    r = publisher_factory("nobody").heartbeat()
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


def test_status_report_changes_only_own_rows(hub, publisher_factory):
    owner = publisher_factory()
    owner.register("mine")
    other = publisher_factory()
    other.register("theirs")
    assert owner.status(mine="hibernating").json() == {"ok": True}
    assert hub.llm("mine")["status"] == "hibernating"
    r = owner.status(mine="active", theirs="hibernating")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert hub.llm("theirs")["status"] == "active"
    assert hub.llm("mine")["status"] == "hibernating"  # nothing of a refused report applied
