"""LlmActor: one per virtual Llm name (a public one has its PublicLlmActor), the single owner
of everything about serving it (docs/protocol.md, Pools), in plain objects it drives: a Pool
(members, their load and capacity, requests in flight: pool.py), the waiting queue, a Wake
(the one wake in flight: wake.py), a RoutingPolicy (routing.py); aliases.py for aliases,
failover.py for a lost member's tasks.

Late binding: a request waits here, in arrival order, until a member that is `active`, has a
live stream and a free slot takes it; the policy picks which. Wake dedup is plain actor
state: the mailbox serializes infers, so only the first request that must wait on a
hibernating name starts a wake; the next member is woken only if requests still wait when
that wake ends. Sessions report results, slot releases, retryable errors and released tasks
by `tell`; this actor never waits on them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, assert_never

from tether import errors
from tether.actors import aliases, failover, member_rows, routing
from tether.actors import messages as m
from tether.actors.pool import InFlightBoard, Member, Pool, Request
from tether.actors.reconcile import Reconciliation
from tether.actors.task_ids import new_task_id
from tether.actors.waiting import Waiting
from tether.actors.wake import Flight, Wake
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import Timer, call_later
from tether.config import Settings
from tether.errors import TetherError
from tether.observability import metrics
from tether.store.models import ACTIVE, INACTIVE, derived_status

log = logging.getLogger("tether.llm")


class LlmActor(TetherActor):
    use_daemon_thread = True  # thousands of them: see TetherActor
    _farewell: TetherError | None = None  # why it ended: an orphaned Infer's answer too

    def __init__(
        self, settings: Settings, state: m.LlmState, members: tuple[m.MemberInfo, ...] | None,
        supervisor: Parent | None = None, board: InFlightBoard | None = None,
        restarted: bool = False, forward: aliases.Forward = aliases.nowhere,
    ) -> None:
        super().__init__()
        self._settings = settings
        self._supervisor = supervisor if supervisor is not None else Parent()
        self._state = state
        self._pool = Pool(state.name, members or (), time.monotonic(), restarted, board)
        self._policy = routing.RoutingPolicy(policy=settings.pool_routing)
        self._queue = Waiting(settings.infer_timeout_s, self._arm_queue_timer)
        self._wake = Wake(state.name, settings.wake_timeout_s, self._arm_wake_timer)
        self._forward = forward  # an alias's infer this name cannot serve now goes on there
        # The tasks its members' sessions hold: after a restart, and with a bus.
        self._counts = Reconciliation(state.name, self._pool, restarted, lambda delay: call_later(
            delay, tell, self.actor_ref, m.InventoryTimedOut()))

    def receive(self, message: m.LlmMessage) -> Any:
        match message:
            case m.Infer():
                self._on_infer(message)
            case m.Adopt():
                self._on_adopt(message)
            case m.Relink():
                self._on_relink(message)
            case m.RecordHeartbeat():
                return self._on_heartbeat(message)
            case m.SetStatus():
                return self._on_set_status(message)
            case m.StreamLost():
                self._on_stream_lost(message)
            case m.StreamOpened():
                self._on_stream_opened(message)
            case m.ExpireHeartbeat():
                self._on_expire_heartbeat(message)
            case m.WakeSucceeded():
                self._on_wake_succeeded(message)
            case m.WakeFailed():
                self._on_wake_failed(message)
            case m.WakeTimedOut():
                self._on_wake_timed_out(message)
            case m.TaskEnded():
                self._on_task_ended(message)
            case m.TasksInFlight():
                self._on_tasks_in_flight(message)
            case m.Reconcile():
                for member, asked in self._counts.to_ask():
                    tell(member.link.ref, m.CountTasks(self._state.name, self.actor_ref, asked))
            case m.InventoryTimedOut():
                self._counts.timed_out()
                self._pump()
            case m.TaskReturned():
                self._on_task_returned(message)
            case m.TasksOffered():
                self._on_tasks_offered(message)
            case m.TasksReleased():
                self._on_tasks_released(message)
            case m.TaskMoved():
                self._on_task_moved(message)
            case m.QueueTimedOut():
                self._on_queue_timed_out(message)
            case m.Withdraw():
                self._on_withdraw(message)
            case m.GraceEnded():  # a lost member's publisher_grace_s is over
                self._pump()
            case m.Relinquish():
                if message.pass_on is not None:
                    for req in self._queue.clear():
                        message.pass_on(req.infer)
                self._fail_waiters(errors.HUB_BUSY())
                self.stop()  # on_stop finds no waiter left to tell "shutting down"
            case m.Retire():  # gone (no member left)
                self._fail_waiters(errors.PUBLISHER_OFFLINE(name=self._state.name))
                self.stop()  # on_stop finds no waiter left to tell "shutting down"
            case _:
                assert_never(message)

    # --- infer ---------------------------------------------------------------------------

    def _on_infer(self, msg: m.Infer) -> None:
        if msg.alias is not None and not (msg.alias.wait or self._pool.awake()) and \
                aliases.pass_on(msg, self._state.name, self._maybe_wake(True), self._forward):
            return  # an alias's: this name's one wake starts (no waiter), it goes on meanwhile
        msg = aliases.taken(msg, self._state.name)  # an alias's becomes a direct request
        name = self._state.name
        if not self._pool.serving():
            msg.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=name)))
            return
        if len(self._queue) >= self._settings.max_queue_per_llm:
            msg.reply.put(m.Failed(errors.QUEUE_FULL(
                why=f"{name!r} already has {self._settings.max_queue_per_llm} requests "
                    "waiting")))
            return
        req = Request(msg, time.monotonic())
        self._queue.append(req)
        self._pump()
        # Dispatched, WakePending or Failed acknowledge it too; a request that only waits
        # says so, or its sender on another process would take it for lost.
        if msg.ack and not req.told_waking and req in self._queue:
            msg.reply.put(m.Queued())

    def _pump(self) -> None:
        """Hand waiting requests to members with a free slot, in arrival order; then wake a
        member if requests still wait, or answer them if nobody ever could serve them."""
        if self._queue:
            views = self._pool.views()

            def place(req: Request) -> bool:
                nonlocal views
                # A lone member, or a policy without affinity, needs no prefix hashed.
                routed = len(views) > 1 and self._policy.uses_affinity
                affinity = req.affinity if routed else routing.NO_AFFINITY
                choice = self._policy.choose(views, affinity, frozenset(req.tried))
                member = self._pool.get(choice.key) if choice is not None else None
                if choice is None or member is None:
                    return False
                self._dispatch(req, member, req.why or choice.reason)
                views = self._pool.views()
                return True

            self._queue.serve(place)
        if self._queue:
            self._maybe_wake()
        if self._queue and not self._wake.in_flight:
            self._fail_hopeless()
        if self._wake.in_flight:
            for req in self._queue:  # streaming clients see `: waking` comments
                if not req.told_waking:
                    req.told_waking = True
                    req.infer.reply.put(m.WakePending())
        if not self._queue:
            self._wake.round_over()
        self._queue.rearm()

    def _dispatch(self, req: Request, member: Member, decision: str) -> None:
        infer = req.infer
        task_id = new_task_id(member.link.slot, member.link.home)
        left = self._settings.infer_timeout_s - (time.monotonic() - req.arrived)
        sent = tell(
            member.link.ref,
            m.SendInfer(task_id, self._state.name, infer.request, infer.streaming,
                        infer.endpoint, infer.reply, self.actor_ref, timeout_s=max(left, 0.0)),
        )
        if not sent:  # the session actor is down (its restarts gave up): nobody would answer
            infer.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=self._state.name)))
            return
        self._pool.dispatched(req, member, task_id)
        metrics.routed(self._state.name, decision)
        if len(self._pool) > 1 and self._policy.uses_affinity:
            self._policy.record(member.session_id, req.affinity)

    def _fail_hopeless(self) -> None:
        """Waiting requests that no member could ever take (no active member with a live
        stream left to free a slot, or one whose stream may come back within
        publisher_grace_s; no member left to wake) get their answer now."""
        error = self._wake.waiters_error()
        now = time.monotonic()
        grace = self._settings.publisher_grace_s
        returning = self._pool.returning(now, grace)
        for req in self._queue.drop(lambda req: self._pool.may_serve(req, returning)):
            req.infer.reply.put(m.Failed(error))
        if self._queue and returning:  # a wake result that overtook the reconnect, say
            lost = [x.lost_at for x in returning if x.lost_at is not None]  # all of them
            delay = min(lost) + grace - now
            call_later(delay, tell, self.actor_ref, m.GraceEnded())

    def _arm_queue_timer(self, delay: float, generation: int) -> Timer:
        return call_later(delay, tell, self.actor_ref, m.QueueTimedOut(generation))

    def _on_withdraw(self, msg: m.Withdraw) -> None:
        """The client left before its task started: drop it from the wait, or cancel it."""
        if self._queue.withdraw(msg.reply):  # no task will ever go out for it
            self._pump()
            return
        # It was dispatched meanwhile (maybe moved since): cancel it where it is now.
        found = self._pool.dispatched_for(msg.reply)
        if found is not None:
            task_id, member = found
            self._pool.tasks[task_id].withdrawn = True  # never served again (reconciliation)
            tell(member.link.ref, m.CancelTask(task_id, "client_gone"))

    def _on_queue_timed_out(self, msg: m.QueueTimedOut) -> None:
        expired = self._queue.timed_out(msg.generation)
        if expired is None:
            return  # a newer timer replaced that one
        for req in expired:
            req.infer.reply.put(m.Failed(errors.INFER_TIMEOUT(
                source=repr(self._state.name), seconds=self._settings.infer_timeout_s)))
        self._pump()

    def _on_task_ended(self, msg: m.TaskEnded) -> None:
        self._pool.ended(msg.task_id)
        self._pump()

    def _on_tasks_in_flight(self, msg: m.TasksInFlight) -> None:
        """From a session: the tasks of this Llm it holds, after a restart or to a
        reconciliation (reconcile.py); they hold their slots (no member goes above its
        maxConcurrency), and lost ones are corrected."""
        opened, again = self._counts.answered(msg)
        if opened:
            self._on_stream_opened(m.StreamOpened(msg.session_id))
        self._queue.put_back(again)
        self._pump()

    def _on_task_returned(self, msg: m.TaskReturned) -> None:
        """A retryable error before any output: try a member not yet tried, else answer
        (a member whose home drains: failover.waits_for_draining_home)."""
        if failover.waits_for_draining_home(self._pool, self._queue, msg):
            self._pump()
            return
        req = self._pool.returned(msg.task_id)
        if req is None:  # a predecessor's task (a restart; a withdraw, then a register)
            self._pool.ended(msg.task_id)  # its slot frees; nobody else can answer it
            msg.reply.put(m.Failed(msg.error))
        elif self._pool.serving(req.tried):
            self._wake.note_error(msg.error)
            req.why = "retry"
            self._queue.put_back([req])
        else:
            req.infer.reply.put(m.Failed(msg.error))
        self._pump()

    def _on_tasks_released(self, msg: m.TasksReleased) -> None:
        """Failover: a lost member's untouched tasks go back to the head of the queue, in
        their order, and from there to members that can take them."""
        moved = failover.released(self._pool, msg.task_ids)
        self._queue.put_back(moved)
        if moved:
            log.info("llm=%s failover of %d task(s) from session %s", self._state.name,
                     len(moved), msg.session_id)
        self._pump()

    def _on_task_moved(self, msg: m.TaskMoved) -> None:
        """Its session moved to another process with this task (a take-over), which goes on
        there under a new id: it keeps its slot; a wake keeps its deadline."""
        if not self._pool.moved(msg.task_id, msg.new_task_id):
            self._wake.renamed(msg.task_id, msg.new_task_id)

    # --- wake ----------------------------------------------------------------------------

    def _maybe_wake(self, alias: bool = False) -> bool:  # True while a wake runs
        key = self._wake.next_member(self._pool.views(), alias)
        member = self._pool.get(key)
        if key is None or member is None:
            return self._wake.in_flight
        task_id = new_task_id(member.link.slot, member.link.home)
        self._wake.start(task_id, key)
        if not tell(member.link.ref, m.SendWake(task_id, self._state.name, self.actor_ref)):
            self._wake.failed(task_id, errors.PUBLISHER_OFFLINE(name=self._state.name))
        return self._wake.in_flight

    def _arm_wake_timer(self, delay: float, task_id: str) -> Timer:
        return call_later(delay, tell, self.actor_ref, m.WakeTimedOut(task_id))

    def _on_wake_succeeded(self, msg: m.WakeSucceeded) -> None:
        wake = self._wake.succeeded(msg.task_id)
        if wake is not None:
            member = self._pool.get(wake.session_id)
            if member is not None:
                self._write_status(member, ACTIVE)
            self._pump()

    def _on_wake_failed(self, msg: m.WakeFailed) -> None:
        if self._wake.failed(msg.task_id, msg.error) is not None:
            self._pump()  # that member stays hibernating: move on to the next

    def _on_wake_timed_out(self, msg: m.WakeTimedOut) -> None:
        wake = self._wake.timed_out(msg.task_id)
        if wake is not None:
            self._cancel_wake(wake, "wake_timeout")
            self._pump()

    def _cancel_wake(self, wake: Flight | None, reason: str) -> None:
        """A wake that ended without its answer ends at the session and the publisher too
        (a cancel): nobody waits for its answer, and no second wake can run beside it."""
        member = self._pool.get(wake.session_id) if wake is not None else None
        if wake is not None and member is not None:
            tell(member.link.ref, m.CancelTask(wake.task_id, reason))

    def _fail_waiters(self, error: TetherError) -> None:
        self._farewell = self._farewell or error  # the first: why this actor ends
        for req in self._queue.clear():
            req.infer.reply.put(m.Failed(error))
        self._queue.rearm()

    # --- lifecycle events ----------------------------------------------------------------

    def _on_adopt(self, msg: m.Adopt) -> None:
        self._state = msg.state
        wake = self._wake.flight
        waker = self._pool.get(wake.session_id) if wake is not None else None
        for gone in self._pool.adopt(msg.members, msg.adopted_at, msg.registered):
            self._policy.forget(gone)
            self._wake.forget(gone)
        if wake is not None and waker is not None:
            member = self._pool.get(wake.session_id)
            if member is None:  # its member left (withdrew): cancel it there, ask the next
                self._wake.abandon()
                tell(waker.link.ref, m.CancelTask(wake.task_id, "owner_changed"))
            elif member.status == ACTIVE:  # re-registered as awake: the wake worked
                self._cancel_wake(self._wake.superseded(wake.session_id), "superseded")
        self._pump()

    def _on_relink(self, msg: m.Relink) -> None:
        member = self._pool.get(msg.session.session_id)
        if member is not None:
            member.link = msg.session
            member.uncounted = False  # a restarted session has no task left to count

    def _on_heartbeat(self, msg: m.RecordHeartbeat) -> bool:
        """The member's heartbeat is decided here, by the name's owner, in turn with the
        sweep's staleness check and every status write (never from an HTTP greenlet)."""
        member = self._pool.get(msg.session_id)
        if member is None:
            return False
        if member.status == INACTIVE:
            self._write_status(member, ACTIVE)  # stamps the heartbeat too
            self._pump()
            return True
        return member_rows.beat(self._state.name, msg.session_id)

    def _on_set_status(self, msg: m.SetStatus) -> bool:
        member = self._pool.get(msg.session_id)
        if member is None:
            return False
        self._write_status(member, msg.status)
        if msg.status == ACTIVE:  # "active" while waking counts as the wake
            self._cancel_wake(self._wake.superseded(msg.session_id), "superseded")
        self._pump()
        return True

    def _on_stream_lost(self, msg: m.StreamLost) -> None:
        member = self._pool.get(msg.session_id)
        if member is None:
            return
        if member.stream_lost(msg.stream_opened_at, time.monotonic()):
            self._write_status(member, INACTIVE)
        if msg.home_died:  # its tasks died with that process: their slots are free
            self._pool.lost_with(member)
        self._pump()

    def _on_tasks_offered(self, msg: m.TasksOffered) -> None:
        """A member lost its stream and offers its tasks that produced nothing yet: with
        another member to go to (not inactive, stream open), they all move at once
        (docs/protocol.md, Pools: Failover); else they stay, as for a single publisher."""
        movable = failover.movable(self._pool, msg.session_id, msg.task_ids, time.monotonic())
        tell(msg.session, m.ReleaseTasks(self._state.name, movable, self.actor_ref))

    def _on_stream_opened(self, msg: m.StreamOpened) -> None:
        member = self._pool.get(msg.session_id)
        if member is None:
            return
        if member.stream_opened():
            self._write_status(member, member.registered_status)
        self._pump()  # a member whose stream opens takes the head of the queue

    def _on_expire_heartbeat(self, msg: m.ExpireHeartbeat) -> None:
        for member in list(self._pool):
            if member.status == INACTIVE:
                continue
            if member_rows.expire_if_stale(self._state.name, member.session_id, msg.cutoff):
                metrics.swept("inactive")
                member.status = INACTIVE
                self._cancel_wake(self._wake.expired(member.session_id), "heartbeat_expired")
        self._pump()

    def on_stop(self) -> None:
        self._cancel_wake(self._wake.abandon(), "abandoned")
        self._fail_waiters(errors.SHUTTING_DOWN())
        metrics.llm_gone(self.actor_urn, self._state.name)
        self._pool.closed()

    def on_crash(self) -> None:
        # Nobody would take its answer: end the wake at the session and the publisher.
        self._cancel_wake(self._wake.abandon(), "actor_restarted")
        self._fail_waiters(errors.ACTOR_RESTARTED(
            actor=f"actor of {self._state.name!r}", why="failed and is being restarted"))

    def report_crash(self) -> None:
        tell(self._supervisor.ref, m.ChildFailed("llm", self._state.name, self.actor_ref))

    def on_orphan(self, message: Any) -> None:
        if isinstance(message, m.Infer):  # still in the mailbox: answered as the waiters were
            message.reply.put(m.Failed(self._farewell or errors.SHUTTING_DOWN()))

    # --- state ---------------------------------------------------------------------------

    def _write_status(self, member: Member, status: str) -> None:
        if status != member.status:
            member_rows.set_status(self._state.name, member.session_id, status)  # never fails
            member.status = status

    # --- observability -------------------------------------------------------------------

    def on_start(self) -> None:
        self.after_message(None)

    def after_message(self, message: Any) -> None:
        s = self._state
        members = list(self._pool)
        status = derived_status(x.status for x in members)
        in_flight = sum(len(x.in_flight) for x in members)
        metrics.llm_seen(self.actor_urn, s.name, s.kind, status,
                         members[0].session_id if members else None, self._wake.in_flight,
                         in_flight, len(self._queue),
                         isinstance(message, (m.RecordHeartbeat, m.Adopt))
                         or (message is None and status != INACTIVE))
