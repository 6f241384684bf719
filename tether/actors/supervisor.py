"""Supervisor: starts, finds, restarts and retires the children; owns the directory.

Registration runs here, serialized with retirements: the sweep cannot delete a row while it
is being re-taken. A child that crashes answers its own waiters (on_failure) and reports
here; it is rebuilt from the store. Like an Erlang supervisor, restarts are bounded
(restarts.py): more than MAX_RESTARTS within RESTART_WINDOW_S and the child stays down, its
rows `inactive`. What the sweep retires (idle sessions, expired members): retention.py.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, assert_never

import pykka

from tether import errors
from tether.actors import aliases
from tether.actors import messages as m
from tether.actors.directory import Directory, Index, SessionEntry
from tether.actors.group_commit import Group
from tether.actors.llm import LlmActor
from tether.actors.open_tasks import TaskBoard
from tether.actors.pool import InFlightBoard
from tether.actors.public_llm import PublicLlmActor
from tether.actors.restarts import MAX_RESTARTS, OUTAGE_RETRY_S, RESTART_WINDOW_S, RestartHistory
from tether.actors.retention import IdleSessions, retire_expired, settle
from tether.actors.session import SessionActor
from tether.actors.task_ids import FrameIds
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import call_later
from tether.config import Settings
from tether.observability import metrics
from tether.store import llms as store
from tether.store.db import is_outage
from tether.store.models import INACTIVE, KIND_PUBLIC, Llm, LlmMember
from tether.store.write_behind import WRITES

log = logging.getLogger("tether.supervisor")


class Supervisor(TetherActor):
    """`parent` is how the children reach the live supervisor (it points here from now on);
    `report(ref)` tells the ActorSystem this supervisor crashed; `previous` is the directory
    of a crashed supervisor whose children this one takes over."""

    def __init__(self, settings: Settings, publish: Callable[[Directory], None],
                 frame_ids: FrameIds | None = None, parent: Parent | None = None,
                 report: Callable[[pykka.ActorRef], None] | None = None,
                 previous: Directory | None = None, board: InFlightBoard | None = None,
                 forward: aliases.Forward = aliases.nowhere,
                 tasks: TaskBoard | None = None) -> None:
        super().__init__()
        self._tasks = tasks if tasks is not None else TaskBoard()  # the result route reads it
        self._frame_ids = frame_ids if frame_ids is not None else FrameIds()
        self._settings = settings
        self._publish = publish
        self._parent = parent if parent is not None else Parent()
        self._parent.ref = self.actor_ref  # messages queue here until on_start has run
        self._report = report
        self._previous = previous
        self._board = board
        self._forward = forward  # the children pass an alias's infer on through it
        # Published as snapshots after each change: persistent maps, never copied.
        self._llms: Index[str, pykka.ActorRef] = Index()
        self._members: dict[str, tuple[str, ...]] = {}  # llm name -> member session ids
        self._live: set[str] = set()  # sessions with a stream open now
        self._sessions: Index[str, SessionEntry] = Index()
        self._slots: Index[int, str] = Index()
        self._next_slot = 1
        self._restarts: RestartHistory[tuple[str, str]] = RestartHistory()
        self._home: str | None = None  # with a bus: this process's id, put in task ids
        # Names whose last member withdrew: registered again, their new actor first hears
        # of the tasks still running at the sessions (as after a restart).
        self._withdrawn: set[str] = set()
        self._idle = IdleSessions(settings.inactive_retention_s)  # no row, no stream: since

    def receive(self, message: m.SupervisorMessage) -> Any:
        match message:
            case m.Register():
                return self._on_register(message)
            case m.SessionStreamLost():
                self._on_stream_lost(message)
            case m.SessionStreamOpened():
                try:
                    self._on_stream_opened(message)
                finally:  # its `hello` waits for this, whatever happened here
                    tell(message.session, m.StreamAnnounced(message.token))
            case m.RetireExpired():
                self._on_retire_expired(message)
            case m.ReportStatus():
                return self._on_report_status(message)
            case m.WithdrawNames():
                self._on_withdraw(message)
            case m.ChildFailed():
                self._on_child_failed(message)
            case _:
                assert_never(message)

    # The messages whose sender waits for the answer (an ask): an outage is their answer.
    asked: tuple[type, ...] = (m.Register, m.ReportStatus)

    def on_receive(self, message: Any) -> Any:
        """An engine's outage is not this actor's fault: an ask is answered with it (503), a
        tell is given up in one log line (the store or the next tick corrects it), and the
        supervisor goes on: a restart during an outage would read the store and crash."""
        try:
            return super().on_receive(message)
        except Exception as exc:
            error = self._outage_error(exc)
            if error is None:
                raise
            if isinstance(message, self.asked):
                raise error from None
            log.warning("the supervisor skipped %s: %s (%s)", type(message).__name__,
                        error.message, " ".join(str(exc).split()) or type(exc).__name__)
            return None

    def _outage_error(self, exc: BaseException) -> errors.TetherError | None:
        """What a caller is answered for `exc` if it is an engine's outage, else None."""
        return errors.DATABASE_UNAVAILABLE() if is_outage(exc) else None

    def on_start(self) -> None:
        try:
            took_over = self._previous is not None
            if self._previous is not None:
                self._take_over(self._previous)
                self._previous = None
            try:
                rows = store.list_all()
                self._reconcile(rows, store.members_of([row.name for row in rows]))
            except Exception as exc:
                # A restart during an outage: the crashed supervisor's children go on as
                # they were; the next registration or sweep brings the rest up to date.
                if not (took_over and is_outage(exc)):
                    raise
                log.warning("the supervisor restarted without reading the store (%s)",
                            " ".join(str(exc).split()))
            self._publish_directory()
        except Exception:
            # pykka calls no on_failure for on_start: report, or nobody would restart us.
            log.exception("the supervisor failed to start")
            self.report_crash()
            raise

    def _take_over(self, previous: Directory) -> None:
        """Adopt a crashed supervisor's children (their streams and tasks live on)."""
        self._llms = Index(previous.llms)
        self._sessions = Index(previous.sessions)
        self._slots = Index(previous.slots)
        self._next_slot = max(self._slots, default=0) + 1
        self._members = dict.fromkeys(self._llms, ())
        for entry in self._sessions.values():
            for name in entry.names:
                self._members[name] = (*self._members.get(name, ()), entry.session_id)
        # Which streams are open died with it. The LlmActors still know; for a member joining
        # later, "live" errs on trying (a streamless session refuses the task).
        self._live = set(self._sessions)
        # A child whose crash report went to the dead supervisor is rebuilt now.
        for session_id, entry in list(self._sessions.items()):
            if not entry.ref.is_alive():
                self._restart_session(session_id)
        for name, ref in list(self._llms.items()):
            if not ref.is_alive():
                self._restart_llm(name)

    def _reconcile(self, rows: list[Llm], members: dict[str, list[LlmMember]]) -> None:
        """Make the children match the store: an actor per row, none for a deleted row."""
        names = {row.name for row in rows}
        for name in [name for name in self._llms if name not in names]:
            self._retire(name)
        for row in rows:
            now = {x.session_id for x in members[row.name]}
            if row.name not in self._llms or set(self._members.get(row.name, ())) != now:
                self._adopt_row(row, members[row.name])

    def _llm(self, name: str) -> Any:
        """How to reach the LlmActor of `name` (with a bus, perhaps on another process)."""
        return self._llms.get(name)

    def _link(self, session_id: str, entry: SessionEntry) -> m.SessionLink:
        return m.SessionLink(session_id, entry.slot, entry.ref, self._home)

    def on_stop(self) -> None:
        # Reverse order of start: Llms first (they answer their waiters), then sessions.
        for ref in list(self._llms.values()):
            ref.stop(block=False)
        for entry in list(self._sessions.values()):
            entry.ref.stop(block=False)

    # --- children ------------------------------------------------------------------------

    def _session_entry(self, session_id: str) -> SessionEntry:
        entry = self._sessions.get(session_id)
        if entry is None:
            slot = self._next_slot
            self._next_slot += 1
            ref = self._start_session(session_id)
            entry = SessionEntry(session_id, ref, slot, frozenset())
            self._sessions[session_id] = entry
            self._slots[slot] = session_id
        return entry

    def _start_session(self, session_id: str) -> pykka.ActorRef:
        return SessionActor.start(self._settings, session_id, self._parent, self._frame_ids,
                                  self._tasks)

    def _set_names(self, session_id: str, names: frozenset[str]) -> None:
        entry = self._sessions[session_id]
        self._sessions[session_id] = SessionEntry(session_id, entry.ref, entry.slot, names)

    def _member_infos(self, members: list[LlmMember]) -> tuple[m.MemberInfo, ...]:
        infos = []
        for x in members:
            entry = self._session_entry(x.session_id)
            infos.append(m.MemberInfo(self._link(x.session_id, entry),
                                      x.status, x.max_concurrency, x.session_id in self._live))
        return tuple(infos)

    def _adopt_row(self, row: Llm, members: list[LlmMember],
                   registered: str | None = None) -> None:
        """Start or update the LlmActor of `row` with its members (protocol.md, Pools)."""
        state = m.LlmState(row.name, row.kind, row.provider_session_id, row.status)
        infos = self._member_infos(members)
        now = tuple(i.session.session_id for i in infos)
        for session_id in set(self._members.get(row.name, ())) - set(now):
            if session_id in self._sessions:
                self._set_names(session_id, self._sessions[session_id].names - {row.name})
        for session_id in now:
            if session_id in self._sessions:  # with a bus, a member may be homed elsewhere
                self._set_names(session_id, self._sessions[session_id].names | {row.name})
        self._members[row.name] = now
        ref = self._llms.get(row.name)
        if ref is None and row.name in self._withdrawn:
            self._withdrawn.discard(row.name)
            self._llms[row.name] = self._start_llm(state, infos, restarted=True)
            self._inventory(row.name, self._llms[row.name], infos)
        elif ref is None:
            self._llms[row.name] = self._start_llm(state, infos)
        else:
            tell(ref, m.Adopt(state, infos, time.monotonic(), registered))

    def _start_llm(self, state: m.LlmState, infos: tuple[m.MemberInfo, ...],
                   proxies: m.ProxiesInFlight | None = None,
                   restarted: bool = False) -> pykka.ActorRef:
        if state.kind == KIND_PUBLIC:
            return PublicLlmActor.start(self._settings, state,
                                        self._settings.public_llm(state.name), self._parent,
                                        proxies, self._forward)
        return LlmActor.start(self._settings, state, infos, self._parent, self._board,
                              restarted, self._forward)

    def _publish_directory(self) -> None:
        self._publish(
            Directory(
                llms=self._llms.snapshot(),
                sessions=self._sessions.snapshot(),
                slots=self._slots.snapshot(),
            )
        )

    # --- messages ------------------------------------------------------------------------

    def _on_register(self, msg: m.Register) -> tuple[str, store.Registered]:
        """With the registrations queued behind it, in one transaction: group_commit.py."""
        group = Group(self.actor_inbox, msg, self._outage_error)
        ids = [x.session_id or str(uuid.uuid4()) for x in group.messages]
        limit = self._settings.max_llms_per_key
        written = group.run(store.register_many, [
            (i, x.providers, store.Registrant(x.key_name, x.admin, limit))
            for i, x in zip(ids, group.messages, strict=True)])
        outcomes = group.each(self._registered, zip(ids, written, strict=True))
        self._publish_directory()
        return group.answer(outcomes)

    def _registered(self, session_id: str, done: store.Registered) -> tuple[str, Any]:
        for row in done.rows:
            # A status kept from before (an outage) is older than this registration.
            WRITES.discard((row.name, session_id, "status"))
            self._adopt_row(row, done.members[row.name], registered=session_id)
        return session_id, done

    def _on_stream_lost(self, msg: m.SessionStreamLost) -> None:
        self._live.discard(msg.session_id)
        entry = self._sessions.get(msg.session_id)
        if entry is None:
            return
        for name in entry.names:
            tell(self._llm(name), m.StreamLost(msg.session_id, msg.stream_opened_at))

    def _on_stream_opened(self, msg: m.SessionStreamOpened) -> None:
        self._live.add(msg.session_id)
        entry = self._sessions.get(msg.session_id)
        for name in entry.names if entry is not None else ():
            tell(self._llm(name), m.StreamOpened(msg.session_id))

    def _on_report_status(self, msg: m.ReportStatus) -> list[pykka.Future]:
        """Check every name, then apply them all. Registrations are serialized here too, so
        no owner can change between the check and the SetStatus each Llm receives next."""
        entry = self._sessions.get(msg.session_id)
        if entry is None or not entry.names:
            raise errors.SESSION_NOT_FOUND(session_id=msg.session_id)
        foreign = [name for name, _ in msg.updates
                   if msg.session_id not in self._members.get(name, ())]
        if foreign:
            raise errors.FORBIDDEN(why=f"provider session does not own {', '.join(foreign)}")
        down = [name for name, _ in msg.updates if name not in self._llms]
        if down:  # its restarts gave up; a register brings it back
            raise errors.ACTOR_RESTARTED(actor=f"actor of {', '.join(down)}",
                                         why="is down until its publisher registers again")
        return [self._llms[name].ask(m.SetStatus(msg.session_id, status), block=False)
                for name, status in msg.updates]

    def _on_withdraw(self, msg: m.WithdrawNames) -> None:
        """The session's members leave (the store refuses all if one name is another's)."""
        changed = store.withdraw(msg.session_id, msg.names)
        settle(changed, self._adopt_row, self._gone)  # a pool goes on without this member
        self._names_changed(msg.session_id)
        self._publish_directory()
        if changed:
            log.info("session %s withdrew %s", msg.session_id, ", ".join(changed))

    def _gone(self, name: str) -> None:
        """`name`'s last member left: its waiters get 503 publisher_offline."""
        self._retire(name)
        self._withdrawn.add(name)

    def _names_changed(self, session_id: str) -> None:
        """The session's names changed in the store (_adopt_row and _retire keep them here)."""

    def _on_retire_expired(self, msg: m.RetireExpired) -> None:
        if self._forget_idle_sessions():  # first: it needs no database
            self._publish_directory()
        if retire_expired(msg.cutoff, self._adopt_row, self._retire):
            self._publish_directory()

    def _forget_idle_sessions(self) -> bool:
        """Forget the sessions idle for inactive_retention_s (retention.py): actor, entry,
        slot (and, with a bus, home in Redis)."""
        doomed = self._idle.expired(self._sessions, self._live, time.monotonic())
        for session_id in doomed:
            self._forget_session(session_id)
        return bool(doomed)

    def _forget_session(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id)
        self._slots.pop(entry.slot, None)
        self._idle.forget(session_id)
        entry.ref.stop(block=False)  # its board entry goes with it (on_stop)
        log.info("forgot session %s: no row and no stream for %g s", session_id,
                 self._settings.inactive_retention_s)

    def _retire(self, name: str) -> None:
        ref = self._llms.pop(name, None)
        if ref is not None:
            tell(ref, m.Retire())
        for session_id in self._members.pop(name, ()):
            if session_id in self._sessions:
                self._set_names(session_id, self._sessions[session_id].names - {name})

    # --- supervision ---------------------------------------------------------------------

    def _on_child_failed(self, msg: m.ChildFailed) -> None:
        current = (self._llms.get(msg.key) if msg.kind == "llm"
                   else getattr(self._sessions.get(msg.key), "ref", None))
        if current is None or current.actor_urn != msg.ref.actor_urn:
            return  # already replaced or retired
        crashes = self._restarts.crashed((msg.kind, msg.key), msg.kind, time.monotonic(),
                                         counted=not msg.retry)
        if crashes > MAX_RESTARTS:
            log.error("%s %r crashed %d times in %g s: leaving it down", msg.kind, msg.key,
                      crashes, RESTART_WINDOW_S)
            self._give_up(msg.kind, msg.key)
        elif msg.kind == "llm":
            try:
                self._restart_llm(msg.key, msg.proxies)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # Rebuilt once the store answers; meanwhile 503 database_unavailable.
                if not msg.retry:
                    log.warning("the actor of Llm %r waits for the database to restart (%s)",
                                msg.key, " ".join(str(exc).split()))
                call_later(OUTAGE_RETRY_S, tell, self.actor_ref,
                           dataclasses.replace(msg, retry=True))
        else:
            self._restart_session(msg.key)
        self._publish_directory()

    def _restart_llm(self, name: str, proxies: m.ProxiesInFlight | None = None) -> None:
        row = store.get(name)
        if row is None:
            self._llms.pop(name, None)
            return
        state = m.LlmState(row.name, row.kind, row.provider_session_id, row.status)
        infos = self._member_infos(store.members_of([name])[name])
        ref = self._start_llm(state, infos, proxies, restarted=True)
        self._llms[name] = ref
        self._inventory(name, ref, infos)
        log.warning("restarted the actor of Llm %r", name)

    def _inventory(self, name: str, ref: pykka.ActorRef,
                   infos: tuple[m.MemberInfo, ...]) -> None:
        """The tasks of `name` still running at its members' sessions report to its new actor,
        which counts them in flight again (no member goes above its maxConcurrency)."""
        for info in infos:
            if not tell(info.session.ref, m.LlmRestarted(name, ref)):
                tell(ref, m.TasksInFlight(info.session.session_id, ()))

    def _restart_session(self, session_id: str) -> None:
        self._live.discard(session_id)
        old = self._sessions[session_id]
        ref = self._start_session(session_id)
        self._sessions[session_id] = SessionEntry(session_id, ref, old.slot, old.names)
        link = m.SessionLink(session_id, old.slot, ref, self._home)
        for name in old.names:
            llm = self._llm(name)
            tell(llm, m.Relink(link))
            # The new actor has no stream: the rows go inactive as on a stream loss, and the
            # publisher's register or new stream takes them back (an older loss never sticks).
            tell(llm, m.StreamLost(session_id, float("-inf")))
        log.warning("restarted the actor of session %r", session_id)

    def report_crash(self) -> None:
        if self._report is not None:
            self._report(self.actor_ref)

    def on_orphan(self, message: Any) -> None:
        # report_crash started the successor (the ActorSystem does it at once) and pointed
        # the children's Parent at it: what this one never read goes there, in order.
        if self._parent.ref is not None and self._parent.ref is not self.actor_ref:
            tell(self._parent.ref, message)

    def _give_up(self, kind: str, key: str) -> None:
        metrics.actor_down(kind, key)
        if kind == "llm":
            self._llms.pop(key, None)
            for session_id in self._members.get(key, ()):
                WRITES.write((key, session_id, "status"),
                             functools.partial(store.set_status, key, session_id, INACTIVE))
            return
        entry = self._sessions.pop(key)
        self._slots.pop(entry.slot, None)
        for name in entry.names:
            tell(self._llm(name), m.StreamLost(key, float("inf")))  # rows go inactive
