"""Stream, heartbeat and status (docs/protocol.md, Publisher control plane)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import requests

from tests.support.hub import wait_past, wait_until
from tests.support.publisher import Stream
from tether.common import sse


def test_stream_says_hello_and_keeps_alive(hub, publisher):
    publisher.register("m1")
    stream = Stream(hub.url, publisher.session_id)
    assert stream.status == 200
    assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    hello = stream.next()
    assert hello.event == "hello"
    # It lists every name the session publishes (a publisher withdraws those it lost).
    # And that this hub's result channel takes streamed chunks.
    assert hello.json() == {"providerSessionId": publisher.session_id, "heartbeatIntervalS": 30,
                            "llms": ["m1"], "chunksOnChannel": True}
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
    # The Llm's actor answers the heartbeat after the news of the stream: it has applied it.
    assert publisher.heartbeat().status_code == 200
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
    wait_past(before)
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


# --- reconnects (docs/protocol.md, Stream) ----------------------------------------------------


def _lost(hub, stream, name: str = "m1") -> None:
    stream.close()
    wait_until(lambda: hub.llm(name)["status"] == "inactive")  # the hub noticed


def test_waiters_released_while_the_stream_is_down_wait_for_it(hub_factory, publisher_factory):
    """Issue 10.9: a wake result posted while the stream was down sent the waiters to a
    session with no stream, and they got 503 publisher_offline."""
    hub = hub_factory(publisher_grace_s=10)
    publisher = publisher_factory(url=hub.url)
    publisher.register("m1", {"name": "sleepy", "type": "o", "model": "m",
                              "initialStatus": "hibernating"})
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "sleepy")
        wake = next(i for i in iter(stream.next, None) if i.event == "task")
        _lost(hub, stream)
        assert publisher.result(wake.json()["taskId"], {"status": 200}).status_code == 200
        again = publisher.open(last_event_id=wake.id)
        infer = again.next_task("infer")  # held for the stream, not failed
        assert not pending.done()  # it waits for the stream, not 503
        publisher.result(infer["taskId"], {"status": 200, "body": {"waited": True}})
        assert pending.result(timeout=10).json() == {"waited": True}


def test_a_reconnect_without_last_event_id_gets_the_untouched_tasks_again(
        hub_factory, publisher_factory):
    """Issue 11.2: a restarted publisher (no Last-Event-ID) got nothing replayed, and the
    reconnect cancelled the grace: its client hung until infer_timeout_s."""
    hub = hub_factory(publisher_grace_s=30)
    publisher = publisher_factory(url=hub.url)
    publisher.register("m1")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(hub.infer, "m1", "first")
        sent = [stream.next_task("infer")]
        second = pool.submit(hub.infer, "m1", "second")
        sent.append(stream.next_task("infer"))
        _lost(hub, stream)
        publisher.register("m1")  # what a restarted publisher process does
        again = publisher.open()  # ... remembering no event id
        resent = [again.next_task("infer"), again.next_task("infer")]
        assert [t["taskId"] for t in resent] == [t["taskId"] for t in sent]  # in order
        for task in resent:
            publisher.result(task["taskId"], {"status": 200, "body": {"n": task["request"]}})
        assert first.result(timeout=10).json()["n"]["messages"][0]["content"] == "first"
        assert second.result(timeout=10).json()["n"]["messages"][0]["content"] == "second"


def test_a_reconnect_with_an_unknown_event_id_fails_tasks_that_already_streamed(
        hub_factory, publisher_factory):
    hub = hub_factory(publisher_grace_s=30)
    publisher = publisher_factory(url=hub.url)
    publisher.register("m1", canary=True)
    stream = publisher.open()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = requests.post(f"{hub.url}/api/v1/llms/m1/infer", json=body, stream=True, timeout=20,
                      headers={"Connection": "close"})
    task = stream.next_task("infer")
    publisher.result(task["taskId"], {"chunk": {"data": '{"n": 1}', "done": False}})
    assert r.status_code == 200
    _lost(hub, stream)
    started = time.monotonic()
    publisher.register("m1")
    again = publisher.open(last_event_id="987654321")  # never sent by this hub process
    items = [i for i in sse.parse(sse.iter_lines(r.iter_content(chunk_size=None)))
             if not isinstance(i, str)]
    assert items[0].data == '{"n": 1}'
    assert items[-1].event == "error"
    assert items[-1].json()["error"]["code"] == "publisher_disconnected"
    assert time.monotonic() - started < 5  # at once, not after the 30 s grace
    assert publisher.sent(again) == []  # the task that streamed is not sent again
