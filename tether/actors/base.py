"""What every Tether actor shares: dispatch by message type and tells that cannot raise."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pykka

from tether.actors.messages import Crash, Ping

log = logging.getLogger("tether.actors")


def tell(ref: pykka.ActorRef | None, message: Any) -> bool:
    """Tell `ref`, tolerating an actor that already stopped (a retired Llm, a closed session).

    Used from actors and timer callbacks, where a raised ActorDeadError would kill the
    sender or spill into the event loop.
    """
    if ref is None:
        return False
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


class Parent:
    """How a child reaches its supervisor. The ActorSystem points it at a restarted
    supervisor, so children started by the crashed one keep reporting to the live one."""

    __slots__ = ("ref",)

    def __init__(self, ref: pykka.ActorRef | None = None) -> None:
        self.ref = ref


class FrameIds:
    """SSE frame ids: one counter for the life of a hub process, shared by its sessions
    (a restarted session actor goes on from it). `first` is the process's first id: a
    Last-Event-ID below it was sent by another process."""

    __slots__ = ("first", "_count")

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self._count = itertools.count(first)

    def __next__(self) -> int:
        return next(self._count)


def new_task_id(slot: int) -> str:
    """Task ids carry the session's slot, so a result POST finds its session in one lookup."""
    return f"{slot:x}-{uuid.uuid4().hex}"


def slot_of(task_id: str) -> int | None:
    head, sep, _ = task_id.partition("-")
    if not sep:
        return None
    try:
        return int(head, 16)
    except ValueError:
        return None


class TetherActor(pykka.ThreadingActor):
    """Messages are dispatched on their type to the handler named in `handlers()`.

    The hub's per-session and per-Llm actors set `use_daemon_thread = True`: CPython keeps a
    lock per live non-daemon thread and scans them all whenever a thread starts
    (threading._maintain_shutdown_locks), so with 20,000 actors alive each start cost
    milliseconds and opening 10,000 sessions was quadratic. Nothing joins them at exit:
    ActorSystem.stop() stops them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._handlers: dict[type, Callable[[Any], Any]] = self.handlers()

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        raise NotImplementedError

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return True
        if isinstance(message, Crash):
            raise RuntimeError(f"injected crash in {self}")
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning("%s ignored an unknown message %r", self, type(message).__name__)
            return None
        result = handler(message)
        self.after_message(message)
        return result

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka stops an actor whose tell raised: say so loudly, answer everyone who waits on
        # this actor (they would hang otherwise), and let the supervisor rebuild it.
        log.error("%s crashed: %r", self, exception_value, exc_info=exception_value)
        try:
            self.on_crash()
        finally:
            self.report_crash()

    def after_message(self, message: Any) -> None:
        """Report state for the status page and gauges (tether.metrics); must not block."""

    def on_crash(self) -> None:
        """Answer whoever waits on this actor's state before it is lost."""

    def report_crash(self) -> None:
        """Tell the supervisor (actors that have one)."""
