"""Heartbeats (issue 11.11): each LlmActor writes its own row; the HTTP side writes nothing."""

from __future__ import annotations

import threading

import pytest

from tests.support.actors import Outbox, provider, settle
from tests.support.hub import wait_until
from tether.errors import TetherError
from tether.store import db
from tether.store import llms as store
from tether.store.models import utcnow

WRITES = ("INSERT", "UPDATE", "DELETE")


@pytest.fixture
def writers(monkeypatch):
    """The thread of every row write the store makes while the test runs."""
    seen: list[str] = []
    database = db.database.obj
    original = database.execute_sql

    def execute_sql(sql, *args, **kwargs):
        if sql.lstrip().upper().startswith(WRITES):
            seen.append(threading.current_thread().name)
        return original(sql, *args, **kwargs)

    monkeypatch.setattr(database, "execute_sql", execute_sql)
    return seen


def _row(name):
    return store.get(name)


def test_a_heartbeat_is_written_behind_the_llm_actors_not_by_the_caller(system, writers):
    system.register("s1", [provider("a"), provider("b")])
    before = {name: _row(name).last_heartbeat_at for name in ("a", "b")}
    wait_until(lambda: utcnow() > max(before.values()))  # a heartbeat now is a later one
    writers.clear()
    assert system.heartbeat("s1") == 2
    # Written behind the actors (tether/store/write_behind.py): no infer waits on it.
    for name in ("a", "b"):
        wait_until(lambda name=name: _row(name).last_heartbeat_at > before[name])
        assert _row(name).status == "active"
    caller = threading.current_thread().name
    assert writers and caller not in writers
    assert all(name == "WriteBehind" for name in writers), writers


def test_a_heartbeat_revives_inactive_rows_from_the_actor(system, writers):
    system.register("s1", [provider("a"), provider("sleepy", "hibernating")])
    token = system.open_stream("s1", Outbox(system).queue, None)
    system.close_stream("s1", token)
    settle(system)
    assert _row("a").status == "inactive"
    writers.clear()
    assert system.heartbeat("s1") == 2
    a, sleepy = _row("a"), _row("sleepy")
    assert (a.status, a.inactive_since) == ("active", None)
    assert sleepy.status == "hibernating"  # only inactive rows are revived
    # The revival is a status write, made in the actor's turn; the sleepy one's heartbeat
    # goes behind.
    assert writers and all("LlmActor" in name or name == "WriteBehind"
                           for name in writers), writers
    assert threading.current_thread().name not in writers


def test_a_session_that_owns_no_rows_gets_session_not_found(system):
    with pytest.raises(TetherError) as refused:
        system.heartbeat("nobody")
    assert (refused.value.status, refused.value.code) == (404, "session_not_found")
