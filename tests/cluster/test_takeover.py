"""A session moves between hub processes (docs/protocol.md, Several hub processes): a stream
that opens on another process takes the session over cluster-wide, and the old home ends
its stream without marking rows `inactive`; `tether publish` with the cluster's URLs moves
to the next one on a loss and is served through every process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import in_background, online, result_of
from tests.support.chaos import ChaosProxy
from tests.support.factory import factory
from tests.support.hub import Hub, wait_until
from tests.support.procs import Publish
from tests.support.publisher import TestPublisher
from tether.cluster.bus import prefix_of

pytestmark = pytest.mark.timeout(120)


def served_by(hub: Hub, name: str, pub: TestPublisher, stream: Any, body: Any) -> None:
    """A request on `hub` reaches `stream` and its answer comes back."""
    call = in_background(lambda: hub.infer(name, f"via {hub.port}"))
    task = stream.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == f"via {hub.port}"
    assert pub.result(task["taskId"], {"status": 200, "body": body}).status_code == 200
    answer = result_of(call)
    assert answer.status_code == 200, answer.text
    assert answer.json() == body


def test_a_stream_opening_on_another_process_takes_the_session_over_rows_stay_active(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa, sa = online(a, "m1")
    served_by(a, "m1", pa, sa, "before")
    # The same session opens a stream on b while its stream on a is still open.
    pb = TestPublisher(b.url, pa.session_id)
    sb = pb.open()
    sa.wait_closed(timeout=10)  # a ended its stream: b is the home now
    for hub in (a, b):
        served_by(hub, "m1", pb, sb, hub.port)
    for hub in (a, b):  # a's stream end was no stream loss: the row never went inactive
        row = hub.llm("m1")
        assert (row["status"], row["inactiveSince"]) == ("active", None), row
    for hub in (a, b):  # one session, its stream open on b, whichever process is asked
        wait_until(shows(hub, "m1", streamOpen=True, status="active"), timeout=10)
        totals = hub.get("/status/state").json()["totals"]
        assert (totals["sessions"], totals["streamsOpen"]) == (1, 1)
    pb.close()


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[Callable[..., Publish]]:
    def build(hubs: list[str], backends: list[dict[str, Any]]) -> Publish:
        return Publish(tmp_path, hubs, backends).start()  # type: ignore[arg-type]

    yield from factory(build, Publish.stop)


def chat(hub: Hub, name: str = "llama") -> requests.Response:
    return hub.post(f"/api/v1/llms/{name}/infer",
                    {"messages": [{"role": "user", "content": "Hello"}]}, timeout=30)


def test_the_publisher_moves_to_the_next_process_and_is_served_through_every_one(
        cluster: Callable[..., Hub], backend_factory, publishers) -> None:
    # As with the default grace (10 s), a request that reaches the owner between the old
    # stream's loss and the news of the new one waits for the publisher instead of a 503
    # (the tests' default grace is 0).
    a, b = cluster(publisher_grace_s=5), cluster(publisher_grace_s=5)
    backend = backend_factory()
    to_a = ChaosProxy(a.port)  # the publisher's way to a, which the test can cut
    try:
        publish = publishers([to_a.url, b.url], [{"name": "llama", "model": "demo-model",
                                                  "base_url": backend.base_url}])
        wait_until(lambda: f"connected to {to_a.url}\n" in publish.logs(), timeout=20)
        for hub in (a, b):
            wait_until(lambda h=hub: h.llm("llama")["status"] == "active", timeout=10)
            assert chat(hub).json()["model"] == "llama"  # the publisher names it so
        session = a.llm("llama")["providerSessionId"]
        to_a.cut()  # the stream to a breaks: the publisher goes on to b
        wait_until(lambda: f"connected to {b.url}\n" in publish.logs(), timeout=20)
        assert f"moving to the next hub: {b.url}" in publish.logs()
        for hub in (b, a):  # served through both, under the same session
            wait_until(lambda h=hub: h.llm("llama")["status"] == "active", timeout=10)
            r = chat(hub)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "llama"
            assert hub.llm("llama")["providerSessionId"] == session
        assert backend.stats()["completed"] == 4
    finally:
        to_a.close()


def test_a_take_over_hands_over_the_tasks_that_produced_nothing(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa = TestPublisher(a.url)
    pa.register("m1", maxConcurrency=3)
    sa = pa.open()
    # Three tasks out on a's stream, from clients on both processes: two produced nothing,
    # one streamed a chunk already.
    quiet = [in_background(lambda h=h: h.infer("m1", f"quiet {h.port}")) for h in (a, b)]
    old = {stream_task["request"]["messages"][0]["content"]: stream_task["taskId"]
           for stream_task in (sa.next_task("infer", timeout=10) for _ in quiet)}
    touched = in_background(lambda: b.infer("m1", "touched", body={"stream": True}))
    t = sa.next_task("infer", timeout=10)
    chunk = {"chunk": {"data": json.dumps({"choices": [{"delta": {"content": "w"}}]})}}
    assert pa.result(t["taskId"], chunk).status_code == 200
    # The same session opens a stream on b: the untouched tasks come again there, as new
    # frames under new ids; the touched one cannot be resumed.
    pb = TestPublisher(b.url, pa.session_id)
    sb = pb.open()
    sa.wait_closed(timeout=10)
    moved = {task["request"]["messages"][0]["content"]: task
             for task in (sb.next_task("infer", timeout=10) for _ in quiet)}
    assert sorted(moved) == sorted(old)
    for content, task in moved.items():
        assert task["taskId"] != old[content]
        assert TestPublisher(a.url).result(old[content], {"status": 200, "body": 0}) \
            .status_code == 404  # the old id is over
    lost = result_of(touched)
    assert "publisher_disconnected" in lost.text
    for content, task in moved.items():  # answered through either process
        via = TestPublisher((a if content.endswith(str(a.port)) else b).url)
        assert via.result(task["taskId"], {"status": 200, "body": content}).status_code == 200
    assert sorted(result_of(c).json() for c in quiet) == sorted(old)
    # The moved tasks held their slots under their new ids, and gave them back: three at
    # once go out again.
    for hub in (a, b):
        wait_until(lambda h=hub: h.llm("m1")["members"][0]["inFlight"] == 0, timeout=10)
    again = [in_background(lambda i=i: a.infer("m1", f"again {i}")) for i in range(3)]
    for task in [sb.next_task("infer", timeout=10) for _ in again]:
        pb.result(task["taskId"], {"status": 200, "body": 1})
    assert [result_of(c).json() for c in again] == [1, 1, 1]
    pb.close()


def test_a_take_over_during_a_wake_carries_the_wake_over(cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa = TestPublisher(a.url)
    pa.register({"name": "sleepy", "type": "openai", "model": "m",
                 "initialStatus": "hibernating"})
    sa = pa.open()
    calls = [in_background(lambda h=h: h.infer("sleepy", f"r{h.port}")) for h in (a, b)]
    wake = sa.next_task("wake", timeout=10)
    pb = TestPublisher(b.url, pa.session_id)
    sb = pb.open()
    sa.wait_closed(timeout=10)
    again = sb.next_task("wake", timeout=10)  # the same wake, not a second one
    assert again["taskId"] != wake["taskId"]
    assert pb.result(again["taskId"], {"status": 200, "body": None}).status_code == 200
    for task in [sb.next_task("infer", timeout=10) for _ in calls]:
        pb.result(task["taskId"], {"status": 200, "body": task["request"]["messages"]})
    assert sorted(result_of(c).json()[0]["content"] for c in calls) == sorted(
        f"r{h.port}" for h in (a, b))
    assert b.llm("sleepy")["status"] == "active"
    pb.close()


def test_a_task_sent_to_the_old_home_after_a_take_over_goes_to_the_new_one(
        cluster: Callable[..., Hub], redis_db) -> None:
    """An owner that did not hear of the move yet sends a task to the old home: the old
    home passes it on. The test plays that owner, and the task's client, on the bus."""
    a, b = cluster(), cluster()
    pa, sa = online(a, "m1")
    call = in_background(lambda: a.infer("m1", "first"))
    first = sa.next_task("infer", timeout=10)
    old_home = first["taskId"].split("-")[0].split(".")[1]  # <slot>.<home>-…
    pa.result(first["taskId"], {"status": 200, "body": 1})
    assert result_of(call).json() == 1
    pb = TestPublisher(b.url, pa.session_id)
    sb = pb.open()
    sa.wait_closed(timeout=10)
    bus = redis_db.client()
    prefix = prefix_of(redis_db.url)
    me = bus.pubsub(ignore_subscribe_messages=True)
    me.subscribe(f"{prefix}:proc:the-test")
    send = {"$": "msg", "t": "SendInfer", "f": {
        "task_id": f"1.{old_home}-{uuid.uuid4().hex}", "llm_name": "m1",
        "request": {"messages": [{"role": "user", "content": "late"}]}, "streaming": False,
        "endpoint": "chat/completions", "reply": {"$": "reply", "a": ["reply", "the-test", "r1"]},
        "llm": {"$": "ref", "a": ["llm", "", "m1"]}, "timeout_s": 30}}
    assert bus.publish(f"{prefix}:proc:{old_home}", json.dumps(
        {"k": "tell", "to": ["session", old_home, pa.session_id], "m": send,
         "from": "the-test"})) == 1
    task = sb.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == "late"
    assert old_home not in task["taskId"]  # an id of the new home
    assert pb.result(task["taskId"], {"status": 200, "body": "passed on"}).status_code == 200
    events = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "Completed" not in events:
        message = me.get_message(timeout=1)
        if message is not None:
            payload = json.loads(message["data"])
            assert payload["id"] == "r1"
            events.append(payload["m"]["t"])
            if payload["m"]["t"] == "Completed":
                assert payload["m"]["f"]["body"] == "passed on"
    assert events == ["Dispatched", "Completed"]
    me.close()
    pb.close()
