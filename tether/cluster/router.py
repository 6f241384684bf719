"""The router in front of the local actor system: local actor, or the process that holds it.

What goes where (docs/protocol.md, Several hub processes):
- an infer goes to its name's owner (the one process holding that name's LlmActor, by a
  lease; the first process that needs an owner and finds none takes it);
- what a session reports to its LlmActor (task ended, wake answered, tasks released...)
  goes to the name's current owner, looked up at each send;
- what an LlmActor sends a member's session (a task, a cancel, a release) goes to the
  session's home, which the member's link names;
- every event for a waiting client (dispatched, chunks, answer, error) goes back to the
  process holding the client's connection, keyed by a request id;
- a result POST, heartbeat or status report that lands elsewhere is asked of the home
  (request/response over the bus, with a deadline).

Every message is JSON (tether.cluster.codec). Every wait has a deadline, and a process
whose liveness key vanished is noticed within a tick: requests waiting on it are answered
503, the rows of sessions homed there go `inactive`, its names get new owners.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka

from tether import errors
from tether.actors import messages as m
from tether.actors.task_ids import home_of, new_task_id
from tether.cluster import codec
from tether.cluster.bus import TICK_S, Bus
from tether.cluster.leases import Homes, Leases
from tether.cluster.proxies import RemoteLlm, RemoteReply, RemoteSession, failed_future
from tether.cluster.shared_board import SharedBoard
from tether.common.actor import tell
from tether.common.runtime import call_later, spawn
from tether.errors import TetherError
from tether.observability.board import BOARD

if TYPE_CHECKING:
    from tether.actors.system import ActorSystem

log = logging.getLogger("tether.router")

BUS_ASK_S = 5.0  # a cross-process ask unanswered by then is answered 503
# A name's owner looked up this recently is used again, without asking Redis, for what is
# told to its LlmActor (an infer: two lookups per forwarded request otherwise). Safe: a lease
# changes hands only when its holder is gone (a send there finds no listener, and the owner
# is looked up again) or let it go alive (it passes on what it gets, see _on_tell).
OWNER_CACHE_S = 1.0
RECOVER_TICKS = 5  # after Redis lost our keys: re-assert homes and owners this many ticks
# Requests given up after lost messages are answered once they are withdrawn, or after this
# long (Redis may be away, and each send then retries for seconds).
WITHDRAW_WAIT_S = 1.0
TERMINAL = (m.Completed, m.StreamDone, m.Failed)


def bus_timeout() -> TetherError:
    return errors.HUB_BUSY()


@dataclass
class _Pending:
    """A request of this process waiting on another: its reply channel, and who answers."""

    reply: Any
    target: str | None = None  # the owner until dispatched, then the task's home
    dispatched: bool = False
    dispatch: m.Dispatched | None = None  # its Dispatched, once it came: to cancel the task
    since: float = field(default_factory=time.monotonic)
    # An infer sent to an owner and not acknowledged yet (no event from there): when it
    # was sent, and the name (None once acknowledged, or never sent).
    sent_at: float | None = None
    name: str = ""


class _HomeReply:
    """The reply channel of a request of this process, handed back to it over the bus: its
    task runs here. Events put on it are noted as if they had come over the bus (dispatched
    here: no other process's death concerns the request any more)."""

    __slots__ = ("_router", "_bus_request", "_reply")

    def __init__(self, router: BusRouter, request_id: str, reply: Any) -> None:
        self._router = router
        self._bus_request = request_id  # its address, should it cross the bus again
        self._reply = reply

    def put(self, item: Any) -> None:
        if self._router.note(self._bus_request, item, self._router.process):
            self._reply.put(item)

    def cancelled(self, reason: str) -> None:
        self._reply.cancelled(reason)


class _Sink:
    """A reply channel for a request that is already over here: events are dropped."""

    def put(self, item: Any) -> None:
        return None

    def cancelled(self, reason: str) -> None:
        return None


class BusRouter:
    def __init__(self, url: str, system: ActorSystem) -> None:
        self.bus = Bus(url, self._on_message, int(system.settings.liveness_ttl_s * 1000),
                       self._messages_lost)
        self.process = self.bus.process
        self.leases = Leases(self.bus)
        self.homes = Homes(self.bus)
        self.board = SharedBoard(self.bus, BOARD, system.in_flight)
        self._system = system
        self._addresses: dict[str, codec.Address] = {}  # local actor urn -> address
        self._pending: dict[str, _Pending] = {}  # request id -> waiting request
        self._asks: dict[str, pykka.Future] = {}
        self._cleaning: set[str] = set()
        self._owners: dict[str, tuple[str, float]] = {}  # name -> (owner, looked up at)
        self._hooks = codec.Hooks(self._ref_address, self._reply_address, self._ref,
                                  self._reply)
        s = system.settings
        self._pending_max_s = s.wake_timeout_s + s.infer_timeout_s + 60.0
        # How long a forwarded infer waits for its owner's first event. A live owner answers
        # at once (the request is dispatched, waits, or fails) unless it stalls, and the
        # cluster tolerates stalls up to the liveness TTL (longer is a death, which the
        # liveness monitor answers first, `publisher_offline`, within the TTL and a tick).
        # Silence beyond that means the message or its answer was lost on the bus.
        self.ack_s = s.liveness_ttl_s + TICK_S
        # Requests given up unacknowledged, or answered when the subscription broke: request
        # id -> (name, reply, when). An event that still comes for one withdraws it again.
        self._abandoned: dict[str, tuple[str, Any, float]] = {}
        self._recovering = 0  # ticks left of re-asserting what Redis lost
        # Looked up per request and per tick: logged once per Redis outage, not each time.
        self._lookups = self.bus.outage("owner lookups",
                                        "requests for names owned elsewhere get 503 until it does")

    def start(self) -> BusRouter:
        self.bus.start()
        return self

    def live_sessions(self) -> set[str]:
        """Sessions whose home is a live process (at startup: their rows stay as they are)."""
        homes = self.homes.all()
        alive = self.bus.alive(sorted({h.process for h in homes.values()}))
        return {session_id for session_id, h in homes.items() if h.process in alive}

    def start_ticks(self) -> None:
        """Once the supervisor runs: leases, the liveness monitor, owners of live names, the
        shared board."""
        self.board.start()
        self.bus.every_tick(self._tick, "the router's tick (leases, peers' liveness, owners)")
        # Its own tick, after the liveness monitor (a dead owner is answered as such first),
        # and without Redis: a message lost because Redis went away is answered while it is
        # still away.
        self.bus.every_tick(self._expire_unacknowledged, "forwarded infers' acknowledgements")

    def stop(self) -> None:
        self.board.stop()
        with contextlib.suppress(Exception):  # Redis may be gone at shutdown
            self.leases.release_all()
        self.bus.stop()

    # --- addresses -----------------------------------------------------------------------

    def name_local(self, ref: pykka.ActorRef, kind: str, key: str) -> None:
        """The supervisor names each child it starts, so messages can carry it."""
        self._addresses[ref.actor_urn] = (kind, self.process, key)

    def forget_local(self, ref: Any) -> None:
        self._addresses.pop(getattr(ref, "actor_urn", ""), None)

    def _ref_address(self, ref: Any) -> codec.Address:
        if isinstance(ref, RemoteSession):
            return ref.address
        if isinstance(ref, RemoteLlm):
            return ("llm", "", ref.name)
        address = self._addresses.get(ref.actor_urn)
        if address is None:
            raise codec.CodecError(f"{ref} has no address on the bus")
        return address

    def _ref(self, address: codec.Address) -> Any:
        kind, process, key = address
        directory = self._system.directory
        if kind == "session":
            if process == self.process:
                entry = directory.session(key)
                return entry.ref if entry is not None else None
            return RemoteSession(self, process, key)
        if kind == "llm":
            return directory.llm(key) or RemoteLlm(self, key)
        raise codec.CodecError(f"unknown actor kind {kind!r}")

    def _reply_address(self, reply: Any) -> codec.Address:
        if isinstance(reply, RemoteReply):
            return ("reply", reply.process, reply.request_id)
        request_id = getattr(reply, "_bus_request", None)
        if request_id is None:
            request_id = secrets.token_hex(8)
            reply._bus_request = request_id
            self._pending[request_id] = _Pending(reply)
        return ("reply", self.process, request_id)

    def _reply(self, address: codec.Address) -> Any:
        _, process, request_id = address
        if process != self.process:
            return RemoteReply(self, process, request_id)
        pending = self._pending.get(request_id)
        return _HomeReply(self, request_id, pending.reply) if pending is not None else _Sink()

    # --- sending -------------------------------------------------------------------------

    def _send(self, process: str, payload: dict[str, Any]) -> bool:
        return self.bus.send(process, {**payload, "from": self.process})

    def send_tell(self, process: str, address: codec.Address, message: Any,
                  answer_loss: bool = True) -> bool:
        """Tell `process`; False if nobody listens there (an infer is then answered 503,
        unless `answer_loss` is off: the caller tries elsewhere)."""
        pending = None
        if isinstance(message, m.Infer):
            if not message.ack:  # the bus may lose it: the receiver acknowledges it
                message = dataclasses.replace(message, ack=True)
            pending = self._pending.get(self._reply_address(message.reply)[2])
            if pending is not None:
                pending.target = process
                # Before the send: its acknowledgement may be read while it returns.
                pending.sent_at, pending.name = time.monotonic(), address[2]
        body = codec.encode(message, self._hooks)
        sent = self._send(process, {"k": "tell", "to": list(address), "m": body})
        if not sent and pending is not None:
            pending.sent_at = None  # nothing to acknowledge: answered below, or sent again
        if not sent and answer_loss and isinstance(message, m.Infer):
            message.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=address[2])))
        return sent

    def send_ask(self, process: str, address: codec.Address, message: Any) -> pykka.Future:
        request_id = secrets.token_hex(8)
        future: pykka.Future = pykka.ThreadingFuture()
        self._asks[request_id] = future
        call_later(BUS_ASK_S, self._ask_expired, request_id)
        body = codec.encode(message, self._hooks)
        if not self._send(process, {"k": "ask", "to": list(address), "m": body,
                                    "id": request_id}):
            self._ask_expired(request_id)
        return future

    def _ask_expired(self, request_id: str) -> None:
        future = self._asks.pop(request_id, None)
        if future is not None:
            error = bus_timeout()
            future.set_exception((type(error), error, None))

    def call(self, process: str, fn: str, *args: Any) -> Any:
        """Run ActorSystem.local_<fn>(*args) on `process` and return its answer (or raise
        its error); 503 after BUS_ASK_S without one."""
        request_id = secrets.token_hex(8)
        future: pykka.Future = pykka.ThreadingFuture()
        self._asks[request_id] = future
        timer = call_later(BUS_ASK_S, self._ask_expired, request_id)
        try:
            if not self._send(process, {"k": "call", "fn": fn, "id": request_id,
                                        "a": codec.encode(list(args), self._hooks)}):
                self._ask_expired(request_id)
            return future.get(timeout=BUS_ASK_S + 1)
        except pykka.Timeout:
            raise bus_timeout() from None
        finally:
            timer.cancel()
            self._asks.pop(request_id, None)

    def cast(self, process: str, fn: str, *args: Any) -> None:
        """Like `call`, with no answer (a cancel)."""
        self._send(process, {"k": "call", "fn": fn, "a": codec.encode(list(args), self._hooks)})

    def send_reply(self, process: str, request_id: str, item: Any) -> None:
        self._send(process, {"k": "reply", "id": request_id,
                             "m": codec.encode(item, self._hooks)})

    def send_cancelled(self, process: str, request_id: str, reason: str) -> None:
        self._send(process, {"k": "cancelled", "id": request_id, "why": reason})

    def supervise(self, process: str, op: str, key: str, registered: str | None = None) -> None:
        """Ask `process`'s supervisor to reload a name or a session."""
        if process == self.process:
            self._supervisor_op(op, key, registered)
        else:
            self._send(process, {"k": "sup", "op": op, "key": key, "reg": registered})

    def relink(self, names: frozenset[str]) -> None:
        """A session of these names moved here: their owners re-read its home."""
        for name in names:
            owner = self.owner(name)
            if owner is not None:
                self.supervise(owner, "reload_llm", name)

    # --- names ---------------------------------------------------------------------------

    def owner(self, name: str, take: bool = False) -> str | None:
        """The live owner of `name`, from Redis; with `take`, this process if there was none."""
        try:
            owner = self.leases.owner(name, take)
        except Exception as exc:  # noqa: BLE001 - Redis down: nobody can be reached
            self._lookups.failed(exc)
            return None
        self._lookups.answered()
        self._remember(name, owner)
        return owner

    def owners(self, names: list[str], take: bool = False) -> dict[str, str | None]:
        """`owner` for many names, in one round trip."""
        try:
            found = self.leases.owners(names, take)
        except Exception as exc:  # noqa: BLE001 - Redis down: nobody can be reached
            self._lookups.failed(exc)
            return dict.fromkeys(names)
        self._lookups.answered()
        for name, owner in found.items():
            self._remember(name, owner)
        return found

    def _remember(self, name: str, owner: str | None) -> None:
        if owner is None or owner == self.process:  # here, the directory says it
            self._owners.pop(name, None)
        else:
            self._owners[name] = (owner, time.monotonic())

    def _known_owner(self, name: str, take: bool) -> tuple[str | None, bool]:
        """The owner of `name` as looked up within OWNER_CACHE_S (and True), else `owner`."""
        known = self._owners.get(name)
        if known is not None and time.monotonic() - known[1] < OWNER_CACHE_S:
            return known[0], True
        return self.owner(name, take), False

    def llm_ref(self, name: str, take: bool = False) -> Any:
        """The LlmActor of `name`: local (owned here, or taken now with `take`), a remote
        proxy, or None when nobody owns it."""
        ref = self._system.directory.llm(name)
        if ref is not None:
            return ref
        owner, _ = self._known_owner(name, take)
        if owner is None:
            return None
        if owner == self.process:
            return self._own(name)
        return RemoteLlm(self, name)

    def _own(self, name: str) -> Any:
        """This process just took `name`'s lease: its supervisor starts the LlmActor."""
        try:
            return self._system.supervisor.ask(m.OwnName(name), timeout=BUS_ASK_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            return None

    def tell_llm(self, name: str, message: Any) -> None:
        local = self._system.directory.llm(name)
        if local is not None:
            tell(local, message)
            return
        infer = isinstance(message, m.Infer)
        owner, known = self._known_owner(name, take=infer)
        if known and owner is not None:
            if self.send_tell(owner, ("llm", owner, name), message, answer_loss=False):
                return
            self._owners.pop(name, None)  # nobody listens there (gone): ask Redis
            owner = self.owner(name, take=infer)
        if owner == self.process:
            ref = self._own(name)
            if ref is not None and tell(ref, message):
                return
            owner = None
        if owner is None:
            if infer:
                message.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=name)))
            return
        self.send_tell(owner, ("llm", owner, name), message)

    def ask_llm(self, name: str, message: Any) -> pykka.Future:
        local = self._system.directory.llm(name)
        if local is not None:
            return local.ask(message, block=False)
        owner = self.owner(name)
        if owner is None or owner == self.process:
            return failed_future(errors.PUBLISHER_OFFLINE(name=name))
        return self.send_ask(owner, ("llm", owner, name), message)

    # --- receiving -----------------------------------------------------------------------

    def _on_message(self, payload: dict[str, Any]) -> None:
        kind = payload.get("k")
        if kind == "reply":
            self._on_reply(payload)
        elif kind == "tell":
            self._on_tell(payload)
        elif kind in ("ask", "call"):
            spawn(self._answer, payload)  # may block on a local ask: not on the reader
        elif kind == "ans":
            future = self._asks.pop(payload.get("id", ""), None)
            if future is not None:
                if "err" in payload:
                    error = codec.decode(payload["err"], self._hooks)
                    future.set_exception((type(error), error, None))
                else:
                    future.set(codec.decode(payload.get("ok"), self._hooks))
        elif kind == "cancelled":
            pending = self._pending.pop(payload.get("id", ""), None)
            cancelled = getattr(pending.reply, "cancelled", None) if pending else None
            if cancelled is not None:
                cancelled(payload.get("why", "cancelled"))
        elif kind == "sup":
            self._supervisor_op(payload.get("op", ""), payload.get("key", ""),
                                payload.get("reg"))
        else:
            log.warning("bus: dropped a message of unknown kind %r", kind)

    def _on_reply(self, payload: dict[str, Any]) -> None:
        request_id = payload.get("id", "")
        pending = self._pending.get(request_id)
        if pending is None:
            if request_id in self._abandoned:
                self._late(request_id, codec.decode(payload["m"], self._hooks))
            return  # that request is over here
        event = codec.decode(payload["m"], self._hooks)
        if self.note(request_id, event, payload.get("from")):
            pending.reply.put(event)

    def note(self, request_id: str, event: Any, sender: str | None) -> bool:
        """An event for a waiting request of this process: any acknowledges it; once
        dispatched, it waits on the task's home (which `sender` is, for a public Llm's call);
        once over, on nobody. False for an event that is for the router alone (Queued)."""
        pending = self._pending.get(request_id)
        if pending is None:
            return True
        if pending.sent_at is not None:
            pending.sent_at = None
            if sender and not pending.dispatched:  # the owner now, if the name moved
                pending.target = sender
        if isinstance(event, m.Dispatched):
            pending.dispatched, pending.dispatch = True, event
            pending.target = home_of(event.task_id) or sender
        elif isinstance(event, TERMINAL):
            self._pending.pop(request_id, None)
        return not isinstance(event, m.Queued)

    def _expire_unacknowledged(self) -> None:
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
                spawn(self.tell_llm, pending.name, m.Withdraw(pending.reply))
        for request_id, (_, _, at) in list(self._abandoned.items()):
            if now - at > self._pending_max_s:  # nothing can come for it any more
                del self._abandoned[request_id]

    def _messages_lost(self, before: float) -> None:
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
                        self.tell_llm(name, m.Withdraw(pending.reply))
            finally:
                sent.set()

        spawn(withdraw)
        sent.wait(WITHDRAW_WAIT_S)
        for _, pending in lost:
            pending.reply.put(m.Failed(errors.HUB_BUSY()))
        for _, pending in lost:
            if pending.dispatch is not None:
                self._system.cancel(pending.dispatch, "no_answer")

    def _late(self, request_id: str, event: Any) -> None:
        """An event for a request given up (unacknowledged, or when the subscription broke):
        its infer did reach an owner, or is still under way there. Withdraw it again there,
        the first withdraw may have been lost too; a task that went out is cancelled where
        it runs."""
        name, reply, _ = self._abandoned.pop(request_id)
        if isinstance(event, m.Dispatched):
            self._system.cancel(event, "no_answer")
        elif not isinstance(event, TERMINAL):
            spawn(self.tell_llm, name, m.Withdraw(reply))

    def _on_tell(self, payload: dict[str, Any]) -> None:
        message = codec.decode(payload["m"], self._hooks)
        kind, _, key = payload["to"]
        if kind == "llm":
            local = self._system.directory.llm(key)
            if local is not None:
                tell(local, message)
            else:
                # The name moved since the sender looked (it may have used an owner it
                # looked up a second ago): on to its owner now, asking Redis (the lease
                # decides, so this cannot bounce back).
                self._owners.pop(key, None)
                self.tell_llm(key, message)
            return
        ref = self._ref(("session", self.process, key)) if kind == "session" else None
        if ref is None or not tell(ref, message):
            self._undeliverable(message, key)

    def renamed(self, tasks: Any, slot: int, home: str) -> tuple[m.SendInfer | m.SendWake, ...]:
        """Tasks of a session that moved to `home` (its `slot` there), under ids of that
        home; their LlmActors are told (TaskMoved), so they count them under those ids."""
        out = []
        for sent in tasks:
            moved = dataclasses.replace(sent, task_id=new_task_id(slot, home))
            tell(sent.llm, m.TaskMoved(sent.task_id, moved.task_id))
            out.append(moved)
        return tuple(out)

    def forward_to_home(self, session_id: str, message: m.SendInfer | m.SendWake) -> bool:
        """A task for a session no longer here (its stream opened on another process) goes
        to its home now, as a task taken over; False if it has no live home elsewhere."""
        try:
            home = self.homes.live_home(session_id)
        except Exception:  # noqa: BLE001 - Redis down: nowhere to send it
            home = None
        if home is None or home.process == self.process:
            return False
        adopt = m.AdoptTasks(self.renamed((message,), home.slot, home.process))
        log.info("task %s of session %s goes to its new home %s", message.task_id,
                 session_id, home.process)
        self.send_tell(home.process, ("session", home.process, session_id), adopt)
        return True

    def _undeliverable(self, message: Any, session_id: str = "") -> None:
        """A session that is not here (any more): its new home takes the task, or whoever
        waits on it is answered."""
        if isinstance(message, (m.SendInfer, m.SendWake)) \
                and self.forward_to_home(session_id, message):
            return
        if isinstance(message, m.SendInfer):
            message.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=message.llm_name)))
            tell(message.llm, m.TaskEnded(message.task_id))
        elif isinstance(message, m.SendWake):
            tell(message.llm, m.WakeFailed(message.task_id,
                                           errors.PUBLISHER_OFFLINE(name=message.llm_name)))

    def _answer(self, payload: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"k": "ans", "id": payload.get("id")}
        try:
            if payload["k"] == "ask":
                message = codec.decode(payload["m"], self._hooks)
                kind, _, key = payload["to"]
                ref = (self._system.directory.llm(key) if kind == "llm"
                       else self._ref(("session", self.process, key)))
                if ref is None:
                    raise errors.PUBLISHER_OFFLINE(name=key)
                result = ref.ask(message, timeout=BUS_ASK_S)
            else:
                args = codec.decode(payload.get("a", []), self._hooks)
                result = self._system.local_call(payload["fn"], args)
            reply["ok"] = codec.encode(result, self._hooks)
        except TetherError as error:
            reply["err"] = codec.encode(error, self._hooks)
        except pykka.Timeout:
            reply["err"] = codec.encode(bus_timeout(), self._hooks)
        except Exception:  # noqa: BLE001 - the asker must get an answer
            log.exception("bus: answering %s failed", payload.get("k"))
            reply["err"] = codec.encode(errors.INTERNAL_ERROR(), self._hooks)
        if payload.get("id"):
            self._send(payload["from"], reply)

    def _supervisor_op(self, op: str, key: str, registered: str | None = None) -> None:
        message = (m.ReloadLlm(key, registered) if op == "reload_llm"
                   else m.ReloadSession(key) if op == "reload_session" else None)
        if message is not None:
            tell(self._system.supervisor, message)

    # --- liveness ------------------------------------------------------------------------

    def forget_request(self, reply: Any) -> None:
        """The client of `reply` is gone or answered: drop its entry here."""
        request_id = getattr(reply, "_bus_request", None)
        if request_id is not None:
            self._pending.pop(request_id, None)

    def _tick(self) -> None:
        if self.bus.take_keys_lost():
            log.warning("bus: Redis lost this process's keys (it restarted empty?): writing "
                        "homes and owners again")
            self._recovering = RECOVER_TICKS
        reassert = self._recovering > 0
        lost = self.leases.renew()
        if lost:
            log.warning("bus: lost the lease of %s", lost)
            tell(self._system.supervisor, m.NamesLost(tuple(lost)))
        procs = sorted(str(p) for p in self.bus.redis.smembers(self.bus.key("procs")))
        targets = {p.target for p in self._pending.values() if p.target} - {self.process}
        watched = sorted(set(procs) | targets)
        alive = self.bus.alive(watched) | {self.process}
        now = time.monotonic()
        self._owners = {name: known for name, known in self._owners.items()
                        if known[0] in alive and now - known[1] < OWNER_CACHE_S}
        for process in procs:
            if process not in alive and process not in self._cleaning:
                self._cleaning.add(process)
                spawn(self._bury, process)
        for request_id, pending in list(self._pending.items()):
            if pending.target is not None and pending.target not in alive:
                self._pending.pop(request_id, None)
                name = getattr(pending.reply, "llm", "the Llm")
                error = (errors.PUBLISHER_DISCONNECTED(name=name) if pending.dispatched
                         else errors.PUBLISHER_OFFLINE(name=name))
                pending.reply.put(m.Failed(error))
            elif now - pending.since > self._pending_max_s:
                self._pending.pop(request_id, None)
        tell(self._system.supervisor, m.EnsureOwners(reassert))
        self._recovering -= reassert

    def _bury(self, process: str) -> None:
        """`process` is dead. Whichever survivor removes it from the set first marks the rows
        of the sessions homed there `inactive` and tells their names' owners."""
        try:
            if not self.bus.redis.srem(self.bus.key("procs"), process):
                return  # another survivor does it
            log.warning("bus: process %s is gone; its sessions' rows go inactive", process)
            self.bus.redis.delete(self.board.key_of(process))
            for session_id, home in self.homes.all().items():
                if home.process == process and self.homes.forget(session_id, process):
                    self._system.local_call("home_died", [session_id])
        except Exception:  # noqa: BLE001 - its rows stay as they are; the sweep's heartbeat
            log.exception("bus: cleaning up after process %s failed", process)
        finally:
            self._cleaning.discard(process)

