"""Any process answers any route (docs/protocol.md, Several hub processes): two `tether serve`
processes on one PostgreSQL and one Redis, a publisher on one, clients on either."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher, next_task_of

pytestmark = pytest.mark.timeout(90)

Cluster = Callable[..., Hub]


@pytest.fixture
def pair(cluster: Cluster) -> tuple[Hub, Hub]:
    return cluster(), cluster()


SLEEPY = {"name": "sleepy", "type": "openai", "model": "m", "initialStatus": "hibernating"}


def online(hub: Hub, *names: str | dict, **spec: Any) -> tuple[TestPublisher, Any]:
    pub = TestPublisher(hub.url)
    pub.register(*names, **spec)
    return pub, pub.open()


def in_background(fn: Callable[[], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def result_of(call: dict[str, Any], timeout: float = 20) -> Any:
    call["thread"].join(timeout)
    assert not call["thread"].is_alive(), "the request did not end"
    if "error" in call:
        raise call["error"]
    return call["value"]


def test_a_request_on_one_process_reaches_a_publisher_on_the_other(pair) -> None:
    a, b = pair
    pub, stream = online(a, "m1")
    for via_result in (a, b):  # the result POST may land on either process
        call = in_background(lambda: b.infer("m1", "hello"))
        task = stream.next_task("infer", timeout=10)
        assert task["request"]["messages"][0]["content"] == "hello"
        assert task["taskId"].split("-")[0].count(".") == 1  # <slot>.<home>-…
        r = TestPublisher(via_result.url).result(
            task["taskId"], {"status": 200, "body": {"answer": via_result.port}})
        assert r.status_code == 200, r.text
        response = result_of(call)
        assert response.status_code == 200, response.text
        assert response.json() == {"answer": via_result.port}
    pub.close()


def test_a_streamed_completion_through_the_other_process_with_chunks_posted_to_both(
        pair) -> None:
    a, b = pair
    pub, stream = online(a, "m1")
    client = openai.OpenAI(base_url=f"{b.url}/v1", api_key="none", max_retries=0)

    def consume() -> list[str]:
        out = client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True)
        return [c.choices[0].delta.content or "" for c in out if c.choices]

    call = in_background(consume)
    task = stream.next_task("infer", timeout=10)
    assert task["streaming"] is True
    for i, hub in enumerate((a, b, a)):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m1",
                 "choices": [{"index": 0, "delta": {"content": f"w{i}"}}]}
        r = TestPublisher(hub.url).result(task["taskId"], {"chunk": {"data": json.dumps(chunk)}})
        assert r.status_code == 200, r.text
    r = TestPublisher(b.url).result(task["taskId"], {"chunk": {"done": True}})
    assert r.status_code == 200, r.text
    assert "".join(result_of(call)) == "w0w1w2"
    pub.close()


def test_result_post_answers_are_the_same_on_every_process(pair) -> None:
    a, b = pair
    pub, stream = online(a, "m1")
    call = in_background(lambda: a.infer("m1"))
    task = stream.next_task("infer", timeout=10)
    other = TestPublisher(b.url)
    # A chunk for a task that is not streaming: 409 from the home, relayed as is.
    r = other.result(task["taskId"], {"chunk": {"data": "x"}})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "not_streaming"
    # Claimed by another session: 403.
    r = other.result(task["taskId"], {"status": 200, "body": 1}, session="someone-else")
    assert r.status_code == 403, r.text
    assert other.result(task["taskId"], {"status": 200, "body": 1}).status_code == 200
    assert result_of(call).json() == 1
    # Finished: 404 on either process.
    for hub in (a, b):
        r = TestPublisher(hub.url).result(task["taskId"], {"status": 200, "body": 2})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "task_not_found"
    # Heartbeat and status on the other process reach the session's home.
    elsewhere = TestPublisher(b.url, pub.session_id)
    hb = elsewhere.heartbeat()
    assert hb.status_code == 200, hb.text
    assert hb.json() == {"ok": True, "llms": 1}
    st = elsewhere.status(m1="hibernating")
    assert st.status_code == 200, st.text
    wait_until(lambda: a.llm("m1")["status"] == "hibernating", timeout=5)
    pub.close()


def test_requests_spread_over_both_processes_share_one_wake(pair) -> None:
    a, b = pair
    pub = TestPublisher(a.url)
    pub.register(SLEEPY, canary=True)
    stream = pub.open()
    calls = [in_background(lambda h=hub, i=i: h.infer("sleepy", f"r{i}"))
             for i, hub in enumerate((a, b, a, b, b, a))]
    wake = stream.next_task(timeout=10)
    assert wake["kind"] == "wake"
    wait_until(lambda: a.waiting("sleepy") == len(calls), timeout=10)  # all at its actor
    assert pub.sent(stream) == []  # one wake, no infer yet
    assert pub.result(wake["taskId"], {"status": 200, "body": None}).status_code == 200
    infers = [stream.next_task(timeout=10) for _ in calls]
    assert [t["kind"] for t in infers] == ["infer"] * len(calls)
    for task in infers:
        pub.result(task["taskId"], {"status": 200, "body": task["request"]["messages"]})
    assert sorted(result_of(c).json()[0]["content"] for c in calls) == [
        f"r{i}" for i in range(len(calls))]
    pub.close()


def test_a_client_gone_on_one_process_cancels_the_task_at_the_publisher_on_the_other(
        pair) -> None:
    a, b = pair
    pub, stream = online(a, "m1")
    with socket.create_connection(("127.0.0.1", b.port)) as sock:
        body = json.dumps({"messages": [{"role": "user", "content": "bye"}]}).encode()
        sock.sendall(b"POST /api/v1/llms/m1/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        task = stream.next_task("infer", timeout=10)
    # The client hung up on b: the publisher on a is told to stop.
    cancel = stream.next_task("cancel", timeout=10)
    assert cancel["taskId"] == task["taskId"]
    r = pub.result(task["taskId"], {"status": 200, "body": 1})
    assert r.status_code == 404, r.text  # the task is over
    pub.close()


def test_a_pool_across_processes_balances_and_fails_over(cluster: Cluster) -> None:
    a, b = cluster(publisher_grace_s=30), cluster(publisher_grace_s=30)
    pools = {"type": "openai", "pool": True, "model": "m", "maxConcurrency": 1}
    pa, pb = TestPublisher(a.url), TestPublisher(b.url)
    pa.register({"name": "p", **pools})
    sa = pa.open()
    pb.register({"name": "p", **pools})
    sb = pb.open()
    wait_until(lambda: len(a.llm("p")["members"]) == 2, timeout=10)
    # Two requests, one slot each: one goes to each member, whichever process they hit.
    first = [in_background(lambda h=h: h.infer("p", f"x{h.port}")) for h in (a, b)]
    ta, tb = sa.next_task("infer", timeout=10), sb.next_task("infer", timeout=10)
    pa.result(ta["taskId"], {"status": 200, "body": {"by": "a"}})
    pb.result(tb["taskId"], {"status": 200, "body": {"by": "b"}})
    assert sorted(result_of(c).json()["by"] for c in first) == ["a", "b"]
    # One member busy with x; "held" goes to the other; x is answered; the stream of the
    # member holding "held" (which produced nothing yet) drops: "held" moves at once to the
    # member on the other process (failover), not after the 30 s grace.
    members = {"a": (pa, sa), "b": (pb, sb)}
    x = in_background(lambda: b.infer("p", "x"))
    busy, x_task = next_task_of({key: stream for key, (_, stream) in members.items()},
                                "infer", timeout=10)
    held_call = in_background(lambda: a.infer("p", "held"))
    free = "b" if busy == "a" else "a"
    held = members[free][1].next_task("infer", timeout=10)
    assert held["request"]["messages"][0]["content"] == "held"
    members[busy][0].result(x_task["taskId"], {"status": 200, "body": {"by": busy}})
    assert result_of(x).json() == {"by": busy}
    members[free][1].close()
    moved = members[busy][1].next_task("infer", timeout=5)
    assert moved["request"] == held["request"]
    members[busy][0].result(moved["taskId"], {"status": 200, "body": {"by": busy}})
    assert result_of(held_call).json() == {"by": busy}
    pa.close()
    pb.close()
