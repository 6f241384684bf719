"""The events a request's reply channel carries to the HTTP handler waiting on it
(messages.ReplyChannel, handed over inside Infer and SendInfer): how its infer started,
waits, streams and ends. Plain data, so they cross the bus (tether/cluster/codec.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.errors import TetherError


@dataclass(frozen=True)
class Dispatched:
    """The infer started as `task_id`. A cancel (client gone, no answer) goes by the task id
    to the session holding it (ActorSystem.cancel): plain data, so it crosses the bus. Only
    a public Llm's upstream call, which never leaves its process, brings its own `cancel`."""

    task_id: str
    # what it returns is ignored
    cancel: Callable[[str], object] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Routed:
    """An alias's infer was taken by its target `llm` (it waits or runs there): the answer
    names it, and a client that leaves is withdrawn there."""

    llm: str


@dataclass(frozen=True)
class WakePending:
    pass


@dataclass(frozen=True)
class Queued:
    """The LlmActor took an infer sent with `ack` and it waits (no other event went out for
    it yet): the acknowledgement its sender on another process waits for."""


@dataclass(frozen=True)
class Completed:
    status: int
    body: Any


@dataclass(frozen=True)
class Chunks:
    data: tuple[str, ...]


@dataclass(frozen=True)
class StreamDone:
    pass


@dataclass(frozen=True)
class Failed:
    error: TetherError
