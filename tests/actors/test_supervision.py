"""Crashes: waiters are answered, the child is rebuilt from the store, restarts are bounded."""

from __future__ import annotations

import queue
import socket
import threading

import peewee
import pykka
import pytest
from falcon import testing

from tests.support.actors import Outbox, dispatched, events, provider, settle, take
from tests.support.hub import wait_until
from tether.actors import messages as m
from tether.actors.llm import LlmActor
from tether.actors.restarts import MAX_RESTARTS
from tether.actors.system import ActorSystem
from tether.common.actor import Ping, tell
from tether.config import PublicLlm, Settings
from tether.errors import TetherError
from tether.http.app import create_app
from tether.store import llms as store
from tether.store.models import KIND_VIRTUAL, utcnow

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def _crash(system, kind: str, key: str) -> None:
    """Crash a child; once settled, the supervisor has rebuilt it (or given up on it)."""
    assert system.inject_crash(kind, key)
    settle(system)


def _online(system, *providers) -> Outbox:
    system.register("s1", list(providers))
    outbox = Outbox(system)
    system.open_stream("s1", outbox.queue, None)
    outbox.frames()
    return outbox


def test_a_crashed_llm_actor_answers_its_waiters_and_comes_back(system):
    outbox = _online(system, provider("a"), provider("sleepy", "hibernating"))
    old = system.directory.llm("sleepy")
    waiting = system.infer("sleepy", REQ, False, "chat/completions")
    first_wake = outbox.tasks()[0]
    _crash(system, "llm", "sleepy")
    failed = events(waiting, m.Failed)[-1]
    assert (failed.error.status, failed.error.code) == (503, "actor_restarted")
    assert system.directory.llm("sleepy") not in (None, old)
    # Rebuilt from the store: still hibernating, and the next infer wakes it afresh.
    again = system.infer("sleepy", REQ, False, "chat/completions")
    wake = next(t for t in outbox.tasks() if t["kind"] == "wake")
    assert wake["taskId"] != first_wake["taskId"]
    system.submit_result(wake["taskId"], None, {"status": 200})
    infer = next(t for t in outbox.tasks() if t["kind"] == "infer")
    system.submit_result(infer["taskId"], None, {"status": 200, "body": {"ok": 1}})
    assert events(again, m.Completed)[-1] == m.Completed(200, {"ok": 1})
    # The other Llm never noticed.
    other = system.infer("a", REQ, False, "chat/completions")
    task = outbox.tasks()[0]
    system.submit_result(task["taskId"], None, {"status": 200, "body": {"a": 1}})
    assert events(other, m.Completed)[-1].body == {"a": 1}


def test_a_crashed_session_actor_fails_its_tasks_and_is_relinked(system):
    outbox = _online(system, provider("a"))
    pending = system.infer("a", REQ, False, "chat/completions")
    outbox.tasks()
    old = system.directory.session("s1").ref
    _crash(system, "session", "s1")
    assert events(pending, m.Failed)[-1].error.code == "actor_restarted"
    assert any(isinstance(f, m.Close) for f in outbox.frames())  # the publisher reconnects
    assert system.directory.session("s1").ref is not old
    fresh = Outbox(system)
    system.open_stream("s1", fresh.queue, None)
    fresh.frames()
    assert store.get("a").status == "active"  # the new stream takes the rows back
    reply = system.infer("a", REQ, False, "chat/completions")
    task = fresh.tasks()[0]  # the LlmActor reaches the new session actor
    system.submit_result(task["taskId"], None, {"status": 200, "body": {}})
    assert isinstance(events(reply, m.Completed)[-1], m.Completed)


def test_restarts_are_bounded_then_the_rows_go_inactive(system):
    _online(system, provider("a"))
    for _ in range(MAX_RESTARTS + 1):
        ref = system.directory.llm("a")
        assert ref is not None
        _crash(system, "llm", "a")
        assert system.directory.llm("a") is not ref
    assert system.directory.llm("a") is None
    assert store.get("a").status == "inactive"
    with pytest.raises(TetherError) as offline:  # down, but known: 503, not 404
        system.infer("a", REQ, False, "chat/completions")
    assert offline.value.code == "publisher_offline"


