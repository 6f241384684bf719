"""The plain logic the supervisor holds: bounded restarts and idle sessions, without actors."""

from __future__ import annotations

from tether.actors.directory import SessionEntry
from tether.actors.restarts import MAX_RESTARTS, RESTART_WINDOW_S, RestartHistory
from tether.actors.retention import IdleSessions


def test_crashes_count_within_the_window_only() -> None:
    history: RestartHistory[str] = RestartHistory()
    counts = [history.crashed("a", "llm", float(t)) for t in range(MAX_RESTARTS + 1)]
    assert counts == list(range(1, MAX_RESTARTS + 2))  # the last one is past the bound
    assert history.crashed("b", "llm", 0.0) == 1  # each key has its own history
    later = MAX_RESTARTS + RESTART_WINDOW_S + 1.0
    assert history.crashed("a", "llm", later) == 1  # the old crashes left the window


def test_a_retry_after_an_outage_is_not_a_crash() -> None:
    history: RestartHistory[str] = RestartHistory()
    history.crashed("a", "llm", 0.0)
    assert history.crashed("a", "llm", 1.0, counted=False) == 1


def _entry(session_id: str, names: frozenset[str] = frozenset()) -> SessionEntry:
    return SessionEntry(session_id, None, 1, names)  # type: ignore[arg-type]


def test_a_session_without_row_or_stream_expires_after_the_retention() -> None:
    idle = IdleSessions(10.0)
    sessions = {"s": _entry("s"), "named": _entry("named", frozenset({"x"})),
                "live": _entry("live")}
    assert idle.expired(sessions, {"live"}, 0.0) == []  # idle from now on
    assert idle.expired(sessions, {"live"}, 9.0) == []
    assert idle.expired(sessions, {"live"}, 10.0) == ["s"]


def test_a_session_that_comes_back_starts_its_wait_again() -> None:
    idle = IdleSessions(10.0)
    sessions = {"s": _entry("s")}
    idle.expired(sessions, set(), 0.0)
    idle.expired(sessions, {"s"}, 5.0)  # a stream opened meanwhile
    assert idle.expired(sessions, set(), 12.0) == []
    assert idle.expired(sessions, set(), 22.0) == ["s"]
    idle.forget("s")
    assert idle.expired(sessions, set(), 23.0) == []  # forgotten: counted from now again
