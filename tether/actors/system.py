"""ActorSystem: what the HTTP resources talk to. It hides every actor lookup (the supervisor's
directory) and every ask (always with a timeout), so resources stay thin.

It knows nothing of other hub processes: with a bus_url, the composition root
(tether.http.app.build) starts a tether.cluster.system.ClusterSystem instead, which
overrides the few places where one process among several differs (where an Llm or a session
lives, the supervisor it starts) and answers what the other processes ask of this one."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Self

import pykka

from tether import errors
from tether.actors import aliases
from tether.actors import messages as m
from tether.actors.directory import Directory, SessionEntry
from tether.actors.open_tasks import TaskBoard
from tether.actors.reply import MeteredReply
from tether.actors.restarts import MAX_RESTARTS, RESTART_WINDOW_S, RestartHistory
from tether.actors.supervisor import Supervisor
from tether.actors.sweeper import Sweeper
from tether.actors.task_ids import FrameIds, slot_of
from tether.actors.usage import UsageCounter, UsageFlusher
from tether.common.actor import Crash, Parent, Ping, tell
from tether.config import Settings
from tether.observability import metrics
from tether.store import db
from tether.store import llms as store
from tether.store.bootstrap import open_store
from tether.store.models import KIND_PUBLIC, Llm, LlmMember
from tether.store.write_behind import WRITES

log = logging.getLogger("tether.system")

ASK_TIMEOUT_S = 10.0


def ask(ref: pykka.ActorRef, message: Any, timeout: float = ASK_TIMEOUT_S) -> Any:
    try:
        return ref.ask(message, timeout=timeout)
    except pykka.Timeout:
        raise errors.HUB_BUSY() from None
    except pykka.ActorDeadError:
        raise errors.SHUTTING_DOWN() from None


def _close_store() -> None:
    WRITES.clear()  # kept writes belong to this database (a test's, say), not the next
    db.close()


def exit_worker() -> None:
    """The root actors keep failing: leave, and let gunicorn start a fresh worker."""
    os.kill(os.getpid(), signal.SIGTERM)


class ActorSystem:
    """`on_fatal` runs when a root actor (supervisor, sweeper) crashed more often than its
    restart intensity allows; by default the worker exits and gunicorn replaces it."""

    def __init__(self, settings: Settings, on_fatal: Callable[[], None] = exit_worker) -> None:
        self.settings = settings
        self._directory = Directory()
        self._supervisor: pykka.ActorRef | None = None
        self._draining = False  # SIGTERM: new work is refused with 503 shutting_down
        self._drained: queue.Queue = queue.Queue()
        self._drain_pending = 0
        self._sweeper: pykka.ActorRef | None = None
        # SSE frame ids, increasing for the life of the process. They start at the clock (in
        # microseconds: below 2**53, safe in any JSON reader) so that an id a publisher kept
        # from an earlier hub process is never taken for one this process sent.
        self._frame_ids = FrameIds(time.time_ns() // 1000)
        self._stream_tokens = itertools.count(1)  # which stream of a session ended
        # The open tasks of every session here, written by their session actors: a result
        # POST is checked against it and then told, never asked (submit_result).
        self._tasks = TaskBoard()
        self._parent = Parent()  # children reach the live supervisor through it
        self._on_fatal = on_fatal
        self._root_restarts: RestartHistory[str] = RestartHistory()
        self._running = False  # root crashes are restarted only between start() and stop()
        # Each LlmActor publishes its members' in-flight counts here (a snapshot it replaces
        # whole), so reads show live `inFlight` without a message hop.
        self._in_flight: dict[str, Mapping[str, int]] = {}
        # Usage per key and Llm, counted in memory and flushed by a part of its own.
        self.usage = UsageCounter()
        # How to stop each part that started, in the order they started (see start()).
        self._started: list[tuple[str, Callable[[], None]]] = []
        self._aliases = settings.alias_targets()  # alias name -> its targets, in order

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the parts in order, as Mopidy does: each part that started is recorded with
        how to stop it, and if a later part fails, stop() stops those in reverse order before
        the error goes on up, so a failed start leaves nothing running."""
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_parts(self, live_sessions: Callable[[], set[str]] | None = None) -> None:
        """`live_sessions` (several processes): see open_store."""
        # Recorded first: a database that failed half-way through readying is closed too.
        self._started.append(("database", _close_store))
        open_store(self.settings.database_url, self.settings.llms, live_sessions,
                   tuple(self._aliases))
        # Before the actors, so it stops after them: the answers they end are counted, then
        # written, and only then is the database closed.
        flusher = UsageFlusher(self.usage, self.settings.usage_flush_s).start()
        self._started.append(("usage flusher", flusher.stop))
        self._supervisor = self._start_supervisor(None)
        self._started.append(("supervisor", self._stop_supervisor))
        ask(self._supervisor, Ping(), timeout=60)  # its on_start loaded every row
        self._sweeper = self._start_sweeper()
        self._started.append(("sweeper", self._stop_sweeper))
        self._running = True

    def _supervisor_args(self, previous: Directory | None) -> tuple[Any, ...]:
        return (self.settings, self._set_directory, self._frame_ids, self._parent,
                self._root_failed, previous, self._set_in_flight, self._forward, self._tasks)

    def _start_supervisor(self, previous: Directory | None) -> pykka.ActorRef:
        return Supervisor.start(*self._supervisor_args(previous))

    def _start_sweeper(self) -> pykka.ActorRef:
        return Sweeper.start(self.settings, self._parent, lambda: self._directory,
                             self._root_failed)

    def _root_failed(self, ref: pykka.ActorRef) -> None:
        """A root actor crashed (from its on_failure): restart it, bounded; past it, on_fatal."""
        if not self._running:
            return
        urn = ref.actor_urn
        kind = ("supervisor" if self._supervisor is not None and urn == self._supervisor.actor_urn
                else "sweeper" if self._sweeper is not None and urn == self._sweeper.actor_urn
                else None)
        if kind is None:
            return  # already replaced
        crashes = self._root_restarts.crashed(kind, kind, time.monotonic())
        if crashes > MAX_RESTARTS:
            log.critical("the %s crashed %d times in %g s: the worker exits", kind,
                         crashes, RESTART_WINDOW_S)
            self._on_fatal()
            return
        if kind == "supervisor":
            # The new supervisor adopts the children (their streams and tasks live on).
            self._supervisor = self._start_supervisor(self._directory)
        else:
            self._sweeper = self._start_sweeper()
        log.warning("restarted the %s", kind)

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the root actors are alive and answering (for /healthz)."""
        refs = (self._supervisor, self._sweeper)
        try:
            futures = [ref.ask(Ping(), block=False) for ref in refs if ref is not None]
            pykka.get_all(futures, timeout=timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            return False
        return len(futures) == len(refs)

    def drain(self, deadline_s: float = 0.0) -> None:
        """Shutdown, first half: no new task; tasks under way may finish for `deadline_s`
        (their results and chunks are still taken), then every waiting client is answered
        503 and publishers are told to retry. `wait_drained` says when that is over."""
        metrics.closing()  # status feeds end (with a retry hint), or they would hold us up
        self._draining = True
        self._drained = queue.Queue()
        self._drain_pending = sum(
            tell(entry.ref, m.Drain(deadline_s, self._drained))
            for entry in self._directory.sessions.values()
        )

    def wait_drained(self, timeout: float) -> bool:
        """Block (this greenlet) until every session finished draining; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._drain_pending > 0:
            try:
                self._drained.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return False
            self._drain_pending -= 1
        return True

    def stop(self) -> None:
        """Stop the parts that started, the last first, each even if one fails to stop."""
        self._running = False  # from now on a root actor's end is no crash to restart
        while self._started:
            part, stop = self._started.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping the %s failed", part)

    def _stop_sweeper(self) -> None:
        if self._sweeper is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self._sweeper.stop(timeout=5)
        self._sweeper = None

    def _stop_supervisor(self) -> None:
        if self._supervisor is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                self._supervisor.stop(timeout=5)
        self._supervisor = None
        # Children stop after the supervisor asked them to; make sure none outlives it.
        pykka.ActorRegistry.stop_all(timeout=5)

    def _set_directory(self, directory: Directory) -> None:
        self._directory = directory

    def _set_in_flight(self, name: str, counts: Mapping[str, int]) -> None:
        self._in_flight[name] = MappingProxyType(dict(counts))

    def in_flight(self, name: str) -> Mapping[str, int]:
        """The members' in-flight counts of `name`, as its LlmActor here last published."""
        return self._in_flight.get(name, {})

    def read(self, rows: Sequence[Llm],
             members: Mapping[str, Sequence[LlmMember]] | None = None) -> list[dict[str, Any]]:
        """Rows on the wire, virtual ones with their members (`members`, if the caller has
        them) and their live inFlight."""
        if members is None:
            members = store.members_of([row.name for row in rows if row.kind != KIND_PUBLIC])
        counts = self._member_counts(sorted(members))
        out = []
        for row in rows:
            wire = row.to_wire()
            if row.name in members:
                of_row = counts.get(row.name, {})
                wire["members"] = [x.to_wire(of_row.get(x.session_id, 0))
                                   for x in members[row.name]]
            out.append(wire)
        return out

    def _member_counts(self, names: list[str]) -> Mapping[str, Mapping[str, int]]:
        """The members' in-flight counts of each of `names` (what reads show)."""
        return {name: self.in_flight(name) for name in names}

    @property
    def directory(self) -> Directory:
        return self._directory

    @property
    def supervisor(self) -> pykka.ActorRef:
        assert self._supervisor is not None, "ActorSystem.start() was not called"
        return self._supervisor

    # --- publisher control plane ---------------------------------------------------------

    def register(
        self, session_id: str | None, providers: Sequence[dict[str, Any]],
        key_name: str | None = None, admin: bool = False,
    ) -> tuple[str, store.Registered]:
        if self._draining:  # a session taken now would be cut off at once: come back later
            raise errors.SHUTTING_DOWN()
        for i, provider in enumerate(providers):
            if provider.get("name") in self._aliases:
                raise errors.ALIAS_CONFLICT(name=provider["name"], param=f"providers[{i}].name")
        return ask(self.supervisor, m.Register(session_id, tuple(providers), key_name, admin))

    def owned_names(self, session_id: str) -> frozenset[str]:
        entry = self._directory.session(session_id)
        return entry.names if entry is not None else frozenset()

    def heartbeat(self, session_id: str) -> int:
        """Each LlmActor of the session writes its own row (only actors write rows)."""
        owned = sum(self._ask_all(self.owned_names(session_id), m.RecordHeartbeat(session_id)))
        if not owned:
            raise errors.SESSION_NOT_FOUND(session_id=session_id)
        return owned

    def set_status(self, session_id: str, updates: Sequence[tuple[str, str]]) -> None:
        futures = ask(self.supervisor, m.ReportStatus(session_id, tuple(updates)))
        try:
            applied = pykka.get_all(futures, timeout=ASK_TIMEOUT_S)
        except pykka.Timeout:
            raise errors.HUB_BUSY() from None
        if not all(applied):  # cannot happen while the supervisor serializes owners
            raise errors.FORBIDDEN(why="provider session lost a name while reporting its status")

    def withdraw_names(self, session_id: str, names: Sequence[str]) -> None:
        """The publisher no longer serves `names` (docs/protocol.md, Withdraw)."""
        ask(self.supervisor, m.WithdrawNames(session_id, tuple(names)))

    def _ask_all(self, names: Sequence[str] | frozenset[str], message: Any) -> list[Any]:
        futures = []
        for name in names:
            ref = self._llm_ref(name)
            if ref is not None:
                futures.append(ref.ask(message, block=False))
        try:
            return list(pykka.get_all(futures, timeout=ASK_TIMEOUT_S))
        except pykka.Timeout:
            raise errors.HUB_BUSY() from None

    def open_stream(self, session_id: str, outbox: queue.Queue, last_event_id: str | None) -> int:
        entry = self._directory.session(session_id)
        if entry is None and not self._draining:
            entry = self._home_session(session_id)
        if entry is None or not entry.names:
            raise errors.SESSION_NOT_FOUND(session_id=session_id)
        if self._draining:  # its drain already ended the stream with `retry:`
            raise errors.SHUTTING_DOWN()
        # Told, not asked (its `hello` waits for the LlmActors to hear: StreamAnnounced).
        token = next(self._stream_tokens)
        if not tell(entry.ref, m.OpenStream(outbox, last_event_id, tuple(sorted(entry.names)),
                                            token, time.monotonic())):
            raise errors.SHUTTING_DOWN()
        return token

    def _home_session(self, session_id: str) -> SessionEntry | None:
        """A stream opens for a session with no actor here: one process knows them all."""
        return None

    def close_stream(self, session_id: str, token: int) -> None:
        entry = self._directory.session(session_id)
        if entry is not None:
            tell(entry.ref, m.StreamClosed(token))

    def submit_result(self, task_id: str, claimed_session: str | None, result: dict,
                      may_act: Callable[[str], bool] | None = None) -> None:
        """`may_act(session_id)` says whether the caller's key owns the task's session.

        Checked in the order docs/protocol.md gives (task 404, owner 403, kind 409; the body
        was checked at the door) against the TaskBoard the session actors keep, then told to
        the task's session actor: the route waits on no actor, and the session applies each
        result in the order told (one that comes after its task ended is dropped there)."""
        found = self._tasks.get(task_id)
        if found is None:
            raise errors.TASK_NOT_FOUND(task_id=task_id)
        session_id, task = found
        if (claimed_session is not None and claimed_session != session_id) or \
                (may_act is not None and not may_act(session_id)):
            raise errors.FORBIDDEN(why=f"task {task_id!r} belongs to another provider session")
        if not task.streaming and ("chunk" in result or "chunks" in result):
            raise errors.NOT_STREAMING(task_id=task_id)
        entry = self._directory.session(session_id)
        if entry is None:  # its session left this process as the result came
            raise errors.TASK_NOT_FOUND(task_id=task_id)
        if not tell(entry.ref, m.SubmitResult(task_id, result)):
            # Its actor stopped (the hub shuts down): 503, which the publisher posts again.
            raise errors.SHUTTING_DOWN()

    def _entry_of_task(self, task_id: str) -> SessionEntry:
        slot = slot_of(task_id)
        entry = self._directory.session_by_slot(slot) if slot is not None else None
        if entry is None:
            raise errors.TASK_NOT_FOUND(task_id=task_id)
        return entry

    # --- client data plane ---------------------------------------------------------------

    def alias_targets(self, name: str) -> tuple[str, ...] | None:
        """The targets of alias `name`, in order; None when `name` is no alias."""
        return self._aliases.get(name)

    def infer(
        self, name: str, request: dict[str, Any], streaming: bool, endpoint: str,
        affinity: str | None = None, tried: frozenset[str] | None = None,
        key: str | None = None,
    ) -> MeteredReply:
        """Start an infer; its events arrive on the returned channel (see messages.py).
        For an alias, `tried`: its targets that failed this request already (a failover:
        docs/protocol.md, Aliases). `key`: the client key's name its usage counts for (None:
        auth off)."""
        reply = MeteredReply(name, endpoint, key, self.usage)
        if self._draining:  # an HTTP answer while the drain lasts, never a refused connection
            reply.put(m.Failed(errors.SHUTTING_DOWN()))
            return reply
        targets = self._aliases.get(name)
        if targets is not None:
            reply.alias = name
            route = m.AliasRoute(name, tuple(t for t in targets if t not in (tried or ())),
                                 failover=tried is not None)
            aliases.pass_on(m.Infer(request, streaming, endpoint, reply, affinity, alias=route),
                            None, False, self._forward)
            return reply
        ref = self._llm_ref(name)
        if ref is None or not tell(ref, m.Infer(request, streaming, endpoint, reply, affinity)):
            if store.get(name) is not None:  # its actor is down (gave up restarting)
                raise errors.PUBLISHER_OFFLINE(name=name)
            raise errors.LLM_NOT_FOUND(name=name)  # (an outage: 503 database_unavailable)
        return reply

    def _llm_ref(self, name: str) -> Any:
        """The LlmActor of `name` to send a request to, or None when nobody serves it."""
        return self._directory.llm(name)

    def _forward(self, name: str, infer: m.Infer) -> bool:
        """An alias's infer, to its target `name` (aliases.Forward): False if no actor
        serves that name. Called by actors too: it never waits on one."""
        return tell(self._target_ref(name), infer)

    def _target_ref(self, name: str) -> Any:
        """The actor of an alias's target, found without waiting on any actor."""
        return self._directory.llm(name)

    def inject_crash(self, kind: str, key: str) -> bool:
        """Fault injection (tests only; the route exists only with fault_injection on)."""
        directory = self._directory
        roots = {"supervisor": self._supervisor, "sweeper": self._sweeper}
        ref = roots[kind] if kind in roots else directory.llm(key) if kind == "llm" \
            else getattr(directory.session(key), "ref", None)
        return tell(ref, Crash())

    def inject_drop(self, kind: str, count: int, heard: bool) -> bool:
        """Fault injection: lose messages of `kind` between processes. One process has no
        bus, so nothing to lose (False)."""
        return False

    def withdraw(self, name: str, reply: m.ReplyChannel) -> None:
        """The client of an infer that was not dispatched yet left: stop waiting for it
        (`name`: the Llm it waits on, an alias's target). Named by its alias, it had not
        reached a target that took it yet: each target is told (those without it ignore
        it)."""
        for target in self._aliases.get(name, (name,)):
            self._withdraw_at(target, reply)

    def _withdraw_at(self, name: str, reply: m.ReplyChannel) -> None:
        tell(self._directory.llm(name), m.Withdraw(reply))

    def cancel(self, dispatched: m.Dispatched, reason: str) -> None:
        """Stop a dispatched task where it runs."""
        if dispatched.cancel is not None:  # a public Llm's upstream call
            dispatched.cancel(reason)
            return
        self._cancel_task(dispatched.task_id, reason)

    def _cancel_task(self, task_id: str, reason: str) -> None:
        slot = slot_of(task_id)
        entry = self._directory.session_by_slot(slot) if slot is not None else None
        if entry is not None:
            tell(entry.ref, m.CancelTask(task_id, reason))
