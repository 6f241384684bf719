"""The supervisor's directory: snapshots readers can hold, published at a cost that does not
grow with the number of sessions (opening 10,000 sessions was quadratic)."""

from __future__ import annotations

import itertools
import threading

import pykka
import pytest

from tests.support.actors import Outbox, provider, settle
from tether.actors.directory import Directory, Index, SessionEntry
from tether.actors.llm import LlmActor
from tether.actors.session import SessionActor
from tether.actors.supervisor import Supervisor
from tether.config import Settings


def test_an_index_is_a_mapping_whose_snapshots_never_change():
    index: Index[str, int] = Index()
    index["a"] = 1
    index["b"] = 2
    before = index.snapshot()
    index["a"] = 10
    del index["b"]
    index["c"] = 3
    assert index.pop("c") == 3
    assert index.pop("missing", None) is None
    with pytest.raises(KeyError):
        del index["b"]
    assert dict(before) == {"a": 1, "b": 2}  # a reader's snapshot is frozen
    assert dict(index.snapshot()) == {"a": 10} == dict(index)
    assert ("a" in index, "b" in index, len(index), index.get("b", 0)) == (True, False, 1, 0)


def test_directory_lookups():
    ref = object()
    entry = SessionEntry("s1", ref, 7, frozenset({"m"}))  # type: ignore[arg-type]
    directory = Directory(
        llms=Index({"m": ref}).snapshot(),
        sessions=Index({"s1": entry}).snapshot(),
        slots=Index({7: "s1"}).snapshot(),
    )
    assert directory.llm("m") is ref and directory.llm("x") is None
    assert directory.session("s1") == entry and directory.session("x") is None
    assert directory.session_by_slot(7) == entry and directory.session_by_slot(8) is None
    assert Directory().llm("m") is None


def test_publishing_the_directory_does_not_copy_it():
    # Copying three maps of 10,000 entries after each registration made opening 10,000
    # sessions quadratic. Published maps are the supervisor's own, frozen (no copy), and a
    # change after publishing shows only in the next directory. (How long publishing takes
    # is for `make bench`: `python -m bench.run sessions`.)
    published: list[Directory] = []
    supervisor = Supervisor(Settings(), published.append)  # not started: just its state
    entry = SessionEntry("s", None, 0, frozenset({"m"}))  # type: ignore[arg-type]
    supervisor._llms = Index({f"m{i}": None for i in range(10_000)})
    supervisor._sessions = Index({f"s{i}": entry for i in range(10_000)})
    supervisor._slots = Index({i: f"s{i}" for i in range(10_000)})
    supervisor._publish_directory()
    first = published[-1]
    assert first.llms is supervisor._llms.snapshot()
    assert first.sessions is supervisor._sessions.snapshot()
    assert first.slots is supervisor._slots.snapshot()
    supervisor._llms["one more"] = None  # the way a registration changes them
    supervisor._publish_directory()
    assert "one more" in published[-1].llms and "one more" not in first.llms
    assert published[-1].sessions is first.sessions  # what did not change is shared whole


def test_hub_actors_do_not_slow_down_each_thread_start():
    # CPython scans a lock per live non-daemon thread on every thread start: with one actor
    # per session and per Llm that made the 20,000th start cost milliseconds.
    locks = getattr(threading, "_shutdown_locks", None)
    before = len(locks) if locks is not None else 0
    refs = [SessionActor.start(Settings(), f"s{i}", None, itertools.count(1)) for i in range(20)]
    refs += [LlmActor.start(Settings(), _state(f"m{i}"), None) for i in range(20)]
    try:
        assert all(ref.is_alive() for ref in refs)
        if locks is not None:
            assert len(locks) == before
        assert SessionActor.use_daemon_thread and LlmActor.use_daemon_thread
    finally:
        for ref in refs:
            ref.stop()


def _state(name: str):
    from tether.actors import messages as m

    return m.LlmState(name, "virtual", None, "inactive")


def test_registrations_publish_fresh_snapshots_and_old_ones_stay_valid(system):
    system.register("s1", [provider("a")])
    first = system.directory
    system.register("s2", [provider("b"), provider("c")])
    second = system.directory
    assert set(first.sessions) == {"s1"} and set(first.llms) == {"a"}
    assert set(second.sessions) == {"s1", "s2"} and set(second.llms) == {"a", "b", "c"}
    assert second.session("s2").names == frozenset({"b", "c"})
    assert second.session_by_slot(second.session("s2").slot).session_id == "s2"
    # Taking a name over (the old owner inactive) moves it between sessions.
    token = system.open_stream("s1", Outbox(system).queue, None)
    system.close_stream("s1", token)
    settle(system)  # s1's row went inactive
    system.register("s2", [provider("a")])
    third = system.directory
    assert third.session("s1").names == frozenset()
    assert third.session("s2").names == frozenset({"a", "b", "c"})
    assert second.session("s1").names == frozenset({"a"})  # the old snapshot is untouched
    assert isinstance(third.llm("a"), pykka.ActorRef)
