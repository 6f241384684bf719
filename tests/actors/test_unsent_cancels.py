"""A task that ends while its publisher's stream is down is cancelled at the publisher
once the stream is back: the publisher may be running it, and a stalled backend would hold
its slot until the backend's own read timeout."""

from __future__ import annotations

from tests.support.actors import Outbox, dispatched, events, provider, task_payloads
from tether.actors import messages as m

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def _cancels(frames) -> list[str]:
    return [t["taskId"] for t in task_payloads(frames) if t["kind"] == "cancel"]


def test_a_cancel_made_while_the_stream_was_down_is_sent_when_it_is_back(system_factory):
    system = system_factory(publisher_grace_s=30)
    system.register("s1", [provider("a")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    reply = system.infer("a", REQ, False, "chat/completions")
    started = dispatched(reply)
    assert started is not None
    [sent] = outbox.tasks()
    system.close_stream("s1", token)  # the task waits out the grace
    system.cancel(started, "client_gone")  # its client left meanwhile
    back = Outbox(system)
    system.open_stream("s1", back.queue, None)  # a publisher that restarted: no replay
    assert _cancels(back.frames()) == [sent["taskId"]]


def test_a_task_failed_at_the_end_of_the_grace_is_cancelled_when_the_stream_is_back(
        system_factory):
    system = system_factory(publisher_grace_s=0.2)
    system.register("s1", [provider("a")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    reply = system.infer("a", REQ, False, "chat/completions")
    [sent] = outbox.tasks()
    system.close_stream("s1", token)
    failed = events(reply, m.Failed)[-1]  # the grace ran out
    assert failed.error.code == "publisher_disconnected"
    back = Outbox(system)
    system.open_stream("s1", back.queue, None)
    assert _cancels(back.frames()) == [sent["taskId"]]