def test_a_status_report_is_checked_whole_before_any_name_is_applied(system):
    """Issue 10.10: a name that failed half-way used to leave the names before it applied
    (and an Llm whose actor was down answered 500)."""
    _online(system, provider("a"), provider("b"))
    for _ in range(MAX_RESTARTS + 1):  # b's actor crashes until its supervisor gives up
        ref = system.directory.llm("b")
        _crash(system, "llm", "b")
        assert system.directory.llm("b") is not ref
    with pytest.raises(TetherError) as refused:
        system.set_status("s1", [("a", "hibernating"), ("b", "hibernating")])
    assert refused.value.status == 503
    assert store.get("a").status == "active"  # nothing of the refused report applied
    with pytest.raises(TetherError) as foreign:
        system.set_status("s1", [("a", "hibernating"), ("nobody", "hibernating")])
    assert foreign.value.code == "forbidden"
    assert store.get("a").status == "active"
    with pytest.raises(TetherError) as unknown:
        system.set_status("never-registered", [("a", "hibernating")])
    assert unknown.value.code == "session_not_found"
    system.set_status("s1", [("a", "hibernating")])
    assert store.get("a").status == "hibernating"


def test_frame_ids_keep_increasing_across_a_session_actor_restart(system):
    """Issue 10.12: a restarted session actor counted frame ids from 1 again, so a publisher
    resuming with Last-Event-ID could skip the new actor's tasks as already seen."""
    outbox = _online(system, provider("a"))
    system.infer("a", REQ, False, "chat/completions")
    before = [int(f.id) for f in outbox.frames() if getattr(f, "event", "") == "task"]
    assert before
    old = system.directory.session("s1").ref
    _crash(system, "session", "s1")
    assert system.directory.session("s1").ref is not old
    fresh = Outbox(system)
    system.open_stream("s1", fresh.queue, None)
    settle(system)
    assert store.get("a").status == "active"  # the new stream takes the rows back
    system.infer("a", REQ, False, "chat/completions")
    after = [int(f.id) for f in fresh.frames() if getattr(f, "event", "") == "task"]
    assert after and min(after) > max(before)


# --- the root actors (issue 10.1) --------------------------------------------------------


class _FailOnce:
    """Stands in for a store function: the first call raises `error` (by default one the
    database answered with, as a bug of ours would make; not an outage)."""

    def __init__(self, real, error=None):
        self.real = real
        self.error = error or peewee.IntegrityError("NOT NULL constraint failed")
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.real(*args, **kwargs)


def test_a_database_error_in_the_supervisor_restarts_it_with_its_children(system, monkeypatch):
    """A supervisor handler that raised used to kill it for good: every register then got
    503 and /healthz still said ok."""
    outbox = _online(system, provider("a"))
    old = system.supervisor
    monkeypatch.setattr(store, "delete_expired", _FailOnce(store.delete_expired))
    tell(old, m.RetireExpired(utcnow()))  # what the sweeper sends every gc_interval_s
    wait_until(lambda: system.supervisor is not old)
    wait_until(system.healthy)
    # The children were adopted, not rebuilt: the open stream still carries tasks.
    reply = system.infer("a", REQ, False, "chat/completions")
    task = outbox.tasks()[0]
    system.submit_result(task["taskId"], None, {"status": 200, "body": {"ok": 1}})
    assert events(reply, m.Completed)[-1].body == {"ok": 1}
    # Registering works again, and a child's crash reaches the new supervisor.
    system.register("s2", [provider("b")])
    child = system.directory.llm("a")
    assert system.inject_crash("llm", "a")
    wait_until(lambda: system.directory.llm("a") not in (None, child))


