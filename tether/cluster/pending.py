"""The requests of this process that wait on another process for their events (an infer sent
to its name's owner, or dispatched to a session homed elsewhere), keyed by request id: who
answers each, whether its owner acknowledged it, and what to do when the bus lost something
(docs/protocol.md, Several hub processes).

A request gets its id the first time its reply channel crosses the bus. Every event that
comes back for it is noted here before its client sees it: the first acknowledges it, a
Dispatched moves the wait to the task's home, a terminal event ends it. A request whose
owner did not acknowledge it in time, or whose events may have been lost (this process's
subscription broke), is given up: answered 503 `hub_busy` and withdrawn where it waits;
what still comes for it then (`_late`) never reaches its client.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether import errors
from tether.actors import messages as m
from tether.actors.task_ids import home_of
from tether.common.runtime import spawn

log = logging.getLogger("tether.router")

# Requests given up after lost messages are answered once they are withdrawn, or after this
# long (Redis may be away, and each send then retries for seconds).
WITHDRAW_WAIT_S = 1.0
TERMINAL = (m.Completed, m.StreamDone, m.Failed)


@dataclass
class _Pending:
    """A request of this process waiting on another: its reply channel, and who answers."""

    reply: m.ReplyChannel
    target: str | None = None  # the owner until dispatched, then the task's home
    dispatched: bool = False
    dispatch: m.Dispatched | None = None  # its Dispatched, once it came: to cancel the task
    since: float = field(default_factory=time.monotonic)
    # An infer sent to an owner and not acknowledged yet (no event from there): when it
    # was sent, and the name (None once acknowledged, or never sent).
    sent_at: float | None = None
    name: str = ""


class HomeReply:
    """The reply channel of a request of this process, handed back to it over the bus: its
    task runs here. Events put on it are noted as if they had come over the bus (dispatched
    here: no other process's death concerns the request any more)."""

    __slots__ = ("_requests", "request_id", "_reply")

    def __init__(self, requests: PendingRequests, request_id: str,
                 reply: m.ReplyChannel) -> None:
        self._requests = requests
        self.request_id = request_id  # its address, should it cross the bus again
        self._reply = reply

    def put(self, item: Any) -> None:
        if self._requests.note(self.request_id, item, self._requests.process):
            self._reply.put(item)

    def cancelled(self, reason: str) -> None:
        self._reply.cancelled(reason)


class _Over:
    """The reply channel of a request that is already over here: what comes is dropped."""

    def put(self, item: Any) -> None:
        return None

    def cancelled(self, reason: str) -> None:
        return None


class PendingRequests:
    """`withdraw(name, reply)` takes a request off its name's queue, wherever its owner is;
    `cancel(dispatched, reason)` stops its task where it runs."""

    def __init__(self, process: str, ack_s: float, max_s: float,
                 withdraw: Callable[[str, m.ReplyChannel], None],
                 cancel: Callable[[m.Dispatched, str], None]) -> None:
        self.process = process
        # How long a forwarded infer waits for its owner's first event (see BusRouter).
        self.ack_s = ack_s
        self._max_s = max_s  # nothing comes for a request after this long
        self._withdraw = withdraw
        self._cancel = cancel
        self._pending: dict[str, _Pending] = {}  # request id -> waiting request
        self._ids: weakref.WeakKeyDictionary[m.ReplyChannel, str] = weakref.WeakKeyDictionary()
        # Requests given up unacknowledged, or answered when the subscription broke: request
        # id -> (name, reply, when). An event that still comes for one withdraws it again.
        self._abandoned: dict[str, tuple[str, m.ReplyChannel, float]] = {}

    def request_id(self, reply: m.ReplyChannel) -> str:
        """The id of a request of this process (its reply channel): drawn, and the request
        waited on, the first time it crosses the bus."""
        if isinstance(reply, HomeReply):
            return reply.request_id
        request_id = self._ids.get(reply)
        if request_id is None:
            request_id = secrets.token_hex(8)
            self._ids[reply] = request_id
            self._pending[request_id] = _Pending(reply)
        return request_id

    def channel(self, request_id: str) -> m.ReplyChannel:
        """The reply channel of a request of this process, by its id."""
        pending = self._pending.get(request_id)
        return HomeReply(self, request_id, pending.reply) if pending is not None else _Over()

    def forget(self, reply: m.ReplyChannel) -> None:
        """The client of `reply` is gone or answered: drop its entry here."""
        request_id = reply.request_id if isinstance(reply, HomeReply) else self._ids.get(reply)
        if request_id is not None:
            self._pending.pop(request_id, None)

    # --- sent, acknowledged, answered ----------------------------------------------------

    def sending(self, request_id: str, process: str, name: str) -> None:
        """An infer of this request goes to `process`, the owner of `name`: it waits on it,
        for an acknowledgement first. Called before the send: the acknowledgement may be
        read while it returns."""
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.target = process
            pending.sent_at, pending.name = time.monotonic(), name

    def not_sent(self, request_id: str) -> None:
        """Nobody heard it: nothing to acknowledge (it is answered, or sent again)."""
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.sent_at = None

    def awaits(self, request_id: str) -> bool:
        """Whether an event for this request concerns this process still."""
        return request_id in self._pending or request_id in self._abandoned

    def arrived(self, request_id: str, event: Any, sender: str | None) -> None:
        """An event for a request of this process came over the bus from `sender`."""
        pending = self._pending.get(request_id)
        if pending is None:
            if request_id in self._abandoned:
                self._late(request_id, event)
            return  # that request is over here
        if self.note(request_id, event, sender):
            pending.reply.put(event)

    def cancelled(self, request_id: str, reason: str) -> None:
        """Its task was cancelled where it ran: the request is over."""
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.reply.cancelled(reason)

    def note(self, request_id: str, event: Any, sender: str | None) -> bool:
        """An event for a waiting request of this process: any acknowledges it; once
        dispatched, it waits on the task's home (which `sender` is, for a public Llm's call);
        once over, on nobody. False for an event that is for the router alone (Queued)."""
        pending = self._pending.get(request_id)
        if pending is None:
            return True
        pending.sent_at = None
        if sender and not pending.dispatched:  # the owner now, if the name moved (or was
            pending.target = sender  # handed over by a drain: its heir answers)
        if isinstance(event, m.Dispatched):
            pending.dispatched, pending.dispatch = True, event
            pending.target = home_of(event.task_id) or sender
        elif isinstance(event, TERMINAL):
            self._pending.pop(request_id, None)
        return not isinstance(event, m.Queued)

    # --- liveness ------------------------------------------------------------------------

    def targets(self) -> set[str]:
        """The other processes that requests wait on."""
        return {p.target for p in self._pending.values() if p.target} - {self.process}

    def check(self, alive: set[str]) -> None:
        """Requests waiting on a process that died are answered; those past any deadline
        are dropped."""
        now = time.monotonic()
        for request_id, pending in list(self._pending.items()):
            if pending.target is not None and pending.target not in alive:
                self._pending.pop(request_id, None)
                name = getattr(pending.reply, "llm", "the Llm")
                error = (errors.PUBLISHER_DISCONNECTED(name=name) if pending.dispatched
                         else errors.PUBLISHER_OFFLINE(name=name))
                pending.reply.put(m.Failed(error))
            elif now - pending.since > self._max_s:
                self._pending.pop(request_id, None)

    def expire_unacknowledged(self) -> None:
        """Infers sent to an owner that did not acknowledge them within `ack_s` were lost
        (or their acknowledgements were): their clients are answered 503 `hub_busy`, the
        bus's answer for a cross-process wait that ran out, and the owner is told to
        withdraw them (best effort: should the infer be there after all, it leaves the
        queue, or its task is cancelled)."""
        now = time.monotonic()
        for request_id, pending in list(self._pending.items()):
            if pending.sent_at is not None and now - pending.sent_at > self.ack_s:
                self._pending.pop(request_id, None)
                log.warning("bus: %s did not acknowledge a request for %r within %g s; "
                            "answered 503", pending.target, pending.name, self.ack_s)
                self._abandoned[request_id] = (pending.name, pending.reply, now)
                pending.reply.put(m.Failed(errors.HUB_BUSY()))
                spawn(self._withdraw, pending.name, pending.reply)
        for request_id, (_, _, at) in list(self._abandoned.items()):
            if now - at > self._max_s:  # nothing can come for it any more
                del self._abandoned[request_id]

    def messages_lost(self, before: float) -> None:
        """This process's subscription broke (called then, and again once it is back):
        whatever was sent to it meanwhile is lost, and nobody can tell what. Every request
        sent before `before` that waits on another process for its events (an infer
        forwarded to its owner, or dispatched to a home elsewhere) may have lost one, and a
        gap must not pass for an answer (a lost chunk would corrupt a stream silently).
        Each is given up at once: what still comes for it goes to _late, never to its
        client, which is answered 503 `hub_busy` (see _give_up)."""
        lost = [(request_id, pending) for request_id, pending in self._pending.items()
                # dispatched here: its events stay here
                if pending.target != self.process and pending.since < before]
        if not lost:
            return
        log.warning("bus: this process's subscription broke; %d request(s) waiting on other "
                    "processes may have lost events: answered 503", len(lost))
        now = time.monotonic()
        given_up = []
        for request_id, pending in lost:
            self._pending.pop(request_id, None)
            name = pending.name or getattr(pending.reply, "llm", "")
            self._abandoned[request_id] = (name, pending.reply, now)
            given_up.append((name, pending))
        spawn(self._give_up, given_up)

    def _give_up(self, lost: list[tuple[str, _Pending]]) -> None:
        """Answer requests whose events may have been lost, 503 `hub_busy` (the bus failed,
        not the publisher; a stream that began ends with an error event), and stop them
        where they wait or run (best effort). In this order: those still waiting are
        withdrawn before any task is cancelled, or a slot that frees would go to one of
        them; then the clients are answered (their relays withdraw or cancel what they
        know of too; with Redis away, after WITHDRAW_WAIT_S at most); then the tasks are
        cancelled (a begun stream's relay does not)."""
        sent = threading.Event()

        def withdraw() -> None:
            try:
                for name, pending in lost:
                    if pending.dispatch is None and name:
                        self._withdraw(name, pending.reply)
            finally:
                sent.set()

        spawn(withdraw)
        sent.wait(WITHDRAW_WAIT_S)
        for _, pending in lost:
            pending.reply.put(m.Failed(errors.HUB_BUSY()))
        for _, pending in lost:
            if pending.dispatch is not None:
                self._cancel(pending.dispatch, "no_answer")

    def _late(self, request_id: str, event: Any) -> None:
        """An event for a request given up (unacknowledged, or when the subscription broke):
        its infer did reach an owner, or is still under way there. Withdraw it again there,
        the first withdraw may have been lost too; a task that went out is cancelled where
        it runs."""
        name, reply, _ = self._abandoned.pop(request_id)
        if isinstance(event, m.Dispatched):
            self._cancel(event, "no_answer")
        elif not isinstance(event, TERMINAL):
            spawn(self._withdraw, name, reply)
