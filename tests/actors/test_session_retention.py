"""Sessions that own no row and have no stream are forgotten after inactive_retention_s:
each register without an id makes one, and none may stay for the life of the process."""

from __future__ import annotations

from tests.support.actors import Outbox, provider
from tests.support.hub import wait_until


def test_a_session_with_no_row_and_no_stream_is_forgotten(system_factory):
    system = system_factory(inactive_retention_s=0.3, gc_interval_s=0.05)
    system.register("s1", [provider("a")])
    system.register("s2", [provider("b")])
    kept = Outbox(system)
    system.open_stream("s2", kept.queue, None)  # s2 keeps its stream (and its row)
    gone = Outbox(system)
    token = system.open_stream("s1", gone.queue, None)
    gone.frames()
    session = system.directory.session("s1").ref
    system.close_stream("s1", token)  # its row goes inactive, and is deleted after retention
    wait_until(lambda: system.directory.llm("a") is None, timeout=5)
    wait_until(lambda: system.directory.session("s1") is None, timeout=5)
    wait_until(lambda: not session.is_alive())
    assert system.directory.session("s2") is not None
    assert system.directory.llm("b") is not None
    # It comes back by registering again.
    system.register("s1", [provider("a")])
    assert system.directory.session("s1") is not None
