"""A crashed actor's mailbox is answered, not dropped (PROTOCOL.md, Faults the hub survives):
pykka drops the tells still queued for an actor that crashed, so the requests among them
would wait until their client gave up."""

from __future__ import annotations

import queue
import threading
from typing import Any

import peewee

from tests.support.actors import Outbox, events, provider, settle
from tests.support.hub import wait_until
from tether.actors import messages as m
from tether.common.actor import Ping, tell
from tether.store import llms as store
from tether.store.models import utcnow

REQ = {"messages": [{"role": "user", "content": "hi"}]}


class _Blocked:
    """Stands in for a store write: it blocks until released, then fails as a bug would."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(10)
        raise peewee.IntegrityError("CHECK constraint failed")


def test_infers_sent_while_an_llm_actor_was_blocked_in_a_failing_write_are_answered(
        system, monkeypatch):
    system.register("s1", [provider("a")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    old = system.directory.llm("a")
    blocked = _Blocked()
    monkeypatch.setattr(store, "set_status", blocked)
    system.close_stream("s1", token)  # the Llm's actor writes `inactive`: it blocks there
    assert blocked.entered.wait(5)
    waiting = [system.infer("a", REQ, False, "chat/completions") for _ in range(3)]
    blocked.release.set()  # the write fails: the actor crashes with three infers queued
    for reply in waiting:
        failed = events(reply, m.Failed)[-1]
        assert (failed.error.status, failed.error.code) == (503, "actor_restarted")
    monkeypatch.undo()
    wait_until(lambda: system.directory.llm("a") not in (None, old))


class _HeldStream(queue.Queue):
    """The SSE writer's queue; once armed, its next write waits until released, then
    (`fails`) fails as a bug would: the session actor crashes while writing a task."""

    def __init__(self, fails: bool) -> None:
        super().__init__()
        self.fails = fails
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def put(self, item, block=True, timeout=None):
        if self.armed:
            self.armed = False  # once
            self.entered.set()
            self.release.wait(10)
            if self.fails:
                raise RuntimeError("the stream writer failed")
        super().put(item, block, timeout)


def _session_held_in_a_write(system, fails: bool) -> tuple[_HeldStream, Any, Any]:
    """s1 serving "a", its session actor held writing the first task's frame: the stream,
    the session's ref, and that task's reply channel."""
    system.register("s1", [provider("a")])
    stream = _HeldStream(fails)
    system.open_stream("s1", stream, None)
    settle(system)
    session = system.directory.session("s1").ref
    stream.armed = True
    first = system.infer("a", REQ, False, "chat/completions")
    assert stream.entered.wait(5)
    return stream, session, first


def test_tasks_sent_to_a_session_actor_that_crashed_before_reading_them_are_answered(system):
    stream, session, first = _session_held_in_a_write(system, fails=True)
    replies = [first]
    replies += [system.infer("a", REQ, False, "chat/completions") for _ in range(2)]
    # The Llm's actor sent both: they wait in the blocked session's mailbox.
    wait_until(lambda: sum(system.in_flight("a").values()) == 3)
    stream.release.set()
    for reply in replies:
        failed = events(reply, m.Failed)[-1]
        assert (failed.error.status, failed.error.code) == (503, "actor_restarted")
    wait_until(lambda: system.directory.session("s1").ref is not session)
    settle(system)
    assert sum(system.in_flight("a").values()) == 0  # no slot left counted


def test_a_stream_loss_queued_behind_a_supervisor_crash_reaches_the_new_supervisor(
        system, monkeypatch):
    system.register("s1", [provider("a")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    old = system.supervisor
    blocked = _Blocked()
    monkeypatch.setattr(store, "delete_expired", blocked)
    tell(old, m.RetireExpired(utcnow()))  # what the sweeper sends: it blocks there
    assert blocked.entered.wait(5)
    system.close_stream("s1", token)  # the session tells the blocked supervisor
    # Once the session answers a Ping, it has told the supervisor (its mailbox holds it).
    system.directory.session("s1").ref.ask(Ping(), timeout=5)
    blocked.release.set()  # the supervisor crashes with the stream's loss still queued
    wait_until(lambda: system.supervisor is not old)
    monkeypatch.undo()
    # The restarted supervisor had the loss: the Llm's actor marks its member inactive.
    wait_until(lambda: store.get("a").status == "inactive")


def test_what_is_left_to_a_session_actor_that_stopped_is_answered(system):
    """pykka drops what is still queued for an actor that stopped, as for one that crashed
    (an evicted session stops FORWARD_S after its move, a forgotten one at once): the
    requests among it are answered and their slots freed, and a stream told to open there
    ends, so its publisher opens one again."""
    stream, session, first = _session_held_in_a_write(system, fails=False)
    session.stop(block=False)  # queued: what comes after it is left in the mailbox
    left = [system.infer("a", REQ, False, "chat/completions") for _ in range(2)]
    wait_until(lambda: sum(system.in_flight("a").values()) == 3)
    late: queue.Queue = queue.Queue()
    system.open_stream("s1", late, None)
    stream.release.set()
    assert events(first, m.Failed)[-1].error.code == "shutting_down"  # its drain, on_stop
    for reply in left:
        failed = events(reply, m.Failed)[-1]
        assert (failed.error.status, failed.error.code) == (503, "actor_restarted")
        assert "has stopped" in failed.error.message
    assert isinstance(late.get(timeout=5), m.Close)
    wait_until(lambda: sum(system.in_flight("a").values()) == 0)  # no slot left counted


def test_infers_left_to_an_llm_actor_that_stopped_are_answered(system, monkeypatch):
    system.register("s1", [provider("a")])
    outbox = Outbox(system)
    token = system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    llm = system.directory.llm("a")
    entered, release, real = threading.Event(), threading.Event(), store.set_status

    def set_status(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "set_status", set_status)
    system.close_stream("s1", token)  # the Llm's actor writes `inactive`: it waits there
    assert entered.wait(5)
    llm.stop(block=False)  # queued: what comes after it is left in the mailbox
    left = [system.infer("a", REQ, False, "chat/completions") for _ in range(2)]
    release.set()
    for reply in left:
        failed = events(reply, m.Failed)[-1]
        assert (failed.error.status, failed.error.code) == (503, "shutting_down")


def test_infers_left_to_a_public_llm_actor_that_stopped_are_answered(system_factory,
                                                                     monkeypatch):
    from tether.actors import public_llm
    from tether.config import PublicLlm

    system = system_factory(llms=(PublicLlm("cloud", "openai", "m", "http://127.0.0.1:9/v1"),))
    actor = system.directory.llm("cloud")
    entered, release, real = threading.Event(), threading.Event(), public_llm.metrics.llm_seen

    def llm_seen(owner, *args, **kwargs):  # the actor's report after each message
        if owner == actor.actor_urn and not release.is_set():
            entered.set()
            release.wait(10)
        return real(owner, *args, **kwargs)

    monkeypatch.setattr(public_llm.metrics, "llm_seen", llm_seen)
    first = system.infer("cloud", REQ, False, "chat/completions")  # the actor waits after it
    assert entered.wait(5)
    actor.stop(block=False)  # queued: what comes after it is left in the mailbox
    left = system.infer("cloud", REQ, False, "chat/completions")
    release.set()
    events(first, m.Failed)  # its upstream does not answer: port 9
    failed = events(left, m.Failed)[-1]
    assert (failed.error.status, failed.error.code) == (503, "actor_restarted")
    assert "has stopped" in failed.error.message
