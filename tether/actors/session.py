"""SessionActor: one per publisher session. Owns the SSE outbox, the open tasks and frames kept
for Last-Event-ID replay (OpenTasks: open_tasks.py), the grace timer after a drop, and what
it offered its LlmActors after one (Offers: offers.py)."""

from __future__ import annotations

import functools
import logging
import queue
import time
from collections.abc import Callable
from typing import Any, assert_never, cast

from tether import errors
from tether.actors import chunk_order
from tether.actors import messages as m
from tether.actors.greeting import greet
from tether.actors.offers import Offers
from tether.actors.open_tasks import OpenTask, OpenTasks, TaskBoard, outcome_label, wake_error
from tether.actors.outbox import Close, Stream
from tether.actors.reconcile import inventory
from tether.actors.task_ids import FrameIds
from tether.common import task_wire
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import Timer, call_later
from tether.config import Settings
from tether.errors import TetherError
from tether.observability import metrics

log = logging.getLogger("tether.session")

# An evicted session (its stream opened elsewhere) passes on what is sent to it this long:
# its LlmActors hear of the move by then.
FORWARD_S = 5.0


class SessionActor(TetherActor):
    use_daemon_thread = True  # thousands of them: see TetherActor

    def __init__(self, settings: Settings, session_id: str, supervisor: Parent | None,
                 frame_ids: FrameIds | None = None, board: TaskBoard | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._session_id = session_id
        self._supervisor = supervisor if supervisor is not None else Parent()
        self._stream = Stream(session_id)
        self._tasks = OpenTasks(frame_ids if frame_ids is not None else FrameIds(), session_id,
                                board)
        self._grace: Timer | None = None
        self._offers = Offers()  # failover: tasks offered to their LlmActors after a loss
        self._draining = False
        self._drained: queue.Queue | None = None  # told once the drain is over
        self._forward: Callable[[Any], None] | None = None  # evicted: tasks go there
        self._opening: m.OpenStream | None = None  # its `hello` waits for StreamAnnounced

    def receive(self, message: m.SessionMessage) -> Any:
        match message:
            case m.OpenStream():
                self._on_open_stream(message)
            case m.StreamAnnounced():
                self._on_stream_announced(message)
            case m.StreamClosed():
                self._on_stream_closed(message)
            case m.GraceExpired():
                self._on_grace_expired(message)
            case m.SendInfer():
                self._on_send_infer(message)
            case m.SendWake():
                self._on_send_wake(message)
            case m.ReleaseTasks():
                self._on_release_tasks(message)
            case m.SubmitResult():
                self._on_submit_result(message)
            case m.CancelTask():
                self._on_cancel(message)
            case m.TaskTimedOut():
                self._on_timed_out(message)
            case m.Drain():
                self._on_drain(message)
            case m.DrainExpired():
                self._on_drain_expired(message)
            case m.LlmRestarted():
                self._on_llm_restarted(message)
            case m.CountTasks():
                self._on_count_tasks(message)
            case m.Evict():
                return self._on_evict(message)
            case m.AdoptTasks():
                self._on_adopt_tasks(message)
            case _:
                assert_never(message)

    # --- the stream ----------------------------------------------------------------------

    def _on_open_stream(self, msg: m.OpenStream) -> None:
        self._stream.open(msg.outbox, msg.token, msg.opened_at)  # replaces an older one
        self._opening = msg
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        # `hello` waits for the supervisor to tell the LlmActors first (StreamAnnounced).
        tell(self._supervisor.ref, m.SessionStreamOpened(self._session_id, msg.token,
                                                         self.actor_ref))

    def _on_stream_announced(self, msg: m.StreamAnnounced) -> None:
        if not self._stream.announce(msg.token) or self._opening is None:
            return  # it ended or was replaced meanwhile
        opening, self._opening = self._opening, None  # the current stream's (its token's)
        # A publisher holding none of the tasks gets those that produced nothing again.
        for task in greet(opening, self._session_id, self._settings.heartbeat_interval_s,
                          self._tasks):
            if task.chunks_seen:
                self._finish(task, m.Failed(errors.PUBLISHER_DISCONNECTED(name=task.llm_name)))
            else:
                self._send(task)

    def _on_stream_closed(self, msg: m.StreamClosed) -> None:
        if not self._stream.is_current(msg.token):
            return  # an old stream that was already replaced
        self._stream.close()
        tell(self._supervisor.ref, m.SessionStreamLost(self._session_id,
                                                       self._stream.opened_at))
        if not self._tasks:
            return
        self._offers.offer(self._tasks, self._session_id, self.actor_ref)
        if self._settings.publisher_grace_s <= 0:
            # Only what cannot move fails now; offered tasks wait for their LlmActor's word.
            offered = self._offers.pending()
            for task in self._tasks.all():
                if task.task_id not in offered:
                    self._finish(task, m.Failed(errors.PUBLISHER_DISCONNECTED(name=task.llm_name)))
        else:
            self._start_grace()

    def _start_grace(self) -> None:
        self._grace = call_later(self._settings.publisher_grace_s, tell, self.actor_ref,
                                 m.GraceExpired(self._stream.token))

    def _on_grace_expired(self, msg: m.GraceExpired) -> None:
        if msg.token == self._stream.token and not self._stream.is_open:
            self._grace = None
            for task in self._tasks.all():
                self._tasks.cancel_later(task)
            self._fail_all(lambda name: errors.PUBLISHER_DISCONNECTED(name=name))

    def _send(self, task: OpenTask) -> None:
        self._stream.put(self._tasks.send(task))
        # else: held for the stream, sent after `hello` when it comes back (see _hold)

    # --- tasks ---------------------------------------------------------------------------

    def _refuse(self, name: str) -> TetherError:
        if self._draining:
            return errors.SHUTTING_DOWN()
        if self._tasks.full:
            return errors.QUEUE_FULL(why=f"the publisher of {name!r} has too many open tasks")
        return errors.PUBLISHER_OFFLINE(name=name)

    def _closed(self) -> bool:
        """A stream about to say `hello` is up: what is sent now goes out after it."""
        return self._stream.is_down or self._draining or self._tasks.full

    def _hold(self, msg: m.SendInfer) -> bool:
        """A task sent while the stream is down (a loss its LlmActor has not heard of) waits
        for it like those already sent, and is offered like them: up to publisher_grace_s."""
        if not (self._stream.is_down and not self._draining
                and not self._tasks.full and self._settings.publisher_grace_s > 0):
            return False
        if self._grace is None:
            self._start_grace()
        return True

    def _on_send_infer(self, msg: m.SendInfer) -> None:
        if self._forward is not None:
            self._forward(msg)
            return
        closed = self._closed()
        if closed and not self._hold(msg):
            self._tasks.answered(msg.task_id)
            error = self._refuse(msg.llm_name)
            # Nothing ran: the LlmActor tries another member (its pool's, or the publisher's
            # next stream when draining) and answers `error` only when none is left.
            if not tell(msg.llm, m.TaskReturned(msg.task_id, error, msg.reply)):
                msg.reply.put(m.Failed(error))
                tell(msg.llm, m.TaskEnded(msg.task_id))
            return
        self._send(self._infer_task(msg))
        if closed:  # held (_hold), and offered like the tasks the loss found (pools)
            self._offers.offer(self._tasks, self._session_id, self.actor_ref)

    def _infer_task(self, msg: m.SendInfer) -> OpenTask:
        """The task of `msg`, its timer armed and its client told it is dispatched."""
        task = OpenTask(task_wire.infer_task(msg.task_id, msg.llm_name, msg.request,
                                             msg.streaming, msg.endpoint), msg.llm, msg.reply)
        self._arm(task, msg.timeout_s if msg.timeout_s is not None
                  else self._settings.infer_timeout_s)
        msg.reply.put(m.Dispatched(msg.task_id))
        return task

    def _on_send_wake(self, msg: m.SendWake) -> None:
        if self._forward is not None:
            self._forward(msg)
            return
        if self._closed():
            tell(msg.llm, m.WakeFailed(msg.task_id, self._refuse(msg.llm_name)))
            return
        # The LlmActor owns the wake's timer; the session only relays.
        self._send(OpenTask(task_wire.wake_task(msg.task_id, msg.llm_name), msg.llm))

    def _on_release_tasks(self, msg: m.ReleaseTasks) -> None:
        """Tasks that still produced nothing leave this session and its replay at once (a
        late result for them gets 404); the rest of the offer stays."""
        released, stay = self._offers.answered(self._tasks, msg.llm_name, msg.task_ids)
        if released:
            tell(msg.llm, m.TasksReleased(self._session_id,
                                          tuple(t.task_id for t in released)))
        if self._settings.publisher_grace_s <= 0 and self._stream.is_down:
            for task_id in stay:  # could not move: no grace to wait
                left = self._tasks.get(task_id)
                if left is not None:
                    self._finish(left, m.Failed(errors.PUBLISHER_DISCONNECTED(name=left.llm_name)))
        if self._draining and not self._tasks:
            self._stream.close(retry_ms=1000)

    def _arm(self, task: OpenTask, delay: float) -> None:
        if task.timer is not None:
            task.timer.cancel()
        task.deadline = time.monotonic() + delay
        task.deadline_no += 1
        task.timer = call_later(
            delay, tell, self.actor_ref, m.TaskTimedOut(task.task_id, task.deadline_no)
        )

    def _on_submit_result(self, msg: m.SubmitResult) -> None:
        """Told: the route checked the task, its owner and its kind on the TaskBoard. One for
        a task that ended since (a timeout, a cancel) is late: dropped, as always."""
        task = self._tasks.get(msg.task_id)
        if task is None:
            return
        # Checked against the result schema at the door (tether.http.schemas).
        result = cast(task_wire.Result, msg.result)
        if "chunk" in result or "chunks" in result:
            self._on_chunks(task, result)
        elif "error" in result:
            error = result["error"]
            status = int(error.get("status") or 502)
            failure = errors.from_publisher(status, error.get("code"), error.get("message"))
            if error.get("retryable") and task.kind == "infer" and not task.chunks_seen:
                self._return(task, failure)  # nothing ran: the LlmActor may try another
            else:
                self._finish(task, m.Failed(failure))
        else:
            self._finish(task, m.Completed(int(result["status"]), result.get("body")))

    def _on_chunks(self, task: OpenTask, result: task_wire.Result) -> None:
        if not task.streaming or task.reply is None:
            return  # refused 409 at the door (a task's kind never changes)
        try:
            data, done = chunk_order.take(task, result)  # each chunk once (its `index`)
        except chunk_order.Hole as hole:
            return self._finish(task, m.Failed(errors.PUBLISHER_ERROR.at(502, why=str(hole))))
        if data:
            task.reply.put(m.Chunks(data))
        if done:
            self._finish(task, m.StreamDone())
        elif data:
            self._arm(task, self._settings.stream_idle_timeout_s)

    def _finish(self, task: OpenTask, outcome: Any) -> None:
        """The one exit of every task: answer its waiter exactly once, forget it."""
        self._tasks.remove(task)
        if self._draining and not self._tasks:
            self._drain_over()
        if task.kind == "wake":
            if isinstance(outcome, m.Completed) and 200 <= outcome.status < 300:
                tell(task.llm, m.WakeSucceeded(task.task_id))
            else:
                tell(task.llm, m.WakeFailed(task.task_id, wake_error(task, outcome)))
            return
        tell(task.llm, m.TaskEnded(task.task_id))
        self._tasks.answered(task.task_id)
        if task.reply is not None and outcome is not None:
            task.reply.put(outcome)
        if not log.isEnabledFor(logging.INFO):  # its fields cost more than the check
            return
        log.info(
            "task %s llm=%s endpoint=%s outcome=%s duration_ms=%d",
            task.task_id, task.llm_name, task.endpoint, outcome_label(outcome),
            (time.monotonic() - task.started) * 1000,
            extra=metrics.task_fields(task.task_id, task.llm_name, self._session_id,
                                      task.endpoint, outcome_label(outcome), task.started),
        )

    def _return(self, task: OpenTask, error: TetherError) -> None:
        """A task that never ran goes back to its LlmActor, which answers its client."""
        self._tasks.remove(task)
        if self._draining and not self._tasks:
            self._stream.close(retry_ms=1000)
        assert task.reply is not None  # an infer's (only those are returned)
        if not tell(task.llm, m.TaskReturned(task.task_id, error, task.reply)):
            task.reply.put(m.Failed(error))  # its Llm is gone (withdrawn): nobody may retry

    def _on_cancel(self, msg: m.CancelTask) -> None:
        task = self._tasks.get(msg.task_id)
        if task is None:
            return
        metrics.task_cancelled(task.llm_name, msg.reason, task.reply)
        self._tasks.closing(task)  # a result posted once the cancel went out is 404
        if self._stream.is_open:
            self._stream.put(self._tasks.cancel_frame(msg.task_id))
        else:
            self._tasks.cancel_later(task)
        if task.kind == "wake":
            # The LlmActor asked for this cancel and already answered its waiters.
            self._tasks.remove(task)
            return
        self._finish(task, None)  # the client is gone or was already answered

    def _on_evict(self, msg: m.Evict) -> tuple[m.SendInfer | m.SendWake, ...]:
        """Its stream opened on another process (a take-over), where the publisher holds none
        of the tasks here: those that produced nothing move to the new home, which sends them
        again (answered here, in frame order); the others fail. No stream loss is told."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        moving = self._tasks.hand_over(time.monotonic())
        self._fail_all(lambda name: errors.PUBLISHER_DISCONNECTED(name=name))
        self._stream.close()
        if msg.forward is None:
            self.stop()
        else:
            self._forward = msg.forward
            metrics.session_gone(self.actor_urn, self._session_id)  # it lives elsewhere now
            call_later(FORWARD_S, functools.partial(self.actor_ref.stop, block=False))
        return moving

    def _on_adopt_tasks(self, msg: m.AdoptTasks) -> None:
        """Tasks from the old home, under ids of this one: sent at once if the stream is
        open, else held and sent as new frames when it opens (a Last-Event-ID from another
        process replays nothing)."""
        for sent in msg.tasks:
            if self._draining or self._tasks.full:
                error = self._refuse(sent.llm_name)
                if isinstance(sent, m.SendWake):
                    tell(sent.llm, m.WakeFailed(sent.task_id, error))
                else:
                    sent.reply.put(m.Failed(error))
                    tell(sent.llm, m.TaskEnded(sent.task_id))
                    self._tasks.answered(sent.task_id)
                continue
            task = (OpenTask(task_wire.wake_task(sent.task_id, sent.llm_name), sent.llm)
                    if isinstance(sent, m.SendWake) else self._infer_task(sent))
            if self._stream.is_open:
                self._send(task)
            else:
                self._tasks.hold(task)

    def _on_llm_restarted(self, msg: m.LlmRestarted) -> None:
        mine = [t for t in self._tasks.all() if t.llm_name == msg.name and t.kind == "infer"]
        for task in mine:
            task.llm = msg.ref
        # Always answered, even with none: the new actor holds this member's free slots
        # until it knows how many of them these tasks still take.
        tell(msg.ref, m.TasksInFlight(self._session_id, tuple(t.task_id for t in mine)))

    def _on_count_tasks(self, msg: m.CountTasks) -> None:
        tell(msg.ref, inventory(self._session_id, self._tasks, self._stream.is_open, msg))

    def _on_timed_out(self, msg: m.TaskTimedOut) -> None:
        task = self._tasks.get(msg.task_id)
        if task is None or task.deadline_no != msg.deadline_no:
            return
        if task.chunks_seen:
            error = errors.STREAM_IDLE_TIMEOUT(
                name=task.llm_name, seconds=self._settings.stream_idle_timeout_s)
        else:
            error = errors.INFER_TIMEOUT(
                source=repr(task.llm_name), seconds=self._settings.infer_timeout_s)
        assert task.reply is not None
        metrics.task_timed_out(task.llm_name, error.code)
        self._tasks.closing(task)  # its client, once answered, finds its result 404
        task.reply.put(m.Failed(error))
        self._on_cancel(m.CancelTask(task.task_id, error.code))

    def _fail_all(self, make_error: Callable[[str], TetherError]) -> None:
        for task in self._tasks.all():
            self._finish(task, m.Failed(make_error(task.llm_name)))

    def _on_drain(self, msg: m.Drain) -> None:
        self._draining = True
        self._drained = msg.drained
        if not self._tasks or msg.deadline_s <= 0:
            self._on_drain_expired(m.DrainExpired())
        else:
            call_later(msg.deadline_s, tell, self.actor_ref, m.DrainExpired())

    def _on_drain_expired(self, _msg: m.DrainExpired) -> None:
        self._fail_all(lambda _name: errors.SHUTTING_DOWN())
        self._drain_over()

    def _drain_over(self) -> None:
        """Every task ended (or was answered 503): the publisher reconnects after a restart."""
        self._stream.close(retry_ms=1000)
        if self._drained is not None:
            self._drained.put(self._session_id)
            self._drained = None

    def on_stop(self) -> None:
        self._on_drain(m.Drain())
        metrics.session_gone(self.actor_urn, self._session_id)

    def on_crash(self) -> None:
        self._stream.close()  # the publisher reconnects, to the restarted actor
        if self._grace is not None:
            self._grace.cancel()
        actor = f"session actor of {self._session_id!r}"
        self._fail_all(lambda _name: errors.ACTOR_RESTARTED(
            actor=actor, why="failed and is being restarted"))

    def report_crash(self) -> None:
        tell(self._supervisor.ref, m.ChildFailed("session", self._session_id, self.actor_ref))

    def on_orphan(self, message: Any) -> None:
        """What a crash or a stop left here: a task's client is answered and its Llm frees
        the slot; a wake fails (the Llm moves on); a drain counts this session as drained."""
        actor = f"session actor of {self._session_id!r}"
        error = errors.ACTOR_RESTARTED(actor=actor, why="failed and is being restarted"
                                       if self.crashed else "has stopped")
        match message:
            case m.SendInfer():
                message.reply.put(m.Failed(error))
                tell(message.llm, m.TaskEnded(message.task_id))
            case m.SendWake():
                tell(message.llm, m.WakeFailed(message.task_id, error))
            case m.Drain() if message.drained is not None:
                message.drained.put(self._session_id)
            case m.OpenStream():  # ended: its publisher opens one at the restarted actor
                message.outbox.put(Close())
            case _:
                pass

    # --- observability -------------------------------------------------------------------

    def on_start(self) -> None:
        self.after_message(None)

    def after_message(self, message: Any) -> None:
        if self._forward is None:
            metrics.session_seen(self.actor_urn, self._session_id, self._stream.is_open,
                                 len(self._tasks))
