"""Every message kind lost on the bus ends in an answer or a corrected count
(docs/protocol.md, Several hub processes: Lost messages): the owner of a name and the home of
its member's session compare, every `reconcile_interval_s`, the tasks one counts in flight
with those the other holds, and a send nobody heard is answered by its sender.

Each test puts the owner of a name on one process (a) and its member's session on the other
(b), so what passes between them crosses the bus, and has one process lose one message of
one kind (POST /_faults/drop: lost in flight, the sender believes it went; or not heard).
Before, each of these waited for the relay's last-resort timer (750 s), or held a slot for
good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.test_reads import member_in_flight
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import Stream, TestPublisher, next_task_of

pytestmark = pytest.mark.timeout(120)

LIVENESS_TTL_S = 5.0  # the default
RECONCILE_S = 2.0  # reconcile_interval_s's default
SLACK_S = 4.0  # a busy machine's scheduling, a few HTTP hops
# A lost message is corrected within two reconciliation periods (a task must be missing in
# two answers in a row), well within the invariant's liveness_ttl_s + 2 s.
BOUND_S = LIVENESS_TTL_S + 2 * RECONCILE_S + SLACK_S
CLIENT_TIMEOUT_S = 60  # far below the relay's own deadline (750 s by default)
ONE_SLOT = {"name": "m1", "type": "openai", "model": "m", "maxConcurrency": 1}


def drop(hub: Hub, kind: str, heard: bool = True, count: int = 1) -> None:
    answer = hub.post("/_faults/drop", {"kind": kind, "heard": heard, "count": count})
    assert answer.json() == {"dropping": True}, answer.text


def split(a: Hub, b: Hub, spec: dict[str, Any] = ONE_SLOT,
          before_open: Callable[[], None] | None = None) -> tuple[TestPublisher, Stream]:
    """A publisher whose session is homed on b, its name owned by a: a takes the name with
    an infer before the stream opens (answered 503, nobody serves it yet), and keeps it."""
    pub = TestPublisher(b.url)
    pub.register(spec)
    offline = a.infer(spec["name"], "nobody yet")
    assert offline.status_code == 503, offline.text
    if before_open is not None:
        before_open()
    return pub, pub.open()


def content(task: dict) -> str:
    return str(task["request"]["messages"][0]["content"])


def serve(pub: TestPublisher, stream: Stream, call: dict, text: str,
          timeout: float = 10) -> None:
    task = stream.next_task("infer", timeout=timeout)
    assert content(task) == text
    assert pub.result(task["taskId"], {"status": 200, "body": text}).status_code == 200
    assert result_of(call).json() == text


@pytest.fixture
def pair(cluster: Callable[..., Hub]) -> tuple[Hub, Hub]:
    return (cluster(fault_injection=1, liveness_ttl_s=LIVENESS_TTL_S),
            cluster(fault_injection=1, liveness_ttl_s=LIVENESS_TTL_S))


def test_a_lost_task_end_frees_its_slot(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    pub, stream = split(a, b)
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    drop(b, "TaskEnded")  # b's session answers the next task; its owner never hears of it
    serve(pub, stream, in_background(lambda: a.infer("m1", "first")), "first")
    ended = time.monotonic()
    # One slot: the next request is served once the owner finds the slot free (the first
    # is not served again: it was answered).
    second = in_background(lambda: a.infer("m1", "second", timeout=CLIENT_TIMEOUT_S))
    serve(pub, stream, second, "second", timeout=BOUND_S)
    assert time.monotonic() - ended < BOUND_S
    wait_until(lambda: member_in_flight(a, "m1") == 0, timeout=5)
    pub.close()


def test_a_lost_task_is_served_again(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    pub, stream = split(a, b)
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    drop(a, "SendInfer")  # the owner sends the task to b's session; it never gets there
    started = time.monotonic()
    call = in_background(lambda: a.infer("m1", "lost", timeout=CLIENT_TIMEOUT_S))
    serve(pub, stream, call, "lost", timeout=BOUND_S)  # nothing ran: it went out again
    assert time.monotonic() - started < BOUND_S
    wait_until(lambda: member_in_flight(a, "m1") == 0, timeout=5)
    pub.close()


def test_a_task_nobody_heard_is_answered_at_once(pair: tuple[Hub, Hub]) -> None:
    """RemoteSession.tell: a send that found no listener (its home gone, Redis down) is
    not counted as a task under way."""
    a, b = pair
    pub, stream = split(a, b)
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    drop(a, "SendInfer", heard=False)
    started = time.monotonic()
    answer = a.infer("m1", "unheard", timeout=CLIENT_TIMEOUT_S)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "publisher_offline"
    assert time.monotonic() - started < SLACK_S
    assert member_in_flight(a, "m1") == 0
    serve(pub, stream, in_background(lambda: a.infer("m1", "after")), "after")
    pub.close()


def test_a_lost_retryable_return_is_served_again(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    pub, stream = split(a, b)
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    drop(b, "TaskReturned")
    started = time.monotonic()
    call = in_background(lambda: a.infer("m1", "again", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    busy = {"error": {"status": 503, "code": "busy", "message": "full", "retryable": True}}
    assert pub.result(task["taskId"], busy).status_code == 200
    serve(pub, stream, call, "again", timeout=BOUND_S)
    assert time.monotonic() - started < BOUND_S
    pub.close()


def test_a_lost_stream_opened_is_found(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    pub, stream = split(a, b, before_open=lambda: drop(b, "StreamOpened"))
    opened = time.monotonic()

    def served() -> bool:
        call = in_background(lambda: a.infer("m1", "hello"))
        try:
            task = stream.next_task("infer", timeout=1)
        except Exception:  # noqa: BLE001 - no task: the owner still counts it offline
            assert result_of(call).status_code == 503
            return False
        pub.result(task["taskId"], {"status": 200, "body": "hello"})
        assert result_of(call).json() == "hello"
        return True

    wait_until(served, timeout=BOUND_S)
    assert time.monotonic() - opened < BOUND_S
    pub.close()


def test_tasks_handed_over_in_an_eviction_answer_nobody_read_are_served(
        pair: tuple[Hub, Hub]) -> None:
    """The publisher's stream moves from b to a (a take-over): b gives the session up and
    answers with its task that produced nothing, and that answer is lost (as one that
    comes after the asker's 5 s deadline is). The task is not lost with it: a's
    reconciliation finds it held nowhere and sends it again, to the session's new home."""
    a, b = pair
    pub, stream = split(a, b)
    serve(pub, stream, in_background(lambda: a.infer("m1", "warm")), "warm")
    call = in_background(lambda: a.infer("m1", "moving", timeout=CLIENT_TIMEOUT_S))
    assert content(stream.next_task("infer", timeout=10)) == "moving"
    drop(b, "ans:evict")
    moved = time.monotonic()
    pub.url = a.url  # it reconnects to the other process
    again = pub.open()
    serve(pub, again, call, "moving", timeout=BOUND_S + 6)  # + the evict's 5 s wait
    assert time.monotonic() - moved < BOUND_S + 6
    wait_until(lambda: member_in_flight(a, "m1") == 0, timeout=5)
    pub.close()


def test_a_result_posted_to_another_process_during_a_bus_hiccup_gets_retry_after(
        pair: tuple[Hub, Hub]) -> None:
    """A result POST on a process that is not the task's home is asked of the home; when
    that call gets no answer it is answered 503 `hub_busy` with Retry-After, and the same
    result posted again reaches the home (the publisher's retry)."""
    a, b = pair
    pub, stream = split(a, b)  # tasks run on b's session
    call = in_background(lambda: a.infer("m1", "result", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    drop(a, "call:submit_result", heard=False)
    pub.url = a.url  # posted to the process that is not its home
    refused = pub.result(task["taskId"], {"status": 200, "body": "result"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "hub_busy"
    assert refused.headers["Retry-After"] == "1"
    assert pub.result(task["taskId"], {"status": 200, "body": "result"}).status_code == 200
    assert result_of(call).json() == "result"
    pub.close()


def test_a_lost_release_of_a_failed_over_task_is_served_again(
        pair: tuple[Hub, Hub]) -> None:
    """A pool member on b loses its stream with a task that produced nothing: b's session
    releases it to the owner (a) for another member, and that TasksReleased is lost."""
    a, b = pair
    spec = {"name": "p", "type": "openai", "pool": True, "model": "m", "maxConcurrency": 1}
    pa, pb = TestPublisher(a.url), TestPublisher(b.url)
    pa.register(spec)
    sa = pa.open()  # a owns p
    pb.register(spec)
    sb = pb.open()
    wait_until(lambda: len(a.llm("p")["members"]) == 2, timeout=10)
    # Occupy a's member: a request that lands on b's is answered, and another sent.
    busy = None
    while busy is None:
        call = in_background(lambda: a.infer("p", "busy", timeout=CLIENT_TIMEOUT_S))
        member, task = next_task_of({"a": sa, "b": sb}, "infer", timeout=10)
        if member == "a":
            busy = (call, task)
        else:
            pb.result(task["taskId"], {"status": 200, "body": "busy"})
            assert result_of(call).json() == "busy"
    held = in_background(lambda: a.infer("p", "held", timeout=CLIENT_TIMEOUT_S))
    assert content(sb.next_task("infer", timeout=10)) == "held"  # the only free slot
    drop(b, "TasksReleased")
    sb.close()  # failover: b releases "held"; the owner never hears of it
    lost = time.monotonic()
    call, task = busy
    assert pa.result(task["taskId"], {"status": 200, "body": "busy"}).status_code == 200
    assert result_of(call).json() == "busy"
    serve(pa, sa, held, "held", timeout=BOUND_S)  # on a's member, once found lost
    assert time.monotonic() - lost < BOUND_S
    pa.close()
    pb.close()
