"""A session's open tasks, each with the frame that sent it last, kept for Last-Event-ID
replay (docs/protocol.md, `GET /api/v1/llms/_provider-stream`): a plain class the
SessionActor holds. Frames carry the task stream's shapes (tether.common.task_wire); their
ids come from the process's one counter (FrameIds), so a restarted session actor never
reuses an id a publisher saw.

Each OpenTasks also keeps its tasks on the process's TaskBoard, which the result route reads
to answer a result POST (404, 403, 409) without asking the session actor: the result is then
told, and the route waits on nobody.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import pykka

from tether import errors
from tether.actors import messages as m
from tether.actors.task_ids import FrameIds
from tether.common import sse, task_wire
from tether.common.runtime import Timer
from tether.errors import TetherError

# Frames of open tasks kept for replay; a session with more open tasks than this is already
# far past any publisher's concurrency.
MAX_REPLAY = 1024
# Answered infers remembered for reconciliations: far more than a session ends in one
# reconcile_interval_s.
ANSWERED_KEPT = 4096

Payload = task_wire.InferTask | task_wire.WakeTask


# Cancels kept for a stream that is down, at most (the oldest go first past this many).
MAX_UNSENT_CANCELS = 1024


class OpenTask:
    """An infer or a wake sent to the publisher (or held for its stream), not ended yet."""

    __slots__ = (
        "payload", "task_id", "kind", "llm_name", "llm", "reply", "streaming", "endpoint",
        "frame_id", "frame", "chunks_seen", "chunks_applied", "timer", "deadline_no",
        "started", "deadline",
    )

    def __init__(self, payload: Payload, llm: pykka.ActorRef,
                 reply: m.ReplyChannel | None = None) -> None:
        self.payload = payload
        self.task_id = payload["taskId"]
        self.kind = payload["kind"]
        self.llm_name = payload["llmName"]
        self.llm = llm
        self.reply = reply  # None for a wake: its LlmActor hears how it ended
        if payload["kind"] == "infer":
            self.streaming = payload["streaming"]
            self.endpoint = task_wire.endpoint_of(payload)
        else:
            self.streaming, self.endpoint = False, ""
        self.frame_id = 0
        self.frame = ""
        self.chunks_seen = False
        self.chunks_applied = 0  # counted for the chunks' `index` (chunk_order.py)
        self.timer: Timer | None = None
        self.deadline_no = 0
        self.started = time.monotonic()
        self.deadline = float("inf")  # when its timer fires (monotonic)

    @property
    def untouched(self) -> bool:
        """An infer that produced nothing yet: it may run elsewhere (or again)."""
        return self.kind == "infer" and not self.chunks_seen


class TaskBoard:
    """The tasks every session of one process holds open, by id, with their session: what
    the result route checks a result against (ActorSystem.submit_result) without a message
    hop. Only the OpenTasks of a task's own SessionActor writes its entry (a task id is
    unique), so no two actors ever change one; the route only reads. A task leaves the board
    before anything shows its end (its client's answer, its cancel frame), so whoever saw
    the end finds the task gone (404): the session actor takes results in the order the
    route told them, and drops those that come after the task ended (a result that lost the
    race with a timeout or a cancel, as a late result always was)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: dict[str, tuple[str, OpenTask]] = {}

    def get(self, task_id: str) -> tuple[str, OpenTask] | None:
        """The session id and the task of `task_id`, if a session of this process holds it
        open (the task's `kind` and `streaming` never change: safe to read here)."""
        return self._tasks.get(task_id)

    def __len__(self) -> int:
        return len(self._tasks)

    def put(self, session_id: str, task: OpenTask) -> None:
        self._tasks[task.task_id] = (session_id, task)

    def drop(self, task: OpenTask) -> None:
        found = self._tasks.get(task.task_id)
        if found is not None and found[1] is task:  # only its own entry
            del self._tasks[task.task_id]


class OpenTasks:
    """The open tasks of one session by id; `seq` is the latest frame id it sent."""

    def __init__(self, frame_ids: FrameIds, session_id: str = "",
                 board: TaskBoard | None = None) -> None:
        self._frame_ids = frame_ids
        self._session_id = session_id
        self._board = board if board is not None else TaskBoard()
        self.seq = 0
        self._tasks: dict[str, OpenTask] = {}
        # The infers answered lately (their TaskEnded may be lost on a bus): a
        # reconciliation frees their slots rather than serving them again (CountTasks).
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._unsent: dict[str, None] = {}  # task ids to cancel when the stream is back

    def __len__(self) -> int:
        return len(self._tasks)

    def answered(self, task_id: str) -> None:
        """An infer was answered, and its LlmActor told (TaskEnded)."""
        self._answered[task_id] = None
        if len(self._answered) > ANSWERED_KEPT:
            self._answered.popitem(last=False)

    def were_answered(self, task_ids: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t for t in task_ids if t in self._answered)

    def get(self, task_id: str) -> OpenTask | None:
        return self._tasks.get(task_id)

    @property
    def full(self) -> bool:
        return len(self._tasks) >= MAX_REPLAY

    def all(self) -> list[OpenTask]:
        """In the order they were first kept."""
        return list(self._tasks.values())

    def in_frame_order(self) -> list[OpenTask]:
        return sorted(self._tasks.values(), key=lambda t: t.frame_id)

    def send(self, task: OpenTask) -> str:
        """Keep `task` and number a new frame for it: the frame to put on the stream."""
        self.seq = next(self._frame_ids)
        task.frame_id = self.seq
        task.frame = sse.frame("task", sse.dumps(task.payload), self._frame_ids.render(self.seq))
        self._keep(task)
        return task.frame

    def hold(self, task: OpenTask) -> None:
        """Keep `task` without a frame: `send` it when the stream opens."""
        self._keep(task)

    def _keep(self, task: OpenTask) -> None:
        self._tasks[task.task_id] = task
        self._board.put(self._session_id, task)

    def closing(self, task: OpenTask) -> None:
        """`task` is about to end (its end is shown before `remove`): no result is taken for
        it from now on (the result route answers 404; see TaskBoard)."""
        self._board.drop(task)

    def cancel_later(self, task: OpenTask) -> None:
        """`task` ends while the stream is down, after the publisher may have got it: its
        cancel goes out when the stream is back (unsent_cancels), or a stalled backend would
        hold a publisher slot until its own read timeout. Only a task that had a frame."""
        if task.frame_id:
            self._unsent[task.task_id] = None
            while len(self._unsent) > MAX_UNSENT_CANCELS:  # the oldest go first
                del self._unsent[next(iter(self._unsent))]

    def unsent_cancels(self) -> list[str]:
        """The cancel frames kept by cancel_later, once (a publisher ignores one for a task
        it does not hold)."""
        frames = [self.cancel_frame(task_id) for task_id in self._unsent]
        self._unsent.clear()
        return frames

    def cancel_frame(self, task_id: str) -> str:
        self.seq = next(self._frame_ids)
        return sse.frame("task", sse.dumps(task_wire.cancel_task(task_id)),
                         self._frame_ids.render(self.seq))

    def remove(self, task: OpenTask) -> None:
        """Forget the task; its timer stops."""
        self._tasks.pop(task.task_id, None)
        self._board.drop(task)
        if task.timer is not None:
            task.timer.cancel()

    def replay(self, last_event_id: str | None) -> list[str] | None:
        """A stream opens with `last_event_id`: if that is an id this process sent (a
        resume), the frames the publisher has not seen, in order; else None (no id: a
        restarted publisher remembers nothing; another process's id: it holds none of
        these tasks)."""
        last = self._frame_ids.parse(last_event_id)
        # (first - 1: "nothing of this process yet", as 0 is when counting from 1)
        if last is None or not self._frame_ids.first - 1 <= last <= self.seq:
            return None
        return [task.frame for task in self.in_frame_order() if task.frame_id > last]

    def hand_over(self, now: float) -> tuple[m.SendInfer | m.SendWake, ...]:
        """The session's stream opened on another process (a take-over): out with the tasks
        that may go on there, in frame order, as the messages that send them (an infer
        keeps what is left of its deadline). Those that produced output stay."""
        moving: list[m.SendInfer | m.SendWake] = []
        for task in self.in_frame_order():
            payload = task.payload
            if payload["kind"] == "wake":
                moving.append(m.SendWake(task.task_id, task.llm_name, task.llm))
            elif not task.chunks_seen and task.reply is not None:
                moving.append(m.SendInfer(
                    task.task_id, task.llm_name, payload["request"], task.streaming,
                    task.endpoint, task.reply, task.llm,
                    timeout_s=max(task.deadline - now, 0.0)))
            else:
                continue
            self.remove(task)
        return tuple(moving)


def wake_error(task: OpenTask, outcome: Any) -> TetherError:
    """Why a wake did not work, from how its task ended."""
    if isinstance(outcome, m.Failed):
        # The publisher's own wake timeout is the hub's 504, said in the hub's words.
        if outcome.error.code in ("publisher_disconnected", "shutting_down", "wake_timeout"):
            return outcome.error
        reason = outcome.error.message
    elif isinstance(outcome, m.Completed):
        reason = f"the wake answered status {outcome.status}"
    else:
        reason = "the wake ended without an answer"
    return errors.WAKE_FAILED(name=task.llm_name, why=reason)


def outcome_label(outcome: Any) -> str:
    """A task's outcome in its log line: the status (and code) its client got."""
    if isinstance(outcome, m.Completed):
        return str(outcome.status)
    if isinstance(outcome, m.Failed):
        return f"{outcome.error.status}:{outcome.error.code}"
    if isinstance(outcome, m.StreamDone):
        return "200:stream"
    return "cancelled"