def test_an_outage_in_the_supervisor_or_the_sweeper_is_no_crash(system_factory, monkeypatch):
    """An engine that does not answer is waited out: a restart would read the store and
    crash again, and past the restart intensity the worker would exit for it."""
    system = system_factory(gc_interval_s=0.05)
    outage = peewee.OperationalError("could not connect to server: Connection refused")
    supervisor, sweeper = system.supervisor, system._sweeper
    retire = _FailOnce(store.delete_expired, outage)
    stale = _FailOnce(store.stale_names, outage)
    monkeypatch.setattr(store, "delete_expired", retire)
    monkeypatch.setattr(store, "stale_names", stale)
    wait_until(lambda: retire.calls > 2 and stale.calls > 2)  # the sweeps go on
    assert (system.supervisor, system._sweeper) == (supervisor, sweeper)
    assert system.healthy()


def test_a_database_error_in_the_sweeper_restarts_it(system_factory, monkeypatch):
    system = system_factory(gc_interval_s=0.05)
    failing = _FailOnce(store.stale_names)
    monkeypatch.setattr(store, "stale_names", failing)
    old = system._sweeper
    wait_until(lambda: system._sweeper is not old)
    seen = failing.calls
    wait_until(lambda: failing.calls > seen + 2)  # sweeping goes on
    assert system.healthy()


def test_root_restarts_are_bounded_then_the_worker_exits(tmp_path):
    fatal = threading.Event()
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'root.db'}")
    system = ActorSystem(settings, on_fatal=fatal.set).start()
    try:
        for _ in range(MAX_RESTARTS + 1):
            ref = system.supervisor
            assert system.inject_crash("supervisor", "")
            wait_until(lambda ref=ref: fatal.is_set() or system.supervisor is not ref)
        assert fatal.is_set()
        assert not system.healthy()  # /healthz answers 503 until the worker is replaced
    finally:
        system.stop()


def test_healthz_is_503_while_a_root_actor_is_down(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'health.db'}")
    system = ActorSystem(settings, on_fatal=lambda: None).start()
    client = testing.TestClient(create_app(settings, system))
    try:
        assert client.simulate_get("/healthz").json == {"status": "ok", "database": "ok",
                                                        "bus": "off"}
        for _ in range(MAX_RESTARTS + 1):
            ref = system._sweeper
            system.inject_crash("sweeper", "")
            wait_until(lambda ref=ref: not ref.is_alive())
        r = client.simulate_get("/healthz")
        assert r.status_code == 503 and r.json["error"]["code"] == "unhealthy"
    finally:
        system.stop()


# --- restarted children (issues 10.2, 10.3) ----------------------------------------------


def test_a_restarted_session_actor_has_no_stream_so_its_rows_go_inactive(system):
    _online(system, provider("a"), provider("sleepy", "hibernating"))
    old = system.directory.session("s1").ref
    _crash(system, "session", "s1")
    assert system.directory.session("s1").ref is not old
    assert store.get("a").status == "inactive"
    assert store.get("sleepy").status == "hibernating"  # as on a stream loss
    offline = events(system.infer("a", REQ, False, "chat/completions"), m.Failed)[-1]
    assert offline.error.code == "publisher_offline"
    # The publisher's reconnect takes them back.
    system.register("s1", [provider("a"), provider("sleepy", "hibernating")])
    system.open_stream("s1", Outbox(system).queue, None)
    settle(system)
    assert store.get("a").status == "active"


def test_a_crashed_llm_actor_cancels_its_wake_at_the_session(system):
    outbox = _online(system, provider("sleepy", "hibernating"))
    system.infer("sleepy", REQ, False, "chat/completions")
    wake = outbox.tasks()[0]
    assert wake["kind"] == "wake"
    assert system.inject_crash("llm", "sleepy")
    cancel = outbox.tasks()
    assert cancel == [{"kind": "cancel", "taskId": wake["taskId"]}]
    with pytest.raises(TetherError) as gone:  # the session forgot it too
        system.submit_result(wake["taskId"], None, {"status": 200})
    assert gone.value.code == "task_not_found"


