from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tether import sse
from tether.actors import messages as m
from tether.actors.system import ActorSystem
from tether.config import Settings


class Outbox:
    """A stub of the SSE writer: the queue a SessionActor writes frames to."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def frames(self, wait: float = 0.2) -> list[Any]:
        out = []
        while True:
            try:
                item = self.queue.get(timeout=wait)
            except queue.Empty:
                return out
            if isinstance(item, m.Close):
                out.append(item)
                continue
            out.extend(sse.parse(sse.iter_lines([item.encode()])))

    def tasks(self, wait: float = 0.2) -> list[dict]:
        return [f.json() for f in self.frames(wait) if getattr(f, "event", "") == "task"]


@pytest.fixture
def system_factory(tmp_path: Path) -> Iterator[Callable[..., ActorSystem]]:
    systems: list[ActorSystem] = []

    def make(**overrides: Any) -> ActorSystem:
        settings = dataclasses.replace(
            Settings(database_url=f"sqlite:///{tmp_path / 'unit.db'}", publisher_grace_s=0),
            **overrides,
        )
        system = ActorSystem(settings).start()
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.stop()


@pytest.fixture
def system(system_factory: Callable[..., ActorSystem]) -> ActorSystem:
    return system_factory()


def provider(name: str, status: str = "active") -> dict:
    return {"name": name, "type": "openai", "model": "m", "initialStatus": status}


def events(reply: queue.Queue, until: type, timeout: float = 3.0) -> list[Any]:
    out = []
    while True:
        event = reply.get(timeout=timeout)
        out.append(event)
        if isinstance(event, until):
            return out
