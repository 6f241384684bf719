"""What every Tether actor shares, hub and publisher alike: dispatch by message type, the
two messages every actor answers (Ping, Crash), and tells that cannot raise.

The hub's actors live in tether/actors, the publisher's in tether/publisher; both import
this module, which imports neither.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import Any, ClassVar, get_args, get_type_hints

import pykka

from tether.common.runtime import gevent_active

log = logging.getLogger("tether.actors")


@dataclass(frozen=True)
class Crash:
    """Test hook (fault injection): the receiving actor raises, as a bug would."""


@dataclass(frozen=True)
class Ping:
    """Answered by every actor once it has started (its on_start has run)."""


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
    """How a hub child actor reaches its supervisor. The ActorSystem points it at a restarted
    supervisor, so children started by the crashed one keep reporting to the live one."""

    __slots__ = ("ref",)

    def __init__(self, ref: pykka.ActorRef | None = None) -> None:
        self.ref = ref


class TetherActor(pykka.ThreadingActor):
    """An actor's `receive` takes a union of message classes (`message: m.LlmMessage`) and
    matches on it, its last case `assert_never(message)`: the type checker then proves each
    message of the union has its case. A subclass may take more (a wider union), handle its
    own and pass the rest to `super().receive`. A message outside the union is logged and
    dropped before `receive`, as pykka cannot check what a caller tells.

    The hub's per-session and per-Llm actors set `use_daemon_thread = True`: CPython keeps a
    lock per live non-daemon thread and scans them all whenever a thread starts
    (threading._maintain_shutdown_locks), so with 20,000 actors alive each start cost
    milliseconds and opening 10,000 sessions was quadratic. Nothing joins them at exit:
    ActorSystem.stop() stops them. Under gevent those run on a bare greenlet, not on a
    (patched) thread: see `_start_actor_loop`.
    """

    # The classes `receive` is annotated with, read when the class is made, so the runtime
    # check and the type checker's cannot disagree.
    accepts: ClassVar[frozenset[type]] = frozenset()
    crashed = False  # set by on_failure: on_orphan tells a crash from a stop

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        taken = get_type_hints(cls.receive)["message"]
        cls.accepts = frozenset(get_args(taken) or (taken,))  # a union, or one class

    def receive(self, message: Any) -> Any:
        raise NotImplementedError

    def _start_actor_loop(self) -> None:
        """pykka's runtime hook. Under gevent a patched Thread is a greenlet dressed as a
        thread: an Event, locks, a gevent Greenlet keeping ten frames of its spawning
        stack, ~25 garbage-collected objects per actor in all, and a start that waits for
        the new thread to run. That was ~0.3 ms of the hub's CPU per session opened (two
        actors), much of it in the garbage collector's full passes over thousands of them.
        A daemon actor needs none of it (nothing joins it): it runs on a raw greenlet, which
        starts at the next switch, before any message (on_start comes first in its loop).
        """
        if self.use_daemon_thread and gevent_active():
            import gevent

            gevent.spawn_raw(self._actor_loop)
        else:
            super()._start_actor_loop()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return True
        if isinstance(message, Crash):
            raise RuntimeError(f"injected crash in {self}")
        if type(message) not in self.accepts:
            log.warning("%s ignored an unknown message %r", self, type(message).__name__)
            return None
        result = self.receive(message)
        self.after_message(message)
        return result

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka stops an actor whose tell raised: say so loudly, answer everyone who waits on
        # this actor (they would hang otherwise), and let the supervisor rebuild it.
        log.error("%s crashed: %r", self, exception_value, exc_info=exception_value)
        self.crashed = True
        orphans = self._take_tells()
        try:
            self.on_crash()
        finally:
            try:
                self.report_crash()
            finally:
                for message in orphans:
                    try:
                        self.on_orphan(message)
                    except Exception:  # noqa: BLE001 - one failing must not drop the rest
                        log.exception("%s could not answer %r", self, type(message).__name__)

    def _actor_loop_teardown(self) -> None:
        """pykka's runtime hook, at the end of every actor's life. pykka drops the tells
        still in the mailbox of an actor that stopped (its own stop after a retirement, an
        evicted session's end, a forgotten session), so whoever waits on one would wait for
        nothing: they go to on_orphan, as a crashed actor's do. pykka answers the asks."""
        for message in self._take_tells():
            try:
                self.on_orphan(message)
            except Exception:  # noqa: BLE001 - one failing must not drop the rest
                log.exception("%s could not answer %r", self, type(message).__name__)
        super()._actor_loop_teardown()

    def _take_tells(self) -> list[Any]:
        """The tells still in the mailbox of this actor that crashed or stopped, which pykka
        would drop (it answers asks with ActorDeadError): they are answered by on_orphan.
        pykka marked the actor stopped before, so nothing more arrives meanwhile."""
        tells: list[Any] = []
        asks: list[Any] = []
        inbox: Any = self.actor_inbox  # a queue.Queue for ThreadingActor
        while True:
            try:
                envelope = inbox.get_nowait()
            except queue.Empty:
                break
            (asks if envelope.reply_to is not None else tells).append(envelope)
        for envelope in asks:  # pykka's teardown answers them
            inbox.put(envelope)
        return [envelope.message for envelope in tells]

    def after_message(self, message: Any) -> None:
        """Report state for the status page and gauges (tether.observability.metrics); must not
        block."""

    def on_crash(self) -> None:
        """Answer whoever waits on this actor's state before it is lost."""

    def report_crash(self) -> None:
        """Tell the supervisor (actors that have one)."""

    def on_orphan(self, message: Any) -> None:
        """A tell that was still in this actor's mailbox when it crashed (`crashed`) or
        stopped: answer whoever waits on it, or pass it on to the actor's successor
        (after a crash, report_crash has started it by now). Messages nobody waits on are
        dropped."""
