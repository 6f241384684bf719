"""The actors, started for real in threads, with a stub outbox instead of an SSE stream."""

from __future__ import annotations

import queue

import pytest

from tests.support.actors import Outbox, dispatched, events, provider, settle
from tether.actors import messages as m
from tether.errors import TetherError
from tether.store import llms as store

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def _online(system, *providers, session="s1") -> Outbox:
    system.register(session, list(providers))
    outbox = Outbox(system)
    system.open_stream(session, outbox.queue, None)
    assert [f.event for f in outbox.frames()] == ["hello"]
    return outbox


def test_wake_dedup_is_actor_state_one_wake_for_many_infers(system):
    outbox = _online(system, provider("sleepy", "hibernating"))
    replies = [system.infer("sleepy", {**REQ, "n": i}, False, "chat/completions")
               for i in range(20)]
    tasks = outbox.tasks()
    assert [t["kind"] for t in tasks] == ["wake"]
    for reply in replies:
        assert isinstance(reply.get(timeout=2), m.WakePending)
    system.submit_result(tasks[0]["taskId"], None, {"status": 200})
    infers = outbox.tasks()
    assert [t["request"]["n"] for t in infers] == list(range(20))
    assert store.get("sleepy").status == "active"


def test_wake_failure_answers_every_waiter_and_keeps_hibernating(system):
    outbox = _online(system, provider("sleepy", "hibernating"))
    replies = [system.infer("sleepy", REQ, False, "chat/completions") for _ in range(3)]
    wake = outbox.tasks()[0]
    system.submit_result(wake["taskId"], None, {"status": 503, "body": None})
    for reply in replies:
        failed = events(reply, m.Failed)[-1]
        assert failed.error.code == "wake_failed" and failed.error.status == 503
    assert store.get("sleepy").status == "hibernating"