def test_a_restarted_llm_actor_counts_the_tasks_still_in_flight(system_factory):
    system = system_factory()
    outbox = _online(system, {**provider("a"), "maxConcurrency": 2})
    system.infer("a", REQ, False, "chat/completions")
    system.infer("a", REQ, False, "chat/completions")
    first, _second = outbox.tasks()
    old = system.directory.llm("a")
    _crash(system, "llm", "a")
    assert system.directory.llm("a") not in (None, old)
    reply = system.infer("a", REQ, False, "chat/completions")
    assert outbox.tasks() == []  # the two tasks still hold the member's two slots
    system.submit_result(first["taskId"], None, {"status": 200, "body": {}})
    assert outbox.tasks()[0]["kind"] == "infer"  # a slot freed: the waiting one goes
    settle(system)
    assert not any(isinstance(e, m.Failed) for e in take(reply))


class _Recorder(pykka.ThreadingActor):
    """Stands in for a SessionActor: keeps what it is told."""

    def __init__(self, seen: queue.Queue) -> None:
        super().__init__()
        self.seen = seen

    def on_receive(self, message):
        self.seen.put(message)


def test_a_restarted_llm_actor_gives_a_member_no_task_before_its_session_counted_them():
    # The new actor's first infer can arrive before the session's TasksInFlight: sending
    # then would put a member above its maxConcurrency.
    seen: queue.Queue = queue.Queue()
    session = _Recorder.start(seen)
    info = m.MemberInfo(m.SessionLink("s1", 1, session), "active", 2, True)
    llm = LlmActor.start(Settings(), m.LlmState("a", KIND_VIRTUAL, "s1", "active"), (info,),
                         restarted=True)

    def told() -> list:
        llm.ask(Ping())
        session.ask("flushed")  # everything the LlmActor told it is in `seen` by now
        out = []
        while (item := seen.get_nowait()) != "flushed":
            out.append(item)
        return out

    llm.tell(m.Infer(REQ, False, "chat/completions", queue.Queue()))
    assert told() == []  # the member's load is not known yet
    llm.tell(m.TasksInFlight("s1", ("1-a", "1-b")))
    assert told() == []  # its two slots are taken by the predecessor's tasks
    llm.tell(m.TaskEnded("1-a"))
    sent = told()
    assert [type(x) for x in sent] == [m.SendInfer]


def test_a_later_hub_process_never_reuses_an_earlier_ones_frame_ids(tmp_path):
    """Counted from 1 in every process, an id a publisher kept across a hub restart could
    be taken for one the new process sent, and its Last-Event-ID would skip a task."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ids.db'}", publisher_grace_s=0)
    ids = []
    for _ in range(2):  # two hub processes, one after the other
        system = ActorSystem(settings).start()
        try:
            outbox = _online(system, provider("a"))
            system.infer("a", REQ, False, "chat/completions")
            ids.append([int(f.id) for f in outbox.frames() if getattr(f, "event", "") == "task"])
        finally:
            system.stop()
    assert ids[0] and ids[1] and min(ids[1]) > max(ids[0]) and max(ids[1]) < 2**53


class _SilentUpstream:
    """Accepts connections and answers nothing until closed: upstream calls stay running."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_a_restarted_public_llm_actor_counts_the_upstream_calls_still_running(system_factory):
    upstream = _SilentUpstream()
    cloud = PublicLlm("cloud", "openai", "m", upstream.base_url)
    system = system_factory(max_queue_per_llm=1, llms=(cloud,))
    try:
        running = system.infer("cloud", REQ, False, "chat/completions")
        assert isinstance(dispatched(running), m.Dispatched)
        wait_until(lambda: upstream.conns)
        old = system.directory.llm("cloud")
        assert system.inject_crash("llm", "cloud")
        wait_until(lambda: system.directory.llm("cloud") not in (None, old))
        full = events(system.infer("cloud", REQ, False, "chat/completions"), m.Failed)[-1]
        assert full.error.code == "queue_full"  # the call still running counts
        upstream.close()  # the call ends: it reports to the restarted actor
        assert events(running, m.Failed)[-1].error.code == "upstream_unreachable"

        def accepted() -> bool:
            reply = system.infer("cloud", REQ, False, "chat/completions")
            return isinstance(dispatched(reply), m.Dispatched)

        wait_until(accepted)
    finally:
        upstream.close()
