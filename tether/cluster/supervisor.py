"""The supervisor of one process among several (docs/protocol.md, Several hub processes).

What differs from the single process's Supervisor:
- It holds the LlmActor of a virtual name only while this process owns the name's lease
  (public Llms, declared in each process's config, are served locally everywhere). Links
  to members homed elsewhere are proxies that send on the bus.
- It holds the SessionActors of the sessions homed here: registered here (with no live
  home elsewhere) or whose stream opened here. A stream for a session homed elsewhere
  takes it over: the old home gives it up (Evict) without marking its rows inactive and
  hands over its tasks that produced nothing (ClusterSystem._take_over), and a stream loss
  is reported only by the process that is still the session's home.
- The home of a session whose stream opens takes the leases of its names that have no
  live owner (so a single publisher's name lives where its stream is: no bus hop), and
  keeps taking them, every tick, while the stream is open.
- Registrations and take-overs tell a name's owner to re-read its members from the store.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pykka
import redis

from tether import errors
from tether.actors import messages as m
from tether.actors.supervisor import Supervisor
from tether.cluster import redis_client
from tether.cluster.proxies import RemoteLlm, RemoteSession
from tether.cluster.router import BusRouter
from tether.common.actor import tell
from tether.store import llms as store
from tether.store.models import KIND_PUBLIC, Llm, LlmMember

log = logging.getLogger("tether.cluster")

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class ClusterSupervisor(Supervisor):
    asked = (*Supervisor.asked, m.OwnName, m.Evict, m.HomeSession)

    def __init__(self, *args: Any, router: BusRouter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._router = router
        self._home = router.process
        self._taking = False  # starting the LlmActor of a lease just taken (_own)

    def _outage_error(self, exc: BaseException) -> errors.TetherError | None:
        # Redis not answering is an outage too (the bus's own loop logs it once).
        if redis_client.unreachable(exc):
            return errors.HUB_BUSY()
        return super()._outage_error(exc)

    def receive(self, message: m.SupervisorMessage | m.ClusterSupervisorMessage) -> Any:
        match message:
            case m.OwnName():
                return self._on_own_name(message)
            case m.ReloadLlm():
                self._on_reload_llm(message)
            case m.ReloadSession():
                self._on_reload_session(message)
            case m.Evict():
                return self._on_evict(message)
            case m.NamesLost():
                self._on_names_lost(message)
            case m.EnsureOwners():
                self._on_ensure_owners(message)
            case m.HomeSession():
                return self._on_home_session(message)
            case _:  # only SupervisorMessages are left, or the type checker says so
                return super().receive(message)

    # --- where things are ----------------------------------------------------------------

    def _owned(self, row: Llm) -> bool:
        return row.kind == KIND_PUBLIC or row.name in self._llms

    def _llm(self, name: str) -> Any:
        return self._llms.get(name) or RemoteLlm(self._router, name)

    def _start_session(self, session_id: str) -> pykka.ActorRef:
        ref = super()._start_session(session_id)
        self._router.addresses.name_local(ref, "session", session_id)
        return ref

    def _start_llm(self, state: m.LlmState, infos: tuple[m.MemberInfo, ...],
                   proxies: m.ProxiesInFlight | None = None,
                   restarted: bool = False) -> pykka.ActorRef:
        # A name whose lease this process just took (_own): its tasks still run at the
        # members' sessions, unknown to this new owner (the old one died, or Redis lost
        # the lease). Started as after a restart: each member takes no task until its
        # session has said which it holds, so maxConcurrency is never exceeded.
        taking = self._taking and not restarted and state.kind != KIND_PUBLIC and bool(infos)
        ref = super()._start_llm(state, infos, proxies, restarted or taking)
        self._router.addresses.name_local(ref, "llm", state.name)
        if taking:
            for info in infos:
                if not tell(info.session.ref, m.LlmRestarted(state.name, ref)):
                    tell(ref, m.TasksInFlight(info.session.session_id, ()))
        return ref

    def _member_infos(self, members: list[LlmMember]) -> tuple[m.MemberInfo, ...]:
        infos = []
        for x in members:
            link, live = self._member_link(x.session_id)
            infos.append(m.MemberInfo(link, x.status, x.max_concurrency, live))
        return tuple(infos)

    def _member_link(self, session_id: str) -> tuple[m.SessionLink, bool]:
        entry = self._sessions.get(session_id)
        if entry is not None:
            return self._link(session_id, entry), session_id in self._live
        home = self._router.homes.live_home(session_id)
        if home is None:  # homed nowhere: no stream, nobody to send to until one opens
            return m.SessionLink(session_id, 0, None, None), False  # type: ignore[arg-type]
        ref = RemoteSession(self._router, home.process, session_id)
        return m.SessionLink(session_id, home.slot, ref, home.process), home.live  # type: ignore[arg-type]

    # --- rows ----------------------------------------------------------------------------

    def _reconcile(self, rows: list[Llm], members: dict[str, list[LlmMember]]) -> None:
        super()._reconcile([row for row in rows if self._owned(row)], members)

    def _adopt_row(self, row: Llm, members: list[LlmMember],
                   registered: str | None = None) -> None:
        if self._owned(row):
            super()._adopt_row(row, members, registered)
            return
        owner = self._router.owners.owner(row.name)
        if owner is not None:
            self._router.supervise(owner, "reload_llm", row.name, registered)

    def _registered(self, session_id: str, done: store.Registered) -> tuple[str, Any]:
        home = self._router.homes.live_home(session_id)
        if home is not None and home.process != self._home:
            self._router.supervise(home.process, "reload_session", session_id)
        else:
            entry = self._session_entry(session_id)
            self._set_names(session_id, frozenset(store.names_of_session(session_id)))
            self._router.homes.set(session_id, entry.slot, session_id in self._live)
        # The rows are adopted as on one process: a status write kept from an outage is
        # dropped there, being older than this registration.
        return super()._registered(session_id, done)

    def _on_report_status(self, msg: m.ReportStatus) -> list[pykka.Future]:
        entry = self._sessions.get(msg.session_id)
        if entry is None or not entry.names:
            raise errors.SESSION_NOT_FOUND(session_id=msg.session_id)
        foreign = [name for name, _ in msg.updates if name not in entry.names]
        if foreign:
            raise errors.FORBIDDEN(why=f"provider session does not own {', '.join(foreign)}")
        return [self._llm(name).ask(m.SetStatus(msg.session_id, status), block=False)
                for name, status in msg.updates]

    def _gone(self, name: str) -> None:
        """A name owned by another process is retired there (it finds the row gone)."""
        if name in self._llms:
            super()._gone(name)
            return
        owner = self._router.owners.owner(name)
        if owner is not None:
            self._router.supervise(owner, "reload_llm", name)

    def _names_changed(self, session_id: str) -> None:
        """The session's home re-reads its names (as after a register)."""
        home = self._router.homes.live_home(session_id)
        if home is not None and home.process != self._home:
            self._router.supervise(home.process, "reload_session", session_id)
        elif session_id in self._sessions:
            self._set_names(session_id, frozenset(store.names_of_session(session_id)))

    # --- streams -------------------------------------------------------------------------

    def _on_stream_opened(self, msg: m.SessionStreamOpened) -> None:
        self._live.add(msg.session_id)
        entry = self._sessions.get(msg.session_id)
        if entry is None:
            return
        # Live in Redis first: an owner that re-reads the members now sees it live. Redis
        # down: the home is written again when it is back (_reassert_homes), and the names
        # without an owner here are taken by the next EnsureOwners tick.
        redis_up = True
        try:
            self._router.homes.set(msg.session_id, entry.slot, True)
        except _UNREACHABLE:
            redis_up = False
        for name in entry.names:
            ref = self._llms.get(name)
            if ref is None and redis_up:
                try:
                    if self._router.owners.owner(name, take=True) == self._home:
                        ref = self._own(name)
                except _UNREACHABLE:
                    redis_up = False
            tell(ref or self._llm(name), m.StreamOpened(msg.session_id))

    def _on_stream_lost(self, msg: m.SessionStreamLost) -> None:
        try:
            home = self._router.homes.get(msg.session_id)
        except Exception as exc:
            if not redis_client.unreachable(exc):
                raise
            home = None  # Redis is down: nobody took it over that we could know of
        if home is not None and home.process != self._home:
            self._live.discard(msg.session_id)  # taken over: the new home speaks for it
            return
        entry = self._sessions.get(msg.session_id)
        if entry is not None:
            # Redis down: the home is written again when it is back (_reassert_homes).
            with contextlib.suppress(*_UNREACHABLE):
                self._router.homes.set(msg.session_id, entry.slot, False)
        super()._on_stream_lost(msg)

    def _on_home_session(self, msg: m.HomeSession) -> str | None:
        session_id = msg.session_id
        if session_id in self._sessions:
            return None
        names = store.names_of_session(session_id)
        if not names:
            raise errors.SESSION_NOT_FOUND(session_id=session_id)
        old = self._router.homes.live_home(session_id)
        entry = self._session_entry(session_id)
        self._set_names(session_id, frozenset(names))
        self._router.homes.set(session_id, entry.slot, False)
        self._publish_directory()
        # The caller has the old home give the session up and takes its tasks, then has
        # the names' owners link to this home (ClusterSystem._home_session).
        return old.process if old is not None and old.process != self._home else None

    def _forget_session(self, session_id: str) -> None:
        ref = self._sessions[session_id].ref
        super()._forget_session(session_id)
        self._router.addresses.forget_local(ref)
        with contextlib.suppress(*_UNREACHABLE):  # Redis down: its field stays, harmless
            self._router.homes.forget(session_id, self._router.process)

    def _on_evict(self, msg: m.Evict) -> pykka.ActorRef | None:
        """Forget a session whose stream opened on another process; the caller ends it."""
        entry = self._sessions.pop(msg.session_id, None)
        if entry is None:
            return None
        self._slots.pop(entry.slot, None)
        self._live.discard(msg.session_id)
        self._router.addresses.forget_local(entry.ref)
        self._publish_directory()
        return entry.ref

    def _on_reload_session(self, msg: m.ReloadSession) -> None:
        if msg.session_id in self._sessions:
            names = frozenset(store.names_of_session(msg.session_id))
            self._set_names(msg.session_id, names)
            self._publish_directory()

    # --- names ---------------------------------------------------------------------------

    def _own(self, name: str) -> pykka.ActorRef | None:
        """Start the LlmActor of `name`, whose lease this process just took."""
        ref = self._llms.get(name)
        if ref is not None:
            return ref
        row = store.get(name)
        if row is None or row.kind == KIND_PUBLIC:
            self._router.leases.release(name)
            return None
        self._taking = True
        try:
            Supervisor._adopt_row(self, row, store.members_of([name])[name])
        finally:
            self._taking = False
        self._publish_directory()
        return self._llms.get(name)

    def _on_own_name(self, msg: m.OwnName) -> pykka.ActorRef | None:
        return self._own(msg.name)

    def _on_reload_llm(self, msg: m.ReloadLlm) -> None:
        if msg.name not in self._llms:
            return
        row = store.get(msg.name)
        if row is None:
            self._retire(msg.name)
        else:
            members = store.members_of([msg.name])[msg.name]
            Supervisor._adopt_row(self, row, members, msg.registered)
            self._tell_live_members(msg.name, members)
        self._publish_directory()

    def _tell_live_members(self, name: str, members: list[LlmMember]) -> None:
        """Members whose home says their stream is open are live for the owner too. An owner
        that took the name while Redis was empty (restarted) started it with no member
        live, and never heard their StreamOpened; an Adopt keeps a member's `live` as it
        was, so the owner is told after it (same mailbox, in order)."""
        ref = self._llms.get(name)
        if ref is None:
            return
        for info in self._member_infos(members):
            if info.live and info.session.ref is not None:
                tell(ref, m.StreamOpened(info.session.session_id))

    def _on_names_lost(self, msg: m.NamesLost) -> None:
        for name in msg.names:
            ref = self._llms.pop(name, None)
            self._members.pop(name, None)
            if ref is not None:
                self._router.addresses.forget_local(ref)
                tell(ref, m.Relinquish(msg.pass_on))  # its waiters: 503 hub_busy, or passed on
        self._publish_directory()

    def _on_ensure_owners(self, msg: m.EnsureOwners) -> None:
        """Every name of a stream open here has a live owner: this process takes those
        that have none (one Redis call for them all, every tick)."""
        if msg.reassert:
            self._reassert_homes()
        sessions_of: dict[str, list[str]] = {}
        for session_id in self._live:
            entry = self._sessions.get(session_id)
            for name in entry.names if entry is not None else ():
                if name not in self._llms:
                    sessions_of.setdefault(name, []).append(session_id)
        if not sessions_of:
            return
        for name, owner in self._router.owners.owners(sorted(sessions_of), take=True).items():
            if owner == self._home:
                ref = self._own(name)
                for session_id in sessions_of[name]:
                    tell(ref, m.StreamOpened(session_id))

    def _reassert_homes(self) -> None:
        """Redis came back empty: the sessions homed here are written again, and the owners
        of their names (whoever took the leases since, maybe before these homes were back)
        re-read their members, so they find the live streams here. Done for a few ticks
        (the router's RECOVER_TICKS): every process recovers at its own pace, and a request
        on the bus may be lost while a peer is not subscribed again yet."""
        for session_id, entry in list(self._sessions.items()):
            self._router.homes.set(session_id, entry.slot, session_id in self._live)
        for session_id in list(self._live):
            entry = self._sessions.get(session_id)
            for name in entry.names if entry is not None else ():
                owner = self._router.owners.owner(name)
                if owner is not None and owner != self._home:
                    self._router.supervise(owner, "reload_llm", name)
        # As an owner: the homes of the members may be back by now (that request from their
        # home, on an at-most-once bus, may have been lost).
        for name, sessions in list(self._members.items()):
            if name in self._llms and sessions:
                self._on_reload_llm(m.ReloadLlm(name))

    def _retire(self, name: str) -> None:
        ref = self._llms.get(name)
        super()._retire(name)
        if ref is not None:
            self._router.addresses.forget_local(ref)
            self._router.leases.release(name)