def test_stream_loss_fails_open_tasks_and_marks_active_rows_inactive(system):
    system.register("s1", [provider("a"), provider("b", "hibernating")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    assert outbox.frames()[0].event == "hello"  # what the publisher waits for
    reply = system.infer("a", REQ, False, "chat/completions")
    assert isinstance(dispatched(reply), m.Dispatched)
    system.close_stream("s1", token)
    failed = reply.get(timeout=2)
    assert isinstance(failed, m.Failed) and failed.error.code == "publisher_disconnected"
    settle(system)
    assert store.get("a").status == "inactive"
    assert store.get("b").status == "hibernating"


def test_grace_and_replay_complete_a_task_across_a_reconnect(system_factory):
    system = system_factory(publisher_grace_s=5)
    system.register("s1", [provider("a")])
    first = Outbox(system)
    token = system.open_stream("s1", first.queue, None)
    first.frames()
    reply = system.infer("a", REQ, False, "chat/completions")
    sent = first.frames()[0]
    system.close_stream("s1", token)
    second = Outbox(system)
    system.open_stream("s1", second.queue, str(int(sent.id) - 1))
    frames = second.frames()
    assert [f.event for f in frames] == ["hello", "task"]
    assert frames[1].id == sent.id and frames[1].data == sent.data
    system.submit_result(sent.json()["taskId"], None, {"status": 200, "body": {"ok": 1}})
    assert events(reply, m.Completed)[-1] == m.Completed(200, {"ok": 1})
    # An id this process never sent replays nothing.
    third = Outbox(system)
    system.open_stream("s1", third.queue, "10000")
    assert [f.event for f in third.frames()] == ["hello"]


def test_queue_bound_counts_waiting_requests_not_tasks_in_flight(system_factory):
    system = system_factory(max_queue_per_llm=2)
    outbox = _online(system, {**provider("a"), "maxConcurrency": 1})
    replies = [system.infer("a", REQ, False, "chat/completions") for _ in range(4)]
    last = replies[3].get(timeout=2)
    assert isinstance(last, m.Failed)
    assert (last.error.status, last.error.code) == (429, "queue_full")
    # One in flight, two waiting: the slot's release takes the head of the queue.
    first = outbox.tasks()
    assert len(first) == 1
    system.submit_result(first[0]["taskId"], None, {"status": 200, "body": 1})
    assert len(outbox.tasks()) == 1


def test_stream_idle_timeout_after_chunks(system_factory):
    system = system_factory(stream_idle_timeout_s=0.3, infer_timeout_s=30)
    outbox = _online(system, provider("a"))
    reply = system.infer("a", {**REQ, "stream": True}, True, "chat/completions")
    task = outbox.tasks()[0]
    system.submit_result(task["taskId"], None, {"chunk": {"data": "{}"}})
    seen = events(reply, m.Failed)
    assert isinstance(seen[0], m.Chunks)  # (its Dispatched is on the channel, not queued)
    assert seen[-1].error.code == "stream_idle_timeout"
    assert outbox.tasks() == [{"kind": "cancel", "taskId": task["taskId"]}]
    with pytest.raises(TetherError) as late:
        system.submit_result(task["taskId"], None, {"chunk": {"data": "{}"}})
    assert late.value.status == 404


def test_drain_answers_everyone_and_tells_publishers_to_retry(system):
    outbox = _online(system, provider("a"), provider("z", "hibernating"))
    busy = system.infer("a", REQ, False, "chat/completions")
    waking = system.infer("z", REQ, False, "chat/completions")
    outbox.tasks()
    system.drain()
    assert events(busy, m.Failed)[-1].error.code == "shutting_down"
    assert events(waking, m.Failed)[-1].error.code == "shutting_down"
    closes = [f for f in outbox.frames() if isinstance(f, m.Close)]
    assert closes and closes[0].retry_ms == 1000


def test_a_drain_finishes_tasks_under_way_and_refuses_new_ones(system):
    outbox = _online(system, provider("a"))
    busy = system.infer("a", REQ, False, "chat/completions")
    task = outbox.tasks()[0]
    system.drain(deadline_s=5)
    late = system.infer("a", REQ, False, "chat/completions")
    assert events(late, m.Failed)[-1].error.code == "shutting_down"
    assert not [f for f in outbox.frames() if isinstance(f, m.Close)]  # still serving
    system.submit_result(task["taskId"], None, {"status": 200, "body": {"done": 1}})
    assert events(busy, m.Completed)[-1].body == {"done": 1}
    closes = [f for f in outbox.frames() if isinstance(f, m.Close)]
    assert closes and closes[0].retry_ms == 1000  # then the stream ends: reconnect later


def test_an_unknown_llm_and_an_unknown_task(system):
    with pytest.raises(TetherError) as missing:
        system.infer("nope", REQ, False, "chat/completions")
    assert missing.value.code == "llm_not_found"
    for task_id in ("1-abc", "zz", "ffff-1"):
        with pytest.raises(TetherError) as unknown:
            system.submit_result(task_id, None, {"status": 200})
        assert unknown.value.code == "task_not_found"


def test_a_result_is_told_and_one_that_comes_after_its_task_ended_is_dropped(system):
    """The result route checks a result against the task board and tells it: the session
    actor takes results in the order told, and drops one that lost the race with the task's
    end (a timeout, a cancel, another result), as a late result always was."""
    outbox = _online(system, provider("a"))
    reply = system.infer("a", REQ, False, "chat/completions")
    [task] = outbox.tasks()
    session = system.directory.session("s1").ref
    system.submit_result(task["taskId"], "s1", {"status": 200, "body": {"ok": 1}})
    session.tell(m.SubmitResult(task["taskId"], {"status": 500, "body": None}))  # too late
    assert events(reply, m.Completed) == [m.Completed(200, {"ok": 1})]
    settle(system)
    assert reply.qsize() == 0
    assert system.directory.session("s1").ref is session  # dropped, not crashed on
    with pytest.raises(TetherError) as late:  # whoever saw the end finds the task gone
        system.submit_result(task["taskId"], "s1", {"status": 200, "body": {}})
    assert late.value.code == "task_not_found"


def test_a_result_is_checked_task_then_owner_then_kind(system):
    outbox = _online(system, provider("a"))
    reply = system.infer("a", REQ, False, "chat/completions")
    [task] = outbox.tasks()
    chunk = {"chunk": {"data": "{}"}}
    with pytest.raises(TetherError) as other:
        system.submit_result(task["taskId"], "s2", chunk)
    assert other.value.code == "forbidden"
    with pytest.raises(TetherError) as not_mine:
        system.submit_result(task["taskId"], None, chunk, lambda session_id: False)
    assert not_mine.value.code == "forbidden"
    with pytest.raises(TetherError) as kind:
        system.submit_result(task["taskId"], "s1", chunk)
    assert kind.value.code == "not_streaming"
    system.submit_result(task["taskId"], "s1", {"status": 200, "body": {"still": "fine"}})
    assert events(reply, m.Completed)[-1] == m.Completed(200, {"still": "fine"})


def test_reply_channel_is_not_left_waiting_when_offline(system):
    system.register("s1", [provider("a")])
    reply: queue.Queue = system.infer("a", REQ, False, "chat/completions")
    failed = reply.get(timeout=2)
    assert isinstance(failed, m.Failed) and failed.error.code == "publisher_offline"


def test_a_quick_reconnect_never_leaves_the_row_inactive(system):
    """Drop and re-register at once: the stream loss may reach the Llm after the new
    registration's write; the row must still end up active, in the store and the actor."""
    system.register("s1", [provider("a")])
    for _ in range(30):
        token = system.open_stream("s1", Outbox(system).queue, None)
        system.close_stream("s1", token)
        system.register("s1", [provider("a")])  # the publisher comes right back
        system.open_stream("s1", Outbox(system).queue, None)
        settle(system)  # let every message of the cascade arrive
        assert store.get("a").status == "active"


def test_a_real_drop_after_a_registration_on_a_live_stream_still_counts(system):
    """A publisher may register again while its stream stays up (a backend came up later);
    when that stream then drops for good, its rows go inactive and stay so."""
    system.register("s1", [provider("a")])
    token = system.open_stream("s1", Outbox(system).queue, None)
    system.register("s1", [provider("a"), provider("b")])  # same stream, one more backend
    system.close_stream("s1", token)
    settle(system)  # the cascade: session -> supervisor -> each Llm
    assert store.get("a").status == "inactive"
    assert store.get("b").status == "inactive"


def test_an_llm_whose_name_moved_answers_its_waiters_hub_busy_not_shutting_down(system):
    # With a bus, a process whose lease of a name was taken over (Redis lost it, another
    # process took it) gives that name up: what waits here is worth a retry, which the new
    # owner serves; the hub itself is not shutting down.
    outbox = _online(system, {**provider("a"), "maxConcurrency": 1})
    running = system.infer("a", REQ, False, "chat/completions")
    waiting = system.infer("a", REQ, False, "chat/completions")
    task = outbox.tasks()[0]
    ref = system.directory.llm("a")
    ref.tell(m.Relinquish())
    assert events(waiting, m.Failed)[-1].error.code == "hub_busy"
    assert ref.actor_stopped.wait(3)  # and then it stopped
    # The task under way is its session's, and still ends with its answer.
    system.submit_result(task["taskId"], None, {"status": 200, "body": {"ok": 1}})
    assert events(running, m.Completed)[-1] == m.Completed(200, {"ok": 1})
