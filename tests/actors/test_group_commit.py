"""Group commit (issue 26, part 4): registrations queued behind the one the supervisor is
writing go into the next transaction together, and each is answered as if alone."""

from __future__ import annotations

import threading

import pytest

from tests.support.actors import Outbox, provider
from tether.actors import messages as m
from tether.errors import TetherError
from tether.store import llms as store

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def test_queued_registrations_are_written_as_one_group_and_each_answered(system, monkeypatch):
    real, groups, release = store.register_many, [], threading.Event()

    def register_many(group):
        groups.append([session_id for session_id, _, _ in group])
        if len(groups) == 1:
            assert release.wait(10)  # the rest queue in the supervisor's mailbox meanwhile
        return real(group)

    monkeypatch.setattr(store, "register_many", register_many)
    ask = system.supervisor.ask
    first = ask(m.Register("s1", (provider("a"),)), block=False)
    while not groups:  # the supervisor is writing s1's
        threading.Event().wait(0.01)
    queued = [ask(m.Register(session_id, tuple(provider(name) for name in names)),
                  block=False)
              for session_id, names in (("s2", "b"), ("s3", ("c", "a")), ("s4", "d"))]
    release.set()

    assert first.get(timeout=10)[0] == "s1"
    assert groups == [["s1"], ["s2", "s3", "s4"]]
    assert queued[0].get(timeout=10)[0] == "s2"
    with pytest.raises(TetherError) as refused:  # "a" is s1's: only s3 is refused
        queued[1].get(timeout=10)
    assert refused.value.code == "llm_owned_by_other_session"
    assert queued[2].get(timeout=10)[0] == "s4"
    assert store.get("c") is None
    # Each accepted one has its actors: its stream opens and its name is served.
    for session_id, name in (("s2", "b"), ("s4", "d")):
        assert system.owned_names(session_id) == {name}
        outbox = Outbox(system)
        system.open_stream(session_id, outbox.queue, None)
        assert outbox.frames()[0].event == "hello"
        system.infer(name, REQ, False, "chat/completions")
        assert [task["llmName"] for task in outbox.tasks()] == [name]
    assert system.owned_names("s3") == frozenset()


def test_a_group_whose_transaction_fails_answers_every_registration(system, monkeypatch):
    real, calls, release = store.register_many, [], threading.Event()

    def register_many(group):
        calls.append(len(group))
        if len(calls) == 1:
            assert release.wait(10)
        if len(calls) == 2:
            raise store.peewee.OperationalError("could not connect to server")
        return real(group)

    monkeypatch.setattr(store, "register_many", register_many)
    ask = system.supervisor.ask
    first = ask(m.Register("s1", (provider("a"),)), block=False)
    while not calls:
        threading.Event().wait(0.01)
    queued = [ask(m.Register(f"s{i}", (provider(f"n{i}"),)), block=False) for i in (2, 3)]
    release.set()
    first.get(timeout=10)
    for future in queued:
        with pytest.raises(TetherError) as outage:
            future.get(timeout=10)
        assert outage.value.code == "database_unavailable"
    assert calls == [1, 2]
    assert store.get("n2") is None and store.get("n3") is None
    # The supervisor goes on: the next registration is written.
    assert system.register("s4", [provider("d")])[0] == "s4"
    assert store.get("d") is not None
