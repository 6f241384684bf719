"""Wake on demand (docs/protocol.md, Infer: hibernating)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import requests

from tests.support.hub import wait_past, wait_until
from tether.common import sse


def _sleepy(publisher, name: str = "sleepy") -> None:
    publisher.register({"name": name, "type": "openai", "model": "m",
                        "initialStatus": "hibernating"}, canary=True)


def test_wake_then_infer_and_the_row_becomes_active(hub, publisher):
    _sleepy(publisher)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "sleepy")
        wake = stream.next_task()
        assert wake["kind"] == "wake" and wake["llmName"] == "sleepy"
        assert set(wake) == {"kind", "taskId", "llmName"}
        assert publisher.sent(stream) == []  # the infer waits for the wake
        before = wait_past(hub.llm("sleepy")["lastHeartbeatAt"])
        publisher.result(wake["taskId"], {"status": 200, "body": {"ok": True}})
        infer = stream.next_task("infer")
        publisher.result(infer["taskId"], {"status": 200, "body": {"answer": 42}})
        assert pending.result().json() == {"answer": 42}
    row = hub.llm("sleepy")
    assert row["status"] == "active"
    assert row["lastHeartbeatAt"] > before


def test_concurrent_infers_share_one_wake_and_go_out_in_arrival_order(hub, publisher):
    _sleepy(publisher)
    stream = publisher.open()
    n = 10
    with cf.ThreadPoolExecutor(n) as pool:
        pending = []
        for i in range(n):
            pending.append(pool.submit(hub.infer, "sleepy", f"req-{i}"))
            wait_until(lambda i=i: hub.waiting("sleepy") == i + 1, interval=0.01)  # in order
        wake = stream.next_task("wake")
        assert publisher.sent(stream) == []  # still exactly one wake, no infer yet
        publisher.result(wake["taskId"], {"status": 204, "body": None})
        infers = [stream.next_task() for _ in range(n)]
        assert [t["kind"] for t in infers] == ["infer"] * n
        assert [t["request"]["messages"][0]["content"] for t in infers] == [
            f"req-{i}" for i in range(n)]
        for t in infers:
            publisher.result(t["taskId"], {"status": 200, "body": {"echo": t["taskId"]}})
        results = [p.result() for p in pending]
    assert all(r.status_code == 200 for r in results)
    assert {r.json()["echo"] for r in results} == {t["taskId"] for t in infers}
    assert publisher.sent(stream) == []


def test_wake_failure_fails_every_waiter_and_the_next_infer_wakes_again(hub, publisher):
    _sleepy(publisher)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(hub.infer, "sleepy") for _ in range(4)]
        wake = stream.next_task("wake")
        wait_until(lambda: hub.waiting("sleepy") == 4)  # every request waits on the wake
        publisher.result(wake["taskId"], {"status": 500, "body": {"error": "no GPU"}})
        results = [p.result() for p in pending]
    for r in results:
        assert r.status_code == 503 and r.json()["error"]["code"] == "wake_failed"
    assert hub.llm("sleepy")["status"] == "hibernating"
    with cf.ThreadPoolExecutor(1) as pool:
        again = pool.submit(hub.infer, "sleepy")
        second = stream.next_task("wake")
        assert second["taskId"] != wake["taskId"]
        publisher.result(second["taskId"], {"error": {"message": "wol timed out"}})
        r = again.result()
    assert r.status_code == 503 and "wol timed out" in r.json()["error"]["message"]


def test_wake_timeout_is_504_with_a_cancel_and_the_row_stays_hibernating(
    hub_factory, publisher_factory
):
    hub = hub_factory(wake_timeout_s=0.5)
    publisher = publisher_factory(url=hub.url)
    _sleepy(publisher)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(hub.infer, "sleepy") for _ in range(2)]
        wake = stream.next_task("wake")
        cancel = stream.next_task("cancel")
        results = [p.result() for p in pending]
    assert cancel == {"kind": "cancel", "taskId": wake["taskId"]}
    for r in results:
        assert r.status_code == 504 and r.json()["error"]["code"] == "wake_timeout"
    assert hub.llm("sleepy")["status"] == "hibernating"
    assert publisher.result(wake["taskId"], {"status": 200}).status_code == 404


def test_inactive_is_not_hibernating(hub, publisher):
    publisher.register("m1", canary=True)
    stream = publisher.open()
    stream.close()
    wait_until(lambda: hub.llm("m1")["status"] == "inactive")
    fresh = publisher.open()
    r = hub.infer("m1")
    assert r.status_code == 503 and r.json()["error"]["code"] == "publisher_offline"
    assert publisher.sent(fresh) == []  # no wake attempt


def test_status_active_while_waking_counts_as_the_wake(hub, publisher):
    _sleepy(publisher)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "sleepy")
        stream.next_task("wake")
        assert publisher.status(sleepy="active").status_code == 200
        infer = stream.next_task("infer")
        publisher.result(infer["taskId"], {"status": 200, "body": {"v": 1}})
        assert pending.result().json() == {"v": 1}


def test_streaming_client_sees_waking_comments_while_the_wake_runs(hub_factory, publisher_factory):
    hub = hub_factory(keepalive_s=0.3)
    publisher = publisher_factory(url=hub.url)
    _sleepy(publisher)
    stream = publisher.open()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{hub.url}/api/v1/llms/sleepy/infer", json=body,
                              stream=True, timeout=20)
        wake = stream.next_task("wake")
        response = pending.result()  # headers came with the first `: waking`
        assert response.status_code == 200
        events = sse.parse(sse.iter_lines(response.iter_content(chunk_size=None)))
        items = [next(events)]  # the wake still runs: what comes is a comment
        publisher.result(wake["taskId"], {"status": 200})
        infer = stream.next_task("infer")
        publisher.result(infer["taskId"], {"chunk": {"data": "{}", "done": True}})
        items += events
    comments = [i for i in items if isinstance(i, str)]
    assert comments and set(comments) == {"waking"}
    assert [i.data for i in items if not isinstance(i, str)] == ["{}", "[DONE]"]


def _leaving_client(hub, name: str, content: str) -> socket.socket:
    """Send an infer on a raw socket, to be closed while it waits."""
    body = json.dumps({"messages": [{"role": "user", "content": content}]}).encode()
    sock = socket.create_connection(("127.0.0.1", hub.port))
    sock.sendall(b"POST /api/v1/llms/%s/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (name.encode(), len(body), body))
    return sock


def test_a_client_that_leaves_during_the_wake_is_dropped_from_the_wait(hub_factory,
                                                                        publisher_factory):
    """Issue 10.8: a client gone while its request waited on a wake was still dispatched
    after it (its task ran uncancelled) and its dead slot counted toward max_queue_per_llm."""
    hub = hub_factory(max_queue_per_llm=1)
    publisher = publisher_factory(url=hub.url)
    _sleepy(publisher)
    stream = publisher.open()
    leaver = _leaving_client(hub, "sleepy", "gone")
    wake = stream.next_task("wake")
    leaver.close()
    wait_until(lambda: hub.waiting("sleepy") == 0)  # the hub noticed the departure
    with cf.ThreadPoolExecutor(1) as pool:
        stayer = pool.submit(hub.infer, "sleepy", "stays")  # the slot that was freed
        wait_until(lambda: hub.waiting("sleepy") == 1 or stayer.done())
        assert not stayer.done(), stayer.result().text  # it waits for the wake, no 429
        publisher.result(wake["taskId"], {"status": 200})
        infer = stream.next_task("infer")
        assert infer["request"]["messages"][0]["content"] == "stays"
        publisher.result(infer["taskId"], {"status": 200, "body": {"ok": True}})
        assert stayer.result().json() == {"ok": True}
    assert publisher.sent(stream) == []  # no task ever went out for the client who left
