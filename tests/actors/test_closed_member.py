"""A pool's task sent to a member whose stream had just closed, before its LlmActor heard of
the loss (docs/protocol.md, Pools: Failover). The supervisor relays a session's loss to its
Llms; holding it in that relay opens, every time, the window a busy hub opens now and then."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.support.actors import Outbox, dispatched, events
from tether.actors import messages as m
from tether.actors import supervisor as supervisor_module

REQ = {"messages": [{"role": "user", "content": "hi"}]}


def member(concurrency: int) -> dict:
    return {"name": "p", "type": "openai", "model": "m", "pool": True,
            "maxConcurrency": concurrency}


def online(system: Any, session: str, concurrency: int) -> tuple[Outbox, int]:
    system.register(session, [member(concurrency)])
    outbox = Outbox(system)
    token = system.open_stream(session, outbox.queue, None)
    outbox.frames()  # hello
    return outbox, token


@pytest.mark.parametrize("grace_s", [0, 30])
def test_a_task_sent_to_a_member_whose_stream_just_closed_runs_on_another(
        system_factory, monkeypatch, grace_s):
    """With no grace the member's session refused it 503 `publisher_offline`; with one it
    held it for the stream, 30 s, then 503: the other member was there all along."""
    system = system_factory(publisher_grace_s=grace_s)
    busy, _ = online(system, "s2", concurrency=1)
    first = system.infer("p", REQ, False, "chat/completions")
    assert dispatched(first) is not None
    [running] = busy.tasks()  # s2 is full now
    _, token = online(system, "s1", concurrency=4)

    # The supervisor is held as it tells the Llm that s1's stream is gone.
    entered, release = threading.Event(), threading.Event()
    tell = supervisor_module.tell

    def slow_tell(ref: Any, message: Any) -> bool:
        if isinstance(message, m.StreamLost) and message.session_id == "s1":
            entered.set()
            release.wait(10)
        return tell(ref, message)

    monkeypatch.setattr(supervisor_module, "tell", slow_tell)
    system.close_stream("s1", token)
    assert entered.wait(5)
    late = system.infer("p", REQ, False, "chat/completions")  # only s1 has a free slot
    release.set()

    system.submit_result(running["taskId"], "s2", {"status": 200, "body": "first"})
    assert events(first, m.Completed)[-1].body == "first"
    [moved] = busy.tasks()  # s2's slot is free again: the late request runs there
    system.submit_result(moved["taskId"], "s2", {"status": 200, "body": "late"})
    assert events(late, m.Completed)[-1].body == "late"
