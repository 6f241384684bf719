"""LlmActor: one per Llm. Owns the status machine, wake dedup and the wait queue.

Wake dedup is plain actor state: the mailbox serializes infers, so the first infer on a
hibernating Llm finds no wake in flight and starts one; every later infer finds `_wake` set
and joins `_waiters`. When the wake result arrives (a message, never a blocking wait) the
waiters go out in arrival order.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from tether import errors, metrics, upstream
from tether.actor import TetherActor, tell
from tether.actors import messages as m
from tether.actors.base import Parent, new_task_id
from tether.config import PublicLlm, Settings
from tether.errors import TetherError
from tether.runtime import Task, Timer, call_later, spawn
from tether.store import llms as store
from tether.store.models import ACTIVE, INACTIVE, KIND_PUBLIC

log = logging.getLogger("tether.llm")


class _Wake:
    __slots__ = ("task_id", "timer", "session")

    def __init__(self, task_id: str, timer: Timer, session: m.SessionLink) -> None:
        self.task_id = task_id
        self.timer = timer
        self.session = session


class LlmActor(TetherActor):
    use_daemon_thread = True  # thousands of them: see TetherActor

    def __init__(
        self, settings: Settings, state: m.LlmState, session: m.SessionLink | None,
        public: PublicLlm | None = None, supervisor: Parent | None = None,
        proxies: m.ProxiesInFlight | None = None,
    ) -> None:
        super().__init__()
        # Upstream calls (public Llm) report their end through `_home`, which a restarted
        # actor re-points at itself, inheriting its predecessor's calls still running.
        self._home = proxies.home if proxies is not None else Parent()
        self._home.ref = self.actor_ref
        self._settings = settings
        self._supervisor = supervisor if supervisor is not None else Parent()
        self._public = public
        self._upstream = (
            upstream.client_for(public, settings.infer_timeout_s) if public is not None else None
        )
        self._state = state
        self._session = session
        self._waiters: deque[m.Infer] = deque()
        self._wake: _Wake | None = None
        # task id -> its client's reply channel (None for a predecessor's, see
        # TasksInFlight): a client that leaves is found by its channel (Withdraw).
        self._in_flight: dict[str, m.ReplyChannel | None] = dict.fromkeys(
            proxies.task_ids if proxies is not None else ())
        self._adopted_at = time.monotonic()
        self._registered_status = state.status
        # Set when a stream loss made us inactive although the lost stream predates the
        # latest registration: if the session then opens a stream, the publisher was
        # reconnecting and the loss was its old connection, noticed late.
        self._loss_predates_registration = False

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        return {
            m.Infer: self._on_infer,
            m.Adopt: self._on_adopt,
            m.Relink: self._on_relink,
            m.RecordHeartbeat: self._on_heartbeat,
            m.SetStatus: self._on_set_status,
            m.StreamLost: self._on_stream_lost,
            m.StreamOpened: self._on_stream_opened,
            m.ExpireHeartbeat: self._on_expire_heartbeat,
            m.WakeSucceeded: self._on_wake_succeeded,
            m.WakeFailed: self._on_wake_failed,
            m.WakeTimedOut: self._on_wake_timed_out,
            m.TaskEnded: self._on_task_ended,
            m.TasksInFlight: self._on_tasks_in_flight,
            m.Withdraw: self._on_withdraw,
        }

    # --- infer ---------------------------------------------------------------------------

    def _on_infer(self, msg: m.Infer) -> None:
        state = self._state
        public = state.kind == KIND_PUBLIC
        if not public and (state.status == INACTIVE or self._session is None):
            msg.reply.put(m.Failed(errors.publisher_offline(state.name)))
            return
        if len(self._waiters) + len(self._in_flight) >= self._settings.max_queue_per_llm:
            msg.reply.put(
                m.Failed(
                    TetherError(
                        429,
                        "queue_full",
                        f"{state.name!r} already has {self._settings.max_queue_per_llm} "
                        "requests waiting; retry later",
                    )
                )
            )
            return
        if public:
            self._proxy(msg)
        elif state.status == ACTIVE:
            self._dispatch(msg)
        else:  # hibernating: join the wake in flight, or start the one wake
            self._waiters.append(msg)
            msg.reply.put(m.WakePending())
            if self._wake is None:
                self._start_wake()

    def _dispatch(self, msg: m.Infer, may_wait: bool = False) -> None:
        session = self._session
        assert session is not None
        task_id = new_task_id(session.slot)
        sent = tell(
            session.ref,
            m.SendInfer(
                task_id,
                self._state.name,
                msg.request,
                msg.streaming,
                msg.endpoint,
                msg.reply,
                self.actor_ref,
                may_wait,
            ),
        )
        if sent:
            self._in_flight[task_id] = msg.reply
        else:  # the session actor is down (its restarts gave up): nobody would answer
            msg.reply.put(m.Failed(errors.publisher_offline(self._state.name)))

    def _proxy(self, msg: m.Infer) -> None:
        """A public Llm: the upstream call runs beside the actor, which only counts it."""
        if self._public is None or self._upstream is None:
            msg.reply.put(m.Failed(TetherError(
                503, "publisher_offline", f"{self._state.name!r} has no upstream configured")))
            return
        task_id = f"p-{uuid.uuid4().hex}"
        self._in_flight[task_id] = msg.reply
        home, client, llm = self._home, self._upstream, self._public
        worker: list[Task] = []
        msg.reply.put(m.Dispatched(task_id, lambda _why: worker and worker[0].cancel()))

        def run() -> None:
            try:
                upstream.relay(
                    client, llm, msg.endpoint, msg.request, msg.streaming,
                    _ReplyAnswer(msg.reply), task_id)
            finally:
                tell(home.ref, m.TaskEnded(task_id))

        worker.append(spawn(run))

    def _on_task_ended(self, msg: m.TaskEnded) -> None:
        self._in_flight.pop(msg.task_id, None)

    def _on_tasks_in_flight(self, msg: m.TasksInFlight) -> None:
        for task_id in msg.task_ids:  # a crashed predecessor's, still running
            self._in_flight.setdefault(task_id, None)

    def _on_withdraw(self, msg: m.Withdraw) -> None:
        """The client left before its request was dispatched (as far as it knew)."""
        for waiter in self._waiters:
            if waiter.reply is msg.reply:
                self._waiters.remove(waiter)  # no task will ever go out for it
                return
        # It was dispatched meanwhile: the Dispatched it never read can no longer cancel it.
        for task_id, reply in self._in_flight.items():
            if reply is msg.reply and self._session is not None \
                    and not task_id.startswith("p-"):
                tell(self._session.ref, m.CancelTask(task_id, "client_gone"))
                return

    # --- wake ----------------------------------------------------------------------------

    def _start_wake(self) -> None:
        session = self._session
        assert session is not None
        task_id = new_task_id(session.slot)
        timer = call_later(
            self._settings.wake_timeout_s, tell, self.actor_ref, m.WakeTimedOut(task_id)
        )
        self._wake = _Wake(task_id, timer, session)
        metrics.wake_started(self._state.name, task_id)
        if not tell(session.ref, m.SendWake(task_id, self._state.name, self.actor_ref)):
            metrics.wake_ended(self._state.name, task_id, "failed")
            self._end_wake(task_id)
            self._fail_waiters(errors.publisher_offline(self._state.name))

    def _end_wake(self, task_id: str) -> _Wake | None:
        wake = self._wake
        if wake is None or wake.task_id != task_id:
            return None  # a stale answer for a wake that already ended
        wake.timer.cancel()
        self._wake = None
        return wake

    def _on_wake_succeeded(self, msg: m.WakeSucceeded) -> None:
        if self._end_wake(msg.task_id) is not None:
            metrics.wake_ended(self._state.name, msg.task_id, "succeeded")
            self._write_status(ACTIVE)
            self._release_waiters()

    def _on_wake_failed(self, msg: m.WakeFailed) -> None:
        if self._end_wake(msg.task_id) is not None:
            metrics.wake_ended(self._state.name, msg.task_id, "failed")
            self._fail_waiters(msg.error)  # the row stays hibernating: the next infer retries

    def _on_wake_timed_out(self, msg: m.WakeTimedOut) -> None:
        wake = self._end_wake(msg.task_id)
        if wake is None:
            return
        metrics.wake_ended(self._state.name, msg.task_id, "timed_out")
        tell(wake.session.ref, m.CancelTask(msg.task_id, "wake_timeout"))
        self._fail_waiters(
            TetherError(
                504,
                "wake_timeout",
                f"{self._state.name!r} did not wake within {self._settings.wake_timeout_s:g} s",
            )
        )

    def _wake_superseded(self) -> None:
        """The backend is up without the wake's answer: end the wake task at the session
        and the publisher too (a cancel), so no second wake can ever run beside it."""
        wake = self._wake
        assert wake is not None
        self._end_wake(wake.task_id)
        metrics.wake_ended(self._state.name, wake.task_id, "succeeded")
        tell(wake.session.ref, m.CancelTask(wake.task_id, "superseded"))
        self._release_waiters()

    def _release_waiters(self) -> None:
        while self._waiters:
            self._dispatch(self._waiters.popleft(), may_wait=True)

    def _fail_waiters(self, error: TetherError) -> None:
        while self._waiters:
            self._waiters.popleft().reply.put(m.Failed(error))

    def _abandon_wake(self, error: TetherError) -> None:
        if self._wake is not None:
            wake = self._wake
            self._end_wake(wake.task_id)
            metrics.wake_ended(self._state.name, wake.task_id, "abandoned")
            tell(wake.session.ref, m.CancelTask(wake.task_id, "abandoned"))
        self._fail_waiters(error)

    # --- lifecycle events ----------------------------------------------------------------

    def _on_adopt(self, msg: m.Adopt) -> None:
        moved = self._session is None or self._session.session_id != msg.session.session_id
        self._state = msg.state
        self._session = msg.session
        self._adopted_at = msg.adopted_at
        self._registered_status = msg.state.status
        self._loss_predates_registration = False
        if self._wake is not None and msg.state.status == ACTIVE:
            self._wake_superseded()  # re-registered as awake: that wake succeeded
        elif self._wake is not None and moved:
            # The wake went to a session that no longer owns us: ask the new one.
            old = self._wake
            self._end_wake(old.task_id)
            metrics.wake_ended(self._state.name, old.task_id, "abandoned")
            tell(old.session.ref, m.CancelTask(old.task_id, "owner_changed"))
            self._start_wake()

    def _on_relink(self, msg: m.Relink) -> None:
        if self._session is not None and self._session.session_id == msg.session.session_id:
            self._session = msg.session

    def _on_heartbeat(self, msg: m.RecordHeartbeat) -> bool:
        """The row's heartbeat is written here, by its owner, in turn with the sweep's
        staleness check and every status write (never from an HTTP greenlet)."""
        if self._state.session_id != msg.session_id:
            return False
        if self._state.status == INACTIVE:
            self._write_status(ACTIVE)  # stamps the heartbeat too
            return True
        return store.bump_heartbeat(self._state.name, msg.session_id)

    def _on_set_status(self, msg: m.SetStatus) -> bool:
        if self._state.session_id != msg.session_id:
            return False
        self._write_status(msg.status)
        if msg.status == ACTIVE and self._wake is not None:
            self._wake_superseded()  # "active" while waking counts as the wake
        return True

    def _on_stream_lost(self, msg: m.StreamLost) -> None:
        if self._state.session_id == msg.session_id and self._state.status == ACTIVE:
            self._write_status(INACTIVE)
            self._loss_predates_registration = msg.stream_opened_at < self._adopted_at

    def _on_stream_opened(self, msg: m.StreamOpened) -> None:
        if (self._state.session_id == msg.session_id and self._state.status == INACTIVE
                and self._loss_predates_registration):
            # A reconnect: registered again, its old stream's loss arrived late, and now the
            # new stream is here. The registration's status stands.
            self._loss_predates_registration = False
            self._write_status(self._registered_status)

    def _on_expire_heartbeat(self, msg: m.ExpireHeartbeat) -> None:
        state = self._state
        if state.status == INACTIVE:
            return
        if store.mark_inactive_if_stale(state.name, state.session_id, msg.cutoff):
            metrics.swept("inactive")
            self._set_state(INACTIVE)
            self._abandon_wake(errors.publisher_offline(state.name))

    def on_stop(self) -> None:
        self._abandon_wake(errors.shutting_down())
        metrics.llm_gone(self.actor_urn, self._state.name)

    def on_crash(self) -> None:
        if self._wake is not None:
            metrics.wake_ended(self._state.name, self._wake.task_id, "abandoned")
            wake, self._wake = self._wake, None
            wake.timer.cancel()
            # Nobody would take its answer: end the wake at the session and the publisher.
            tell(wake.session.ref, m.CancelTask(wake.task_id, "actor_restarted"))
        self._fail_waiters(errors.actor_restarted(f"the actor of {self._state.name!r}"))

    def report_crash(self) -> None:
        proxies = m.ProxiesInFlight(
            self._home, tuple(t for t in self._in_flight if t.startswith("p-")))
        tell(self._supervisor.ref,
             m.ChildFailed("llm", self._state.name, self.actor_ref, proxies))

    # --- state ---------------------------------------------------------------------------

    def _write_status(self, status: str) -> None:
        if status == self._state.status:
            return
        # Guarded by owner: a write racing a newer registration changes nothing.
        store.set_status(self._state.name, self._state.session_id, status)
        self._set_state(status)

    def _set_state(self, status: str) -> None:
        s = self._state
        self._state = m.LlmState(s.name, s.kind, s.session_id, status)

    # --- observability -------------------------------------------------------------------

    def on_start(self) -> None:
        self.after_message(None)

    def after_message(self, message: Any) -> None:
        s = self._state
        metrics.llm_seen(self.actor_urn, s.name, s.kind, s.status, s.session_id,
                         self._wake is not None, len(self._in_flight), len(self._waiters),
                         isinstance(message, (m.RecordHeartbeat, m.Adopt))
                         or (message is None and s.status != INACTIVE))


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
