"""The hub's actors in-process: flushing them, and the stub of the SSE writer they write to.

Tests of the actors never wait a fixed window for a frame that may come. `settle()` asks
every actor for a Ping, round after round: an actor answers only after the messages it got
before, and has sent its own tells by then, so once the rounds are through every cascade of
messages has run out and whatever it would have written is on its queue. What a timer sends
is waited for with a deadline instead (`events()`, `wait_until`).
"""

from __future__ import annotations

import contextlib
import queue
from typing import Any

import pykka

from tests.support.hub import wait_until
from tether.actors import messages as m
from tether.actors.system import ActorSystem
from tether.common import sse
from tether.common.actor import Ping

# A round per hop: the hub's cascades are a few hops long (a stream loss goes session →
# supervisor → each Llm → session), five run them out with room to spare.
ROUNDS = 5


def settle(system: ActorSystem, rounds: int = ROUNDS) -> None:
    """Let every cascade of messages between the actors run out (see the module doc)."""
    for _ in range(rounds):
        directory = system.directory  # re-read: a round may restart or retire a child
        refs = [system.supervisor, *directory.llms.values(),
                *(entry.ref for entry in directory.sessions.values())]
        futures = [ref.ask(Ping(), block=False) for ref in refs if ref is not None]
        for future in futures:
            # One that crashed or retired meanwhile: its successor is pinged next round.
            with contextlib.suppress(pykka.ActorDeadError):
                future.get(timeout=5)


def take(channel: queue.Queue) -> list[Any]:
    """Everything on `channel` now, without waiting."""
    out = []
    while True:
        try:
            out.append(channel.get_nowait())
        except queue.Empty:
            return out


def parse(items: list[Any]) -> list[Any]:
    """Outbox items as the publisher reads them: SSE events, and the Close sentinels."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, m.Close):
            out.append(item)
        else:
            out.extend(sse.parse(sse.iter_lines([item.encode()])))
    return out


def task_payloads(frames: list[Any]) -> list[dict]:
    return [f.json() for f in frames if getattr(f, "event", "") == "task"]


class Outbox:
    """A stub of the SSE writer: the queue a SessionActor writes frames to."""

    def __init__(self, system: ActorSystem) -> None:
        self.system = system
        self.queue: queue.Queue = queue.Queue()

    def frames(self) -> list[Any]:
        """Every frame written since the last call, once the actors have settled."""
        settle(self.system)
        return parse(take(self.queue))

    def tasks(self) -> list[dict]:
        return task_payloads(self.frames())


def provider(name: str, status: str = "active") -> dict:
    return {"name": name, "type": "openai", "model": "m", "initialStatus": status}


def dispatched(reply: Any, timeout: float = 3.0) -> m.Dispatched | None:
    """The Dispatched a request's channel recorded (a MeteredReply keeps it instead of
    queueing it: tether.actors.reply), once it is there; None when an event was queued
    first (a refusal). Fails if neither comes."""
    def seen() -> tuple[m.Dispatched | None] | None:
        if reply.dispatched is not None:
            return (reply.dispatched,)
        return (None,) if reply.qsize() else None

    return wait_until(seen, timeout, interval=0.005)[0]


def events(reply: queue.Queue, until: type, timeout: float = 3.0) -> list[Any]:
    """A reply channel's events up to the first of type `until`; fails if it does not come."""
    out = []
    while True:
        event = reply.get(timeout=timeout)
        out.append(event)
        if isinstance(event, until):
            return out
