"""A stream opens without an ask (issue 26, part 4): the handler tells the session and
returns. The session writes `hello` only once the supervisor has told the session's
LlmActors (StreamAnnounced), so a member gets work as soon as its publisher sees `hello`,
never a 503 before: even when the supervisor is busy, and when the old stream's loss is
still queued there."""

from __future__ import annotations

import queue
import threading

from tests.support.actors import Outbox, dispatched, parse, provider, take
from tether.actors import messages as m
from tether.common.actor import Ping
from tether.store import llms as store

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def _hold_supervisor(system, monkeypatch) -> threading.Event:
    """The supervisor busy writing a registration until the returned event is set."""
    real, started, release = store.register_many, threading.Event(), threading.Event()

    def register_many(group):
        started.set()
        assert release.wait(10)
        return real(group)

    monkeypatch.setattr(store, "register_many", register_many)
    system.supervisor.ask(m.Register("busy", (provider("other"),)), block=False)
    assert started.wait(5)
    return release


def _opened_quietly(system, session_id: str) -> queue.Queue:
    """Open a stream; once its session handled that, nothing was written on it yet."""
    stream: queue.Queue = queue.Queue()
    system.open_stream(session_id, stream, None)
    system.directory.session(session_id).ref.ask(Ping(), timeout=5)
    assert take(stream) == []  # no `hello` while the LlmActors have not heard
    return stream


def _served_at_hello(system, stream: queue.Queue) -> None:
    assert parse([stream.get(timeout=5)])[0].event == "hello"
    reply = system.infer("a", REQ, False, "chat/completions")  # at once, as a client may
    assert isinstance(dispatched(reply), m.Dispatched)


def test_hello_waits_for_a_busy_supervisor_and_then_the_name_is_served(system, monkeypatch):
    system.register("s1", [provider("a")])
    release = _hold_supervisor(system, monkeypatch)
    stream = _opened_quietly(system, "s1")
    release.set()
    _served_at_hello(system, stream)


def test_a_reconnect_is_served_at_hello_though_the_old_loss_was_queued(system, monkeypatch):
    """A publisher reconnects as `tether publish` does (register, then stream) while the
    supervisor is busy: the old stream's loss, the registration and the new stream's
    opening reach the LlmActor in that order before the new `hello`: no 503 after it."""
    system.register("s1", [provider("a")])
    first = Outbox(system)
    token = system.open_stream("s1", first.queue, None)
    assert first.frames()[0].event == "hello"
    release = _hold_supervisor(system, monkeypatch)
    system.close_stream("s1", token)  # its loss waits at the supervisor
    system.directory.session("s1").ref.ask(Ping(), timeout=5)
    registered = system.supervisor.ask(m.Register("s1", (provider("a"),)), block=False)
    stream = _opened_quietly(system, "s1")
    release.set()
    assert registered.get(timeout=5)[0] == "s1"
    _served_at_hello(system, stream)


def test_a_task_sent_while_a_new_stream_waits_for_hello_goes_out_after_it(system, monkeypatch):
    """A reconnect replaces a live stream: its LlmActor still counts the member live and
    sends it work before the new `hello`. The task waits for that stream (even without
    publisher_grace_s) and is its first task frame."""
    system.register("s1", [provider("a")])
    first = Outbox(system)
    system.open_stream("s1", first.queue, None)
    assert first.frames()[0].event == "hello"
    release = _hold_supervisor(system, monkeypatch)
    stream = _opened_quietly(system, "s1")
    reply = system.infer("a", REQ, False, "chat/completions")
    sent = dispatched(reply)
    assert isinstance(sent, m.Dispatched)
    system.directory.session("s1").ref.ask(Ping(), timeout=5)
    assert take(stream) == []
    release.set()
    frames = parse([stream.get(timeout=5), stream.get(timeout=5)])
    assert [frame.event for frame in frames] == ["hello", "task"]
    assert frames[1].json()["taskId"] == sent.task_id
