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

Every message is JSON (codec.py; addresses.py maps live objects to addresses). Every wait
has a deadline, and a process whose liveness key vanished is noticed within a tick: requests
waiting on it are answered 503 (pending.py), the rows of sessions homed there go
`inactive`, its names get new owners (owners.py looks them up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pykka

from tether import errors
from tether.actors import messages as m
from tether.actors.directory import Directory
from tether.cluster import codec
from tether.cluster.addresses import Addresses
from tether.cluster.burial import Burial, Mourner
from tether.cluster.bus import TICK_S, Bus
from tether.cluster.dead_homes import DeadHomes
from tether.cluster.faults import Drops
from tether.cluster.handover import Handover
from tether.cluster.leases import Homes, Leases
from tether.cluster.owners import Owners
from tether.cluster.pending import PendingRequests
from tether.cluster.proxies import RemoteLlm, failed_future, unowned
from tether.cluster.shared_board import SharedBoard
from tether.common.actor import tell
from tether.common.runtime import Timer, call_later, spawn
from tether.config import Settings
from tether.errors import TetherError
from tether.observability.board import BOARD

log = logging.getLogger("tether.router")

BUS_ASK_S = 5.0  # a cross-process ask unanswered by then is answered 503
RECOVER_TICKS = 5  # after Redis lost our keys: re-assert homes and owners this many ticks


def busy() -> TetherError:
    """503 `hub_busy` for a cross-process call that got no answer (a bus hiccup): the caller
    (a publisher posting a result, say) retries after a second, and may then get through."""
    error = errors.HUB_BUSY()
    error.headers = {"Retry-After": "1"}
    return error


class LocalSystem(Mourner, Protocol):
    """What the router needs of this process's actor system (tether.cluster.system)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def supervisor(self) -> pykka.ActorRef: ...

    def in_flight(self, name: str) -> Mapping[str, int]:
        """The members' in-flight counts of a name owned here."""

    def cancel(self, dispatched: m.Dispatched, reason: str) -> None:
        """Stop a dispatched task where it runs."""

    def handle_call(self, fn: str, args: Sequence[Any]) -> Any:
        """Answer a call another process made of this one (`call`, `cast`)."""


class BusRouter:
    def __init__(self, url: str, system: LocalSystem) -> None:
        s = system.settings
        self.bus = Bus(url, self._on_message, int(s.liveness_ttl_s * 1000),
                       self._messages_lost)
        self.process = self.bus.process
        self.leases = Leases(self.bus)
        self.homes = Homes(self.bus)
        self.owners = Owners(self.bus, self.leases)
        self.board = SharedBoard(self.bus, BOARD, system.in_flight)
        self._system = system
        # How long a forwarded infer waits for its owner's first event. A live owner answers
        # at once (the request is dispatched, waits, or fails) unless it stalls, and the
        # cluster tolerates stalls up to the liveness TTL (longer is a death, which the
        # liveness monitor answers first, `publisher_offline`, within the TTL and a tick).
        # Silence beyond that means the message or its answer was lost on the bus.
        self.pending = PendingRequests(
            self.process, ack_s=s.liveness_ttl_s + TICK_S,
            max_s=s.wake_timeout_s + s.infer_timeout_s + 60.0,
            withdraw=self._withdraw, cancel=system.cancel)
        self.addresses = Addresses(self.process, self, self.pending, lambda: system.directory)
        self._hooks = self.addresses.hooks
        self._asks: dict[str, pykka.Future[Any]] = {}
        self._recovering = 0  # ticks left of re-asserting what Redis lost
        self._reconcile_s = s.reconcile_interval_s
        self._reconciled_at = time.monotonic()
        self._drops = Drops()  # fault injection (tests, with fault_injection on)
        self.handover = Handover(self)
        self.draining = False  # SIGTERM: its names handed over, none taken any more
        self.dead = DeadHomes(self.bus)  # other processes known dead
        self.burial = Burial(self.bus, self.homes, self.board.key_of, system)

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
        self.bus.every_tick(self.pending.expire_unacknowledged,
                            "forwarded infers' acknowledgements")
        self.bus.every_tick(self._reconcile, "the owners' reconciliation")

    def stop(self) -> None:
        self.board.stop()
        with contextlib.suppress(Exception):  # Redis may be gone at shutdown
            self.leases.release_all()
        self.bus.stop()

    # --- sending -------------------------------------------------------------------------

    def _send(self, process: str, payload: dict[str, Any], wait: bool = True) -> bool:
        return self.bus.send(process, {**payload, "from": self.process}, wait)

    def drop(self, kind: str, count: int, heard: bool) -> None:
        """Fault injection: lose the next `count` messages of `kind` (see faults.Drops)."""
        self._drops.add(kind, count, heard)

    def send_tell(self, process: str, address: codec.Address, message: Any,
                  answer_loss: bool = True) -> bool:
        """Tell `process`; False if nobody listens there (an infer is then answered 503,
        unless `answer_loss` is off: the caller tries elsewhere)."""
        waiting = None  # the request id of an infer of this process
        if isinstance(message, m.Infer):
            if not message.ack:  # the bus may lose it: the receiver acknowledges it
                message = dataclasses.replace(message, ack=True)
            _, home, request_id = self.addresses.reply_address(message.reply)
            if home == self.process:
                waiting = request_id
                self.pending.sending(request_id, process, address[2])
        body = codec.encode(message, self._hooks)
        dropped = self._drops.take(type(message).__name__) if self._drops else None
        sent = (self._send(process, {"k": "tell", "to": list(address), "m": body})
                if dropped is None else dropped)
        if not sent and waiting is not None:
            self.pending.not_sent(waiting)
        if not sent and answer_loss and isinstance(message, m.Infer):
            message.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=address[2])))
        return sent

    def send_ask(self, process: str, address: codec.Address, message: Any) -> pykka.Future[Any]:
        body = codec.encode(message, self._hooks)
        return self._request(process, {"k": "ask", "to": list(address), "m": body})[1]

    def call(self, process: str, fn: str, *args: Any) -> Any:
        """Run the call `fn` (LocalSystem.handle_call) on `process` and return its answer
        (or raise its error); 503 after BUS_ASK_S without one."""
        body = codec.encode(list(args), self._hooks)
        request_id, future, timer = self._request(process, {"k": "call", "fn": fn, "a": body})
        try:
            return future.get(timeout=BUS_ASK_S + 1)
        except pykka.Timeout:
            raise busy() from None
        finally:
            timer.cancel()
            self._asks.pop(request_id, None)

    def _request(self, process: str,
                 payload: dict[str, Any]) -> tuple[str, pykka.Future[Any], Timer]:
        """Send `payload` to `process` as a request: its answer (an "ans") sets the future,
        or 503 `hub_busy` does after BUS_ASK_S (at once if nobody listens there)."""
        request_id = secrets.token_hex(8)
        future: pykka.Future[Any] = pykka.ThreadingFuture()
        self._asks[request_id] = future
        timer = call_later(BUS_ASK_S, self._ask_expired, request_id)
        kind = f"{payload['k']}:{payload.get('fn', '')}"
        dropped = self._drops.take(kind) if self._drops else None
        if not (self._send(process, {**payload, "id": request_id}) if dropped is None
                else dropped):
            self._ask_expired(request_id)
        return request_id, future, timer

    def _ask_expired(self, request_id: str) -> None:
        future = self._asks.pop(request_id, None)
        if future is not None:
            error = busy()
            future.set_exception((type(error), error, None))

    def cast(self, process: str, fn: str, *args: Any) -> None:
        """Like `call`, with no answer (a cancel); the caller does not wait for Redis."""
        self._send(process, {"k": "call", "fn": fn, "a": codec.encode([*args], self._hooks)}, False)

    def send_reply(self, process: str, request_id: str, item: Any) -> None:
        if self._drops and self._drops.take(f"reply:{type(item).__name__}") is not None:
            return
        self._send(process, {"k": "reply", "id": request_id,  # an actor's: never waits
                             "m": codec.encode(item, self._hooks)}, wait=False)

    def send_cancelled(self, process: str, request_id: str, reason: str) -> None:
        self._send(process, {"k": "cancelled", "id": request_id, "why": reason}, wait=False)

    def supervise(self, process: str, op: str, key: str, registered: str | None = None) -> None:
        """Ask `process`'s supervisor to reload a name or a session."""
        if process == self.process:
            self._supervisor_op(op, key, registered)
        elif not self._drops or self._drops.take(op) is None:
            self._send(process, {"k": "sup", "op": op, "key": key, "reg": registered}, False)

    def relink(self, names: frozenset[str]) -> None:
        """A session of these names moved here: their owners re-read its home."""
        for name in names:
            owner = self.owners.owner(name)
            if owner is not None:
                self.supervise(owner, "reload_llm", name)

    # --- names ---------------------------------------------------------------------------

    def llm_ref(self, name: str, take: bool = False) -> pykka.ActorRef | RemoteLlm | None:
        """The LlmActor of `name`: local (owned here, or taken now with `take`), a proxy to
        the owner found, or None when nobody owns it."""
        ref = self._system.directory.llm(name)
        if ref is not None:
            return ref
        owner, _ = self.owners.recent(name, take)
        if owner is None:
            return None
        if owner == self.process:
            return self._own(name)
        return RemoteLlm(self, name, owner)

    def _own(self, name: str) -> pykka.ActorRef | None:
        """This process just took `name`'s lease: its supervisor starts the LlmActor."""
        try:
            ref: pykka.ActorRef | None = self._system.supervisor.ask(
                m.OwnName(name), block=True, timeout=BUS_ASK_S)
        except (pykka.Timeout, pykka.ActorDeadError):
            return None
        return ref

    def tell_llm(self, name: str, message: Any, owner: str | None = None) -> None:
        """Tell the LlmActor of `name`: here, at `owner` (where the sender found it), or at
        the owner looked up now (with an infer, this process takes a name nobody owns)."""
        local = self._system.directory.llm(name)
        if local is not None:
            tell(local, message)
            return
        infer = isinstance(message, m.Infer) and not self.draining  # takes the name
        known = owner is not None
        if owner is None:
            owner, known = self.owners.recent(name, take=infer)
        if known and owner is not None:
            if self.send_tell(owner, ("llm", owner, name), message, answer_loss=False):
                return
            self.owners.forget(name)  # nobody listens there (gone): ask Redis
            owner = self.owners.owner(name, take=infer)
        if owner == self.process:
            ref = self._own(name)
            if ref is not None and tell(ref, message):
                return
            owner = None
        if owner is None:
            if isinstance(message, m.Infer) and self.draining \
                    and self.handover.to_heir(name, message):
                return  # a request forwarded here for a name this process handed over
            if infer:
                message.reply.put(m.Failed(unowned(name)))
            return
        self.send_tell(owner, ("llm", owner, name), message)

    def ask_llm(self, name: str, message: Any, owner: str | None = None) -> pykka.Future[Any]:
        """Ask the LlmActor of `name`: here, at `owner`, or at the owner looked up now."""
        local = self._system.directory.llm(name)
        if local is not None:
            return local.ask(message, block=False)
        if owner is None:
            owner = self.owners.owner(name)
        if owner is None or owner == self.process:
            return failed_future(errors.PUBLISHER_OFFLINE(name=name))
        return self.send_ask(owner, ("llm", owner, name), message)

    def _withdraw(self, name: str, reply: m.ReplyChannel) -> None:
        self.tell_llm(name, m.Withdraw(reply))

    # --- receiving -----------------------------------------------------------------------

    def _on_message(self, payload: dict[str, Any]) -> None:
        kind = payload.get("k")
        if kind == "reply":
            request_id = payload.get("id", "")
            if self.pending.awaits(request_id):
                self.pending.arrived(request_id, codec.decode(payload["m"], self._hooks),
                                     payload.get("from"))
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
            self.pending.cancelled(payload.get("id", ""), payload.get("why", "cancelled"))
        elif kind == "sup":
            self._supervisor_op(payload.get("op", ""), payload.get("key", ""),
                                payload.get("reg"))
        else:
            log.warning("bus: dropped a message of unknown kind %r", kind)

    def _messages_lost(self, before: float) -> None:
        self.pending.messages_lost(before)

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
                self.owners.forget(key)
                self.tell_llm(key, message)
            return
        ref = self.addresses.ref(("session", self.process, key)) if kind == "session" else None
        if ref is None or not tell(ref, message):
            self.handover.undeliverable(message, key)

    def _answer(self, payload: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"k": "ans", "id": payload.get("id")}
        try:
            if payload["k"] == "ask":
                message = codec.decode(payload["m"], self._hooks)
                kind, _, key = payload["to"]
                ref = (self._system.directory.llm(key) if kind == "llm"
                       else self.addresses.ref(("session", self.process, key)))
                if ref is None:
                    raise errors.PUBLISHER_OFFLINE(name=key)
                result = ref.ask(message, timeout=BUS_ASK_S)
            else:
                args = codec.decode(payload.get("a", []), self._hooks)
                result = self._system.handle_call(payload["fn"], args)
            reply["ok"] = codec.encode(result, self._hooks)
        except TetherError as error:
            reply["err"] = codec.encode(error, self._hooks)
        except pykka.Timeout:
            reply["err"] = codec.encode(errors.HUB_BUSY(), self._hooks)
        except Exception:  # noqa: BLE001 - the asker must get an answer
            log.exception("bus: answering %s failed", payload.get("k"))
            reply["err"] = codec.encode(errors.INTERNAL_ERROR(), self._hooks)
        if payload.get("id"):
            kind = f"ans:{payload.get('fn') or payload['k']}"
            if not self._drops or self._drops.take(kind) is None:
                self._send(payload["from"], reply, wait=False)

    def _supervisor_op(self, op: str, key: str, registered: str | None = None) -> None:
        message = (m.ReloadLlm(key, registered) if op == "reload_llm"
                   else m.ReloadSession(key) if op == "reload_session" else None)
        if message is not None:
            tell(self._system.supervisor, message)

    # --- liveness ------------------------------------------------------------------------

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
        watched = sorted(set(procs) | self.pending.targets())
        alive = self.bus.alive(watched) | {self.process}
        self.owners.prune(alive)
        self.burial.bury_dead(procs, alive)
        self.pending.check(alive)
        if not self.draining:  # its names were handed over: none is taken back
            tell(self._system.supervisor, m.EnsureOwners(reassert))
        self._recovering -= reassert

    def _reconcile(self) -> None:
        """Every reconcile_interval_s: each LlmActor of a name owned here compares what it
        counts in flight with what its members' sessions hold (docs/protocol.md, Lost
        messages). Local only: it runs while Redis is away too."""
        now = time.monotonic()
        if now - self._reconciled_at < self._reconcile_s:
            return
        self._reconciled_at = now
        directory = self._system.directory
        for name in list(self.leases.owned):
            tell(directory.llm(name), m.Reconcile())
