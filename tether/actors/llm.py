"""LlmActor: one per Llm name. The single owner of everything about serving that name
(docs/protocol.md, Pools): its members (records, not actors), their load and capacity, the
waiting queue, the one wake in flight, and the routing policy's prefix memory.

Late binding: a request waits here, in arrival order, until a member that is `active`, has a
live stream and a free slot takes it; the RoutingPolicy (tether/actors/routing.py) picks which.
Wake dedup is plain actor state: the mailbox serializes infers, so only the first request
that must wait on a hibernating name starts a wake; the next member is woken only if
requests still wait when that wake ends. Sessions report results, slot releases, retryable
errors and released tasks by `tell`; this actor never waits on them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, assert_never

from tether import errors, upstream
from tether.actors import messages as m
from tether.actors import routing
from tether.actors.task_ids import new_task_id
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import Task, Timer, call_later, spawn
from tether.config import PublicLlm, Settings
from tether.errors import TetherError
from tether.observability import metrics
from tether.store import llms as store
from tether.store.models import ACTIVE, INACTIVE, KIND_PUBLIC, derived_status

log = logging.getLogger("tether.llm")

# How long a restarted LlmActor waits for its members' sessions to report the tasks its
# predecessor left running (they answer at once; this covers a message lost on the bus).
INVENTORY_TIMEOUT_S = 5.0

InFlightBoard = Callable[[str, Mapping[str, int]], None]


class _Wake:
    __slots__ = ("task_id", "timer", "session_id", "deadline")

    def __init__(self, task_id: str, timer: Timer, session_id: str, deadline: float) -> None:
        self.task_id = task_id
        self.timer = timer
        self.session_id = session_id
        self.deadline = deadline  # when its timer fires (monotonic)


class _Member:
    """One publisher session serving this name."""

    __slots__ = ("link", "status", "max_concurrency", "live", "in_flight", "adopted_at",
                 "registered_status", "loss_predates_registration", "lost_at", "uncounted")

    def __init__(self, info: m.MemberInfo, adopted_at: float) -> None:
        self.link = info.session
        self.status = info.status
        self.max_concurrency = info.max_concurrency
        self.live = info.live
        self.in_flight: dict[str, None] = {}  # task ids, in dispatch order
        self.adopted_at = adopted_at
        self.registered_status = info.status
        # Set when a stream loss made us inactive although the lost stream predates the
        # latest registration: if the session then opens a stream, the publisher was
        # reconnecting and the loss was its old connection, noticed late.
        self.loss_predates_registration = False
        self.lost_at: float | None = None  # when its stream went, while it has none
        # After a restart: its session has not yet said which of its tasks still run, so
        # it counts as full until then (TasksInFlight).
        self.uncounted = False

    @property
    def session_id(self) -> str:
        return self.link.session_id

    def view(self) -> routing.MemberView:
        in_flight = len(self.in_flight)
        if self.uncounted and self.max_concurrency is not None:
            in_flight = max(in_flight, self.max_concurrency)
        return routing.MemberView(self.session_id, self.status, self.live, in_flight,
                                  self.max_concurrency)


class _Request:
    """A client request: waiting in the queue, or in flight as `task_id` on `member`."""

    __slots__ = ("infer", "arrived", "_affinity", "tried", "task_id", "member", "told_waking",
                 "why")

    def __init__(self, infer: m.Infer, arrived: float) -> None:
        self.infer = infer
        self.arrived = arrived
        self._affinity: routing.Affinity | None = None
        self.tried: set[str] = set()  # members that returned it as `retryable`
        self.task_id: str | None = None
        self.member: str | None = None
        self.told_waking = False
        self.why: str | None = None  # "failover" or "retry" when it came back to the queue

    @property
    def affinity(self) -> routing.Affinity:
        """Hashed only when a pool has a choice to make: a lone member needs no routing."""
        if self._affinity is None:
            self._affinity = routing.affinity_of(self.infer.request, self.infer.affinity)
        return self._affinity


class LlmActor(TetherActor):
    use_daemon_thread = True  # thousands of them: see TetherActor

    def __init__(
        self, settings: Settings, state: m.LlmState, members: tuple[m.MemberInfo, ...] | None,
        public: PublicLlm | None = None, supervisor: Parent | None = None,
        proxies: m.ProxiesInFlight | None = None, board: InFlightBoard | None = None,
        restarted: bool = False,
    ) -> None:
        super().__init__()
        # Upstream calls (public Llm) report their end through `_home`, which a restarted
        # actor re-points at itself, inheriting its predecessor's calls still running.
        self._home = proxies.home if proxies is not None else Parent()
        self._home.ref = self.actor_ref
        self._settings = settings
        self._supervisor = supervisor if supervisor is not None else Parent()
        self._board = board
        self._public = public
        self._upstream = (
            upstream.client_for(public, settings.infer_timeout_s) if public is not None else None
        )
        self._state = state
        now = time.monotonic()
        self._members: dict[str, _Member] = {i.session.session_id: _Member(i, now)
                                             for i in members or ()}
        self._policy = routing.RoutingPolicy(policy=settings.pool_routing)
        self._queue: deque[_Request] = deque()
        self._tasks: dict[str, _Request] = {}
        self._wake: _Wake | None = None
        self._wake_failed: set[str] = set()  # members whose wake failed while requests wait
        self._wake_error: TetherError | None = None
        self._queue_timer: Timer | None = None
        self._queue_timer_no = 0
        # A public Llm's upstream calls under way (a crashed predecessor's too).
        self._proxied: set[str] = set(proxies.task_ids if proxies is not None else ())
        self._member_gauges: set[str] = set()  # members shown in tether_member_in_flight
        # A restarted actor hears from each member's session which tasks its predecessor
        # left running there; a member takes no task until then (or until this timer).
        self._inventory_timer: Timer | None = None
        if restarted and self._members:
            for member in self._members.values():
                member.uncounted = True
            self._inventory_timer = call_later(INVENTORY_TIMEOUT_S, tell, self.actor_ref,
                                               m.InventoryTimedOut())

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
            case m.InventoryTimedOut():
                self._on_inventory_timed_out()
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
            case m.GraceEnded():
                self._on_grace_ended(message)
            case m.Relinquish():
                self._fail_waiters(errors.HUB_BUSY())
                self.stop()  # on_stop finds no waiter left to tell "shutting down"
            case _:
                assert_never(message)

    # --- infer ---------------------------------------------------------------------------

    def _on_infer(self, msg: m.Infer) -> None:
        name = self._state.name
        if self._state.kind == KIND_PUBLIC:
            if len(self._proxied) >= self._settings.max_queue_per_llm:
                msg.reply.put(m.Failed(self._queue_full()))
            else:
                self._proxy(msg)
            return
        if not any(x.status != INACTIVE and x.live for x in self._members.values()):
            msg.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=name)))
            return
        if len(self._queue) >= self._settings.max_queue_per_llm:
            msg.reply.put(m.Failed(self._queue_full()))
            return
        req = _Request(msg, time.monotonic())
        self._queue.append(req)
        self._pump()
        # Dispatched, WakePending or Failed acknowledge it too; a request that only waits
        # says so, or its sender on another process would take it for lost.
        if msg.ack and not req.told_waking and req in self._queue:
            msg.reply.put(m.Queued())

    def _queue_full(self) -> TetherError:
        return errors.QUEUE_FULL(why=f"{self._state.name!r} already has "
                                     f"{self._settings.max_queue_per_llm} requests waiting")

    def _views(self) -> list[routing.MemberView]:
        return [x.view() for x in self._members.values()]

    def _pump(self) -> None:
        """Hand waiting requests to members with a free slot, in arrival order; then wake a
        member if requests still wait, or answer them if nobody ever could serve them."""
        if self._queue:
            views = self._views()
            kept: deque[_Request] = deque()
            while self._queue:
                req = self._queue.popleft()
                # A lone member, or a policy without affinity, needs no prefix hashed.
                routed = len(views) > 1 and self._policy.uses_affinity
                affinity = req.affinity if routed else routing.NO_AFFINITY
                choice = self._policy.choose(views, affinity, frozenset(req.tried))
                if choice is None:
                    kept.append(req)
                    if not req.tried:
                        # Every later request has the same candidates: none has a slot.
                        kept.extend(self._queue)
                        self._queue.clear()
                    continue
                self._dispatch(req, self._members[choice.key], req.why or choice.reason)
                views = self._views()
            self._queue = kept
        if self._queue and self._wake is None:
            self._maybe_wake()
        if self._queue and self._wake is None:
            self._fail_hopeless()
        if self._wake is not None:
            for req in self._queue:  # streaming clients see `: waking` comments
                if not req.told_waking:
                    req.told_waking = True
                    req.infer.reply.put(m.WakePending())
        if not self._queue:
            self._wake_failed.clear()
            self._wake_error = None
        self._arm_queue_timer()

    def _dispatch(self, req: _Request, member: _Member, decision: str) -> None:
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
        req.task_id, req.member, req.why = task_id, member.session_id, None
        member.in_flight[task_id] = None
        metrics.routed(self._state.name, decision)
        self._tasks[task_id] = req
        if len(self._members) > 1 and self._policy.uses_affinity:
            self._policy.record(member.session_id, req.affinity)
        self._publish_load()

    def _fail_hopeless(self) -> None:
        """Waiting requests that no member could ever take (no active member with a live
        stream left to free a slot, or one whose stream may come back within
        publisher_grace_s; no member left to wake) get their answer now."""
        error = self._wake_error or errors.PUBLISHER_OFFLINE(name=self._state.name)
        now = time.monotonic()
        grace = self._settings.publisher_grace_s
        returning = [x for x in self._members.values() if x.status == ACTIVE and not x.live
                     and x.lost_at is not None and now - x.lost_at < grace]
        kept: deque[_Request] = deque()
        for req in self._queue:
            if any(x.status == ACTIVE and (x.live or x in returning)
                   and x.session_id not in req.tried for x in self._members.values()):
                kept.append(req)
            else:
                req.infer.reply.put(m.Failed(error))
        self._queue = kept
        if kept and returning:  # a wake result that overtook the reconnect, say
            lost = [x.lost_at for x in returning if x.lost_at is not None]  # all of them
            delay = min(lost) + grace - now
            call_later(delay, tell, self.actor_ref, m.GraceEnded())

    def _on_grace_ended(self, _msg: m.GraceEnded) -> None:
        self._pump()

    def _arm_queue_timer(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        if not self._queue:
            return
        oldest = min(req.arrived for req in self._queue)
        delay = max(oldest + self._settings.infer_timeout_s - time.monotonic(), 0.0)
        self._queue_timer_no += 1
        self._queue_timer = call_later(delay, tell, self.actor_ref,
                                       m.QueueTimedOut(self._queue_timer_no))

    def _on_withdraw(self, msg: m.Withdraw) -> None:
        """The client left before it saw its task start: drop it from the wait (it no
        longer counts toward max_queue_per_llm), or cancel the task if one went out."""
        for req in self._queue:
            if req.infer.reply == msg.reply:  # a remote request's proxy: by request id
                self._queue.remove(req)  # no task will ever go out for it
                self._pump()
                return
        # It was dispatched meanwhile (maybe moved since): cancel it where it is now.
        for task_id, req in self._tasks.items():
            member = self._members.get(req.member or "")
            if req.infer.reply == msg.reply and member is not None:
                tell(member.link.ref, m.CancelTask(task_id, "client_gone"))
                return

    def _on_queue_timed_out(self, msg: m.QueueTimedOut) -> None:
        if msg.generation != self._queue_timer_no:
            return
        self._queue_timer = None
        limit = self._settings.infer_timeout_s
        now = time.monotonic()
        kept: deque[_Request] = deque()
        for req in self._queue:
            if now - req.arrived >= limit:
                req.infer.reply.put(m.Failed(errors.INFER_TIMEOUT(
                    source=repr(self._state.name), seconds=limit)))
            else:
                kept.append(req)
        self._queue = kept
        self._pump()

    def _proxy(self, msg: m.Infer) -> None:
        """A public Llm: the upstream call runs beside the actor, which only counts it."""
        if self._public is None or self._upstream is None:
            msg.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=self._state.name)))
            return
        task_id = f"p-{uuid.uuid4().hex}"
        self._proxied.add(task_id)
        home, client, llm = self._home, self._upstream, self._public
        worker: list[Task] = []

        def cancel(_why: str) -> None:
            if worker:
                worker[0].cancel()

        msg.reply.put(m.Dispatched(task_id, cancel))

        def run() -> None:
            try:
                upstream.relay(
                    client, llm, msg.endpoint, msg.request, msg.streaming,
                    _ReplyAnswer(msg.reply), task_id)
            finally:
                tell(home.ref, m.TaskEnded(task_id))

        worker.append(spawn(run))

    def _on_task_ended(self, msg: m.TaskEnded) -> None:
        if self._proxied:
            self._proxied.discard(msg.task_id)
        req = self._tasks.pop(msg.task_id, None)
        if req is not None:
            self._free(req, msg.task_id)
        else:  # a crashed predecessor's task (TasksInFlight): its slot frees all the same
            for member in self._members.values():
                member.in_flight.pop(msg.task_id, None)
            self._publish_load()
        self._pump()

    def _on_tasks_in_flight(self, msg: m.TasksInFlight) -> None:
        """From a session, after a restart: a crashed predecessor's tasks still run there
        and hold their slots (no member goes above its maxConcurrency)."""
        member = self._members.get(msg.session_id)
        if member is not None:
            for task_id in msg.task_ids:
                member.in_flight.setdefault(task_id, None)
            member.uncounted = False
        if not any(x.uncounted for x in self._members.values()) \
                and self._inventory_timer is not None:
            self._inventory_timer.cancel()
            self._inventory_timer = None
        self._publish_load()
        self._pump()

    def _on_inventory_timed_out(self) -> None:
        self._inventory_timer = None
        for member in self._members.values():
            member.uncounted = False
        self._pump()

    def _free(self, req: _Request, task_id: str) -> None:
        member = self._members.get(req.member or "")
        if member is not None:
            member.in_flight.pop(task_id, None)
        req.task_id = req.member = None
        self._publish_load()

    def _on_task_returned(self, msg: m.TaskReturned) -> None:
        """A retryable error before any output: try a member not yet tried, else answer."""
        req = self._tasks.pop(msg.task_id, None)
        if req is None:
            return
        if req.member is not None:
            req.tried.add(req.member)
        self._free(req, msg.task_id)
        if any(x.status != INACTIVE and x.live and x.session_id not in req.tried
               for x in self._members.values()):
            self._wake_error = msg.error  # the last error, should nobody else answer
            req.why = "retry"
            self._queue.appendleft(req)
        else:
            req.infer.reply.put(m.Failed(msg.error))
        self._pump()

    def _on_tasks_released(self, msg: m.TasksReleased) -> None:
        """Failover: a lost member's untouched tasks go back to the head of the queue, in
        their order, and from there to members that can take them."""
        moved = []
        for task_id in msg.task_ids:
            req = self._tasks.pop(task_id, None)
            if req is not None:
                self._free(req, task_id)
                req.why = "failover"
                moved.append(req)
        self._queue.extendleft(reversed(moved))
        if moved:
            log.info("llm=%s failover of %d task(s) from session %s", self._state.name,
                     len(moved), msg.session_id)
        self._pump()

    def _on_task_moved(self, msg: m.TaskMoved) -> None:
        """Its session moved to another process with this task (a take-over), which goes on
        there under a new id: it keeps its slot; a wake keeps its deadline."""
        req = self._tasks.pop(msg.task_id, None)
        if req is not None:
            req.task_id = msg.new_task_id
            self._tasks[msg.new_task_id] = req
            member = self._members.get(req.member or "")
            if member is not None and msg.task_id in member.in_flight:
                del member.in_flight[msg.task_id]
                member.in_flight[msg.new_task_id] = None
            self._publish_load()
            return
        wake = self._wake
        if wake is not None and wake.task_id == msg.task_id:
            wake.timer.cancel()
            wake.task_id = msg.new_task_id
            wake.timer = call_later(max(wake.deadline - time.monotonic(), 0.0), tell,
                                    self.actor_ref, m.WakeTimedOut(msg.new_task_id))
            metrics.wake_renamed(msg.task_id, msg.new_task_id)

    def _publish_load(self) -> None:
        counts = {x.session_id: len(x.in_flight) for x in self._members.values()}
        if len(counts) > 1:  # PROTOCOL: a `member` label for a pool member's session only
            metrics.member_in_flight(self._state.name, counts)
            self._member_gauges.update(counts)
        elif self._member_gauges:
            for member in self._member_gauges:
                metrics.member_gone(self._state.name, member)
            self._member_gauges.clear()
        if self._board is not None:
            self._board(self._state.name, counts)

    # --- wake ----------------------------------------------------------------------------

    def _maybe_wake(self) -> None:
        key = routing.choose_wake(self._views(), self._wake_failed)
        if key is None:
            return
        member = self._members[key]
        task_id = new_task_id(member.link.slot, member.link.home)
        timer = call_later(
            self._settings.wake_timeout_s, tell, self.actor_ref, m.WakeTimedOut(task_id)
        )
        self._wake = _Wake(task_id, timer, key,
                           time.monotonic() + self._settings.wake_timeout_s)
        metrics.wake_started(self._state.name, task_id)
        if not tell(member.link.ref, m.SendWake(task_id, self._state.name, self.actor_ref)):
            self._end_wake(task_id)
            metrics.wake_ended(self._state.name, task_id, "failed")
            self._wake_failed.add(key)
            self._wake_error = errors.PUBLISHER_OFFLINE(name=self._state.name)

    def _end_wake(self, task_id: str) -> _Wake | None:
        wake = self._wake
        if wake is None or wake.task_id != task_id:
            return None  # a stale answer for a wake that already ended
        wake.timer.cancel()
        self._wake = None
        return wake

    def _on_wake_succeeded(self, msg: m.WakeSucceeded) -> None:
        wake = self._end_wake(msg.task_id)
        if wake is not None:
            metrics.wake_ended(self._state.name, msg.task_id, "succeeded")
            member = self._members.get(wake.session_id)
            if member is not None:
                self._write_status(member, ACTIVE)
            self._pump()

    def _on_wake_failed(self, msg: m.WakeFailed) -> None:
        wake = self._end_wake(msg.task_id)
        if wake is not None:  # that member stays hibernating: move on to the next
            metrics.wake_ended(self._state.name, msg.task_id, "failed")
            self._wake_did_not_work(wake, msg.error)

    def _on_wake_timed_out(self, msg: m.WakeTimedOut) -> None:
        wake = self._end_wake(msg.task_id)
        if wake is None:
            return
        metrics.wake_ended(self._state.name, msg.task_id, "timed_out")
        member = self._members.get(wake.session_id)
        if member is not None:
            tell(member.link.ref, m.CancelTask(msg.task_id, "wake_timeout"))
        self._wake_did_not_work(wake, errors.WAKE_TIMEOUT(
            name=self._state.name, seconds=self._settings.wake_timeout_s))

    def _wake_did_not_work(self, wake: _Wake, error: TetherError) -> None:
        self._wake_failed.add(wake.session_id)
        self._wake_error = error
        self._pump()

    def _wake_superseded(self) -> None:
        """The backend is up without the wake's answer: end the wake task at the session
        and the publisher too (a cancel), so no second wake can ever run beside it."""
        wake = self._wake
        assert wake is not None
        self._end_wake(wake.task_id)
        metrics.wake_ended(self._state.name, wake.task_id, "succeeded")
        member = self._members.get(wake.session_id)
        if member is not None:
            tell(member.link.ref, m.CancelTask(wake.task_id, "superseded"))

    def _cancel_wake(self, reason: str) -> None:
        if self._wake is not None:
            wake = self._wake
            self._end_wake(wake.task_id)
            metrics.wake_ended(self._state.name, wake.task_id, "abandoned")
            member = self._members.get(wake.session_id)
            if member is not None:
                tell(member.link.ref, m.CancelTask(wake.task_id, reason))

    def _fail_waiters(self, error: TetherError) -> None:
        while self._queue:
            self._queue.popleft().infer.reply.put(m.Failed(error))
        self._arm_queue_timer()

    # --- lifecycle events ----------------------------------------------------------------

    def _on_adopt(self, msg: m.Adopt) -> None:
        self._state = msg.state
        fresh: dict[str, _Member] = {}
        for info in msg.members:
            member = self._members.get(info.session.session_id)
            if member is None:
                member = _Member(info, msg.adopted_at)
            else:  # its own stream events reached us since it joined: keep its `live`
                member.link = info.session
                member.status = info.status
                member.max_concurrency = info.max_concurrency
            if info.session.session_id == msg.registered:
                member.adopted_at = msg.adopted_at
                member.registered_status = info.status
                member.loss_predates_registration = False
            fresh[info.session.session_id] = member
        for gone in set(self._members) - set(fresh):
            self._policy.forget(gone)
            metrics.member_gone(self._state.name, gone)
            self._member_gauges.discard(gone)
            self._wake_failed.discard(gone)
        self._members = fresh
        wake = self._wake
        if wake is not None:
            member = fresh.get(wake.session_id)
            if member is None:
                self._cancel_wake("owner_changed")  # its member left: ask the next one
            elif member.status == ACTIVE:
                self._wake_superseded()  # re-registered as awake: that wake succeeded
        self._publish_load()
        self._pump()

    def _on_relink(self, msg: m.Relink) -> None:
        member = self._members.get(msg.session.session_id)
        if member is not None:
            member.link = msg.session
            member.uncounted = False  # a restarted session has no task left to count

    def _on_heartbeat(self, msg: m.RecordHeartbeat) -> bool:
        """The member's heartbeat is written here, by the name's owner, in turn with the
        sweep's staleness check and every status write (never from an HTTP greenlet)."""
        member = self._members.get(msg.session_id)
        if member is None:
            return False
        if member.status == INACTIVE:
            self._write_status(member, ACTIVE)  # stamps the heartbeat too
            self._pump()
            return True
        return store.bump_heartbeat(self._state.name, msg.session_id)

    def _on_set_status(self, msg: m.SetStatus) -> bool:
        member = self._members.get(msg.session_id)
        if member is None:
            return False
        self._write_status(member, msg.status)
        if (msg.status == ACTIVE and self._wake is not None
                and self._wake.session_id == msg.session_id):
            self._wake_superseded()  # "active" while waking counts as the wake
        self._pump()
        return True

    def _on_stream_lost(self, msg: m.StreamLost) -> None:
        member = self._members.get(msg.session_id)
        if member is None:
            return
        member.live = False
        member.lost_at = member.lost_at or time.monotonic()
        if member.status == ACTIVE:
            self._write_status(member, INACTIVE)
            member.loss_predates_registration = msg.stream_opened_at < member.adopted_at
        if msg.home_died:  # its tasks died with that process: their slots are free
            for task_id in list(member.in_flight):
                self._tasks.pop(task_id, None)
            member.in_flight.clear()
            self._publish_load()
        self._pump()

    def _on_tasks_offered(self, msg: m.TasksOffered) -> None:
        """A member lost its stream and offers its tasks that produced nothing yet: with
        another member to go to (not inactive, stream open), they all move at once
        (docs/protocol.md, Pools: Failover); else they stay, as for a single publisher."""
        member = self._members.get(msg.session_id)
        if member is not None:
            member.live = False  # the offer outran the StreamLost the supervisor forwards
            member.lost_at = member.lost_at or time.monotonic()
        movable: tuple[str, ...] = ()
        if any(x is not member and x.status != INACTIVE and x.live
               for x in self._members.values()):
            movable = tuple(t for t in msg.task_ids if t in self._tasks)
        tell(msg.session, m.ReleaseTasks(self._state.name, movable, self.actor_ref))

    def _on_stream_opened(self, msg: m.StreamOpened) -> None:
        member = self._members.get(msg.session_id)
        if member is None:
            return
        member.live, member.lost_at = True, None
        if member.status == INACTIVE and member.loss_predates_registration:
            # A reconnect: registered again, its old stream's loss arrived late, and now the
            # new stream is here. The registration's status stands.
            member.loss_predates_registration = False
            self._write_status(member, member.registered_status)
        self._pump()  # a member whose stream opens takes the head of the queue

    def _on_expire_heartbeat(self, msg: m.ExpireHeartbeat) -> None:
        for member in list(self._members.values()):
            if member.status == INACTIVE:
                continue
            if store.mark_inactive_if_stale(self._state.name, member.session_id, msg.cutoff):
                metrics.swept("inactive")
                member.status = INACTIVE
                if self._wake is not None and self._wake.session_id == member.session_id:
                    self._cancel_wake("heartbeat_expired")
                    self._wake_failed.add(member.session_id)
        self._pump()

    def on_stop(self) -> None:
        self._cancel_wake("abandoned")
        self._fail_waiters(errors.SHUTTING_DOWN())
        metrics.llm_gone(self.actor_urn, self._state.name)
        for member in self._members:
            metrics.member_gone(self._state.name, member)

    def on_crash(self) -> None:
        if self._wake is not None:
            metrics.wake_ended(self._state.name, self._wake.task_id, "abandoned")
            wake, self._wake = self._wake, None
            wake.timer.cancel()
            # Nobody would take its answer: end the wake at the session and the publisher.
            member = self._members.get(wake.session_id)
            if member is not None:
                tell(member.link.ref, m.CancelTask(wake.task_id, "actor_restarted"))
        self._fail_waiters(errors.ACTOR_RESTARTED(
            actor=f"actor of {self._state.name!r}", why="failed and is being restarted"))

    def report_crash(self) -> None:
        proxies = m.ProxiesInFlight(self._home, tuple(self._proxied))
        tell(self._supervisor.ref,
             m.ChildFailed("llm", self._state.name, self.actor_ref, proxies))

    # --- state ---------------------------------------------------------------------------

    def _write_status(self, member: _Member, status: str) -> None:
        if status == member.status:
            return
        # Guarded by membership: a write racing a newer registration changes nothing.
        store.set_status(self._state.name, member.session_id, status)
        member.status = status

    # --- observability -------------------------------------------------------------------

    def on_start(self) -> None:
        self.after_message(None)

    def after_message(self, message: Any) -> None:
        s = self._state
        members = list(self._members.values())
        status = s.status if s.kind == KIND_PUBLIC else derived_status(
            x.status for x in members)
        in_flight = len(self._proxied) + sum(len(x.in_flight) for x in members)
        metrics.llm_seen(self.actor_urn, s.name, s.kind, status,
                         members[0].session_id if members else None, self._wake is not None,
                         in_flight, len(self._queue),
                         isinstance(message, (m.RecordHeartbeat, m.Adopt))
                         or (message is None and status != INACTIVE))


class _ReplyAnswer:
    """An upstream relay's answer (upstream.Answer), put on the client's reply channel as
    the same events a publisher's answer produces."""

    __slots__ = ("_reply",)

    def __init__(self, reply: m.ReplyChannel) -> None:
        self._reply = reply

    def completed(self, status: int, body: Any) -> None:
        self._reply.put(m.Completed(status, body))

    def chunk(self, data: str) -> None:
        self._reply.put(m.Chunks((data,)))

    def done(self) -> None:
        self._reply.put(m.StreamDone())

    def failed(self, error: TetherError) -> None:
        self._reply.put(m.Failed(error))
