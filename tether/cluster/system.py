"""ClusterSystem: the ActorSystem of one hub process among several (docs/protocol.md, Several
hub processes), as ClusterSupervisor is the Supervisor of one.

What differs from one process: an Llm name may be owned by another process (requests for it
go there: BusRouter.llm_ref), a session may be homed on another (its heartbeats, status
reports and task results are asked of its home; a stream opening here takes it over), the
in-flight counts of names owned elsewhere are read from the shared board, and this process
answers what the others ask of it (`handle_call`, from BusRouter). The composition root
(tether.http.app.build) starts this class when the settings have a bus_url.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pykka

from tether import errors
from tether.actors import member_rows
from tether.actors import messages as m
from tether.actors.directory import Directory, SessionEntry
from tether.actors.system import ActorSystem, ask, exit_worker
from tether.actors.task_ids import home_of
from tether.cluster.proxies import RemoteLlm
from tether.cluster.router import BusRouter
from tether.cluster.supervisor import ClusterSupervisor
from tether.common.actor import tell
from tether.common.runtime import spawn
from tether.config import Settings
from tether.store import llms as store
from tether.store.models import INACTIVE

log = logging.getLogger("tether.system")

EVICT_TIMEOUT_S = 2.0  # a session giving itself up to another process (a take-over)


class ClusterSystem(ActorSystem):
    def __init__(self, settings: Settings, on_fatal: Callable[[], None] = exit_worker) -> None:
        super().__init__(settings, on_fatal)
        assert settings.bus_url, "a ClusterSystem needs a bus_url"
        self._router = BusRouter(settings.bus_url, self)
        self._frame_ids.process = self._router.process  # task ids name their home
        # What other processes ask of this one (BusRouter.call and .cast), by name: none is
        # passed on again.
        self._calls: dict[str, Callable[..., Any]] = {
            "heartbeat": super().heartbeat,
            "set_status": self._set_status_here,
            "session_of_task": self._session_of_task,
            "submit_result": self._submit_here,
            "cancel": self._cancel_here,
            "evict": self._evict,
        }

    # --- lifecycle -----------------------------------------------------------------------

    def _start_parts(self, live_sessions: Callable[[], set[str]] | None = None) -> None:
        """Join the cluster first; the ticks (leases, peers' liveness) once the supervisor
        runs."""
        self._router.start()
        # Stopped, its names can be taken at once, not after a TTL.
        self._started.append(("router", self._router.stop))
        super()._start_parts(self._router.live_sessions)
        self._router.start_ticks()

    def _start_supervisor(self, previous: Directory | None) -> pykka.ActorRef:
        return ClusterSupervisor.start(*self._supervisor_args(previous), router=self._router)

    def _set_in_flight(self, name: str, counts: Mapping[str, int]) -> None:
        super()._set_in_flight(name, counts)
        self._router.board.counts_changed(name)  # the other processes show them too

    def _member_counts(self, names: list[str]) -> Mapping[str, Mapping[str, int]]:
        """Names owned by other processes: the counts their owners shared (docs/protocol.md:
        reads show the whole cluster)."""
        counts = dict(super()._member_counts(names))
        elsewhere = [name for name in names if self._directory.llm(name) is None]
        if not elsewhere:
            return counts
        try:
            shared = self._router.board.member_counts(elsewhere)
        except Exception:  # noqa: BLE001 - Redis down: rows read as they are, counts unknown
            log.warning("reading the in-flight counts of other processes failed", exc_info=True)
            shared = {}
        for name in elsewhere:
            counts[name] = shared.get(name, {})
        return counts

    # --- where names and sessions live ---------------------------------------------------

    def _llm_ref(self, name: str) -> Any:
        """Local, or a proxy to the owner found (taken here if it had none)."""
        return self._router.llm_ref(name, take=True)

    def _target_ref(self, name: str) -> Any:
        """Local, a proxy to its owner, or None when nobody owns it (no stream of its
        members is open anywhere: it cannot serve now). Never takes the name: an actor
        passing an alias's infer on must not wait for a supervisor."""
        ref = self._directory.llm(name)
        if ref is not None:
            return ref
        owner, _ = self._router.owners.recent(name)
        if owner is None or owner == self._router.process:
            return None  # owned here yet without an actor: it is being started
        return RemoteLlm(self._router, name, owner)

    def _home_of_session(self, session_id: str) -> str:
        """The live process, not this one, that holds the session."""
        home = self._router.homes.live_home(session_id)
        if home is None or home.process == self._router.process:
            raise errors.SESSION_NOT_FOUND(session_id=session_id)
        return home.process

    def heartbeat(self, session_id: str) -> int:
        if self._directory.session(session_id) is None:
            owned: int = self._router.call(self._home_of_session(session_id), "heartbeat",
                                           session_id)
            return owned
        return super().heartbeat(session_id)

    def set_status(self, session_id: str, updates: Sequence[tuple[str, str]]) -> None:
        if self._directory.session(session_id) is None:
            self._router.call(self._home_of_session(session_id), "set_status", session_id,
                              tuple(updates))
            return
        super().set_status(session_id, updates)

    def _home_session(self, session_id: str) -> SessionEntry | None:
        """Homed elsewhere before (or nowhere since a process died): this process becomes
        its home, and the old home gives it up with its tasks."""
        old_home = ask(self.supervisor, m.HomeSession(session_id))
        entry = self._directory.session(session_id)
        if old_home is not None and entry is not None:
            self._take_over(old_home, session_id, entry.slot, entry.ref)
        if entry is not None:  # once the old home let go: no task is sent there again
            self._router.relink(entry.names)
        return entry

    def _take_over(self, old_home: str, session_id: str, slot: int,
                   ref: pykka.ActorRef) -> None:
        """The session's old home (another process, alive) ends its stream there and hands
        over the tasks that produced nothing; they get ids of this home (results, cancels
        and liveness then find them here), their LlmActors count them under those ids, and
        the session sends them as new frames once its stream opens (docs/protocol.md, Several
        hub processes). If the old home does not answer, its tasks stay there and fail."""
        try:
            moving = self._router.call(old_home, "evict", session_id)
        except errors.TetherError as error:
            log.warning("session %s: its old home %s did not hand it over (%s); its tasks "
                        "there are lost", session_id, old_home, error.code)
            return
        if moving:
            log.info("session %s: %d task(s) taken over from process %s", session_id,
                     len(moving), old_home)
            moved = self._router.handover.renamed(moving, slot, self._router.process)
            tell(ref, m.AdoptTasks(moved))

    def _elsewhere(self, task_id: str) -> str | None:
        """The process holding the task, if another one (its id names it)."""
        home = home_of(task_id)
        return home if home is not None and home != self._router.process else None

    def submit_result(self, task_id: str, claimed_session: str | None, result: dict,
                      may_act: Callable[[str], bool] | None = None) -> None:
        home = self._elsewhere(task_id)
        if home is None:
            super().submit_result(task_id, claimed_session, result, may_act)
            return
        # The task is held by another process: it checks the task, we check the key.
        try:
            session_id = claimed_session or self._router.call(home, "session_of_task",
                                                              task_id)
            allowed = may_act(session_id) if may_act is not None else True
            self._router.call(home, "submit_result", task_id, claimed_session, result,
                              allowed)
        except errors.TetherError as error:
            if error.code == errors.HUB_BUSY.code and self._router.dead.gone(home):
                # Its home died, and the task with it (its client was answered): nobody
                # will ever take this result. 503 would have the publisher post it again
                # until the task's deadline, its slot held all along (issue 22).
                raise errors.TASK_NOT_FOUND(task_id=task_id) from None
            raise

    def drain(self, deadline_s: float = 0.0) -> None:
        """As one process's drain; first, its names go to live processes (a graceful stop
        moves names, it never takes them down)."""
        self._router.handover.names(self.supervisor)
        super().drain(deadline_s)

    def inject_drop(self, kind: str, count: int, heard: bool) -> bool:
        self._router.drop(kind, count, heard)
        return True

    def _withdraw_at(self, name: str, reply: m.ReplyChannel) -> None:
        """With the name owned elsewhere: at the owner, which finds it by its request id.
        Beside the caller, as a tell is: a relay stops its request before it answers the
        client, and with Redis away the owner's lookup and the send wait seconds each,
        which the client's answer must not (a 503 the bus already decided)."""
        if self._directory.llm(name) is not None:
            super()._withdraw_at(name, reply)
            return
        spawn(self._withdraw_elsewhere, name, reply)

    def _withdraw_elsewhere(self, name: str, reply: m.ReplyChannel) -> None:
        self._router.tell_llm(name, m.Withdraw(reply))
        self._router.pending.forget(reply)

    def cancel(self, dispatched: m.Dispatched, reason: str) -> None:
        """At the process named in the task's id, else here."""
        home = self._elsewhere(dispatched.task_id) if dispatched.cancel is None else None
        if home is None:
            super().cancel(dispatched, reason)
            return
        self._router.cast(home, "cancel", dispatched.task_id, reason)

    # --- what other processes ask of this one (BusRouter) ------------------------------

    def handle_call(self, fn: str, args: Sequence[Any]) -> Any:
        """Run a call another process routed here, never passing it on again."""
        handler = self._calls.get(fn)
        if handler is None:
            raise errors.INVALID_REQUEST(why=f"no bus call {fn!r}")
        return handler(*args)

    def _set_status_here(self, session_id: str, updates: Sequence[tuple[str, str]]) -> bool:
        super().set_status(session_id, updates)
        return True

    def _session_of_task(self, task_id: str) -> str:
        return self._entry_of_task(task_id).session_id

    def _submit_here(self, task_id: str, claimed_session: str | None, result: dict,
                     allowed: bool) -> bool:
        super().submit_result(task_id, claimed_session, result,
                              lambda _session: bool(allowed))
        return True

    def _cancel_here(self, task_id: str, reason: str) -> bool:
        self._cancel_task(task_id, reason)
        return True

    def _evict(self, session_id: str) -> tuple[m.SendInfer | m.SendWake, ...]:
        """The session's stream opened on another process: forget it here, end its stream,
        and answer the tasks that move there (see m.Evict)."""
        ref = ask(self.supervisor, m.Evict(session_id))
        if ref is None:
            return ()

        def forward(task: m.SendInfer | m.SendWake) -> None:
            # To the new home; with none to be found (Redis down), answered here, never
            # dropped (its client and its LlmActor hear of it).
            self._router.handover.undeliverable(task, session_id)

        try:
            # Well within the asker's deadline (BUS_ASK_S): tasks handed over to an asker
            # that gave up would be lost.
            return tuple(ref.ask(m.Evict(session_id, forward), timeout=EVICT_TIMEOUT_S))
        except (pykka.ActorDeadError, pykka.Timeout):
            return ()  # it stopped or is stuck: its tasks fail there

    def names_of_session(self, session_id: str) -> list[str]:
        return store.names_of_session(session_id)

    def home_died(self, session_id: str, names: Sequence[str]) -> None:
        """The session's home process died: its rows go inactive (this process noticed
        first; through the write-behind, so an outage that begins now keeps the write), and
        the owners of its names learn that its tasks are gone."""
        for name in names:
            member_rows.set_status(name, session_id, INACTIVE)
            self._router.tell_llm(name, m.StreamLost(session_id, float("-inf"), home_died=True))
