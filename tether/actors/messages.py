"""Every message the actors exchange: commands are verbs, events are in the past tense.

Replies to HTTP handlers travel on a per-request channel (a queue.Queue, cooperative under
gevent) carried inside the message; the events put on it are at the bottom of this module.
"""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pykka

from tether.actors.outbox import Close as Close  # the outbox's, named here for its readers
from tether.common.actor import Parent
from tether.errors import TetherError

ReplyChannel = queue.Queue  # of the reply events below


@dataclass(frozen=True)
class LlmState:
    """What an LlmActor keeps of its row: enough to route without touching the store."""

    name: str
    kind: str
    session_id: str | None
    status: str


@dataclass(frozen=True)
class SessionLink:
    """How an LlmActor reaches the SessionActor of its owning session."""

    session_id: str
    slot: int
    ref: pykka.ActorRef = field(compare=False)
    home: str | None = None  # with a bus: the process holding the session (in task ids)


@dataclass(frozen=True)
class MemberInfo:
    """One member of a name (docs/protocol.md, Pools), as the supervisor hands it to the LlmActor;
    `live` says whether the member's session has a stream open right now."""

    session: SessionLink
    status: str
    max_concurrency: int | None
    live: bool


# --- supervisor --------------------------------------------------------------------------


@dataclass(frozen=True)
class Register:
    session_id: str | None
    providers: tuple[dict[str, Any], ...]
    key_name: str | None = None  # with auth on, the registering key (the pool-join rule)
    admin: bool = False


@dataclass(frozen=True)
class ChildFailed:
    """From a crashed child's on_failure: `kind` is "llm" or "session", `key` its name/id."""

    kind: str
    key: str
    ref: pykka.ActorRef = field(compare=False)
    # A public Llm's upstream calls still running, and the link they report their end
    # through: the restarted actor takes both over and keeps counting them.
    proxies: ProxiesInFlight | None = None


@dataclass(frozen=True)
class ProxiesInFlight:
    home: Parent = field(compare=False)  # where the running calls report
    task_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SessionStreamLost:
    session_id: str
    stream_opened_at: float  # time.monotonic() when the lost stream had been opened


@dataclass(frozen=True)
class SessionStreamOpened:
    session_id: str


@dataclass(frozen=True)
class ReportStatus:
    """A publisher's status report: every name is checked before any is applied."""

    session_id: str
    updates: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RetireExpired:
    cutoff: dt.datetime


# --- supervisor, with a bus (tether.cluster) ----------------------------------------------


@dataclass(frozen=True)
class OwnName:
    """This process took the lease of `name`: start its LlmActor from the store (answered
    with its ref, or None if the row is gone)."""

    name: str


@dataclass(frozen=True)
class ReloadLlm:
    """The members of `name` changed elsewhere (a registration, a take-over): if this
    process owns it, re-read them."""

    name: str
    registered: str | None = None  # as in Adopt


@dataclass(frozen=True)
class ReloadSession:
    """A session homed here registered on another process: re-read its names."""

    session_id: str


@dataclass(frozen=True)
class Evict:
    """A stream for this session opened on another process, which is its home now: end
    the stream here without marking its rows inactive. The supervisor forgets the session
    (answering its ref, or None); the session answers with the tasks that move to the new
    home (SendInfer and SendWake of those that produced nothing) and fails the others.
    With `forward`, the session lives on a few seconds, passing on to `forward` what is
    still sent to it (by an LlmActor that did not hear of the move yet)."""

    session_id: str
    forward: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Relinquish:
    """To an LlmActor whose name moved to another process (its lease was taken over):
    answer the requests waiting here 503 `hub_busy` (a retry reaches the new owner; the hub
    is not shutting down), then stop."""


@dataclass(frozen=True)
class NamesLost:
    """Leases this process no longer holds (taken over): stop their LlmActors."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class EnsureOwners:
    """Each tick: every name of a session whose stream is here has a live owner. With
    `reassert`, Redis lost this process's keys (it restarted empty): write the homes of the
    sessions here again, and have their names' owners re-read their members."""

    reassert: bool = False


@dataclass(frozen=True)
class HomeSession:
    """A stream is opening here for a session that has no actor here: become its home
    (load its names from the store). Answered with its old home if that process is alive
    (the caller has it give the session up, and takes its tasks), else None."""

    session_id: str


@dataclass(frozen=True)
class AdoptTasks:
    """Tasks that produced nothing, from this session's old home (a take-over), under the
    ids they have here: held as tasks sent while the stream is down, and sent as new frames
    when it opens (the publisher holds none of the old home's tasks: docs/protocol.md)."""

    tasks: tuple[SendInfer | SendWake, ...]


# --- LlmActor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Infer:
    request: dict[str, Any]
    streaming: bool
    endpoint: str
    reply: ReplyChannel = field(compare=False)
    affinity: str | None = None  # the X-Tether-Affinity header: routes instead of the prefix
    # Sent over the bus, whose messages may be lost: the sender waits for a first event
    # (Queued when the request only waits) and gives up without one (tether.cluster.router).
    ack: bool = False


@dataclass(frozen=True)
class Withdraw:
    """The client of the infer answering on `reply` left before it saw its task start:
    drop it from the wait (or cancel its task, if one went out meanwhile)."""

    reply: ReplyChannel = field(compare=False)


@dataclass(frozen=True)
class Adopt:
    """The row's members changed (a registration, a retirement): take these, in join order.
    `registered` is the session whose registration this is, if any."""

    state: LlmState
    members: tuple[MemberInfo, ...]
    adopted_at: float  # time.monotonic() when the registration was applied
    registered: str | None = None


@dataclass(frozen=True)
class Relink:
    """The session actor was restarted: reach it through this link from now on."""

    session: SessionLink


@dataclass(frozen=True)
class RecordHeartbeat:
    session_id: str


@dataclass(frozen=True)
class SetStatus:
    session_id: str
    status: str


@dataclass(frozen=True)
class StreamLost:
    """The session's stream went. `stream_opened_at` says whether that stream predates the
    latest registration (then it may be the old connection of a publisher reconnecting)."""

    session_id: str
    stream_opened_at: float
    home_died: bool = False  # its home process died: its tasks in flight are gone too


@dataclass(frozen=True)
class StreamOpened:
    session_id: str


@dataclass(frozen=True)
class ExpireHeartbeat:
    cutoff: dt.datetime


@dataclass(frozen=True)
class WakeSucceeded:
    task_id: str


@dataclass(frozen=True)
class WakeFailed:
    task_id: str
    error: TetherError


@dataclass(frozen=True)
class WakeTimedOut:
    task_id: str


@dataclass(frozen=True)
class TaskEnded:
    task_id: str


@dataclass(frozen=True)
class TaskMoved:
    """A task of this Llm went to its session's new home (a take-over) under a new id:
    the same request on the same member (a wake goes on under the new id)."""

    task_id: str
    new_task_id: str


@dataclass(frozen=True)
class TasksInFlight:
    """From a session, to a restarted LlmActor: its tasks of that Llm still open there
    (possibly none). The LlmActor gives that member no task before this arrives."""

    session_id: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class InventoryTimedOut:
    """The LlmActor's own timer: members whose sessions did not report their tasks in
    flight after a restart (a lost message, a session gone) take tasks again."""


@dataclass(frozen=True)
class TaskReturned:
    """A `retryable: true` error before any output: the session answered nobody; the
    LlmActor sends the task to a member not yet tried, or answers `error`."""

    task_id: str
    error: TetherError


@dataclass(frozen=True)
class TasksOffered:
    """A session lost its stream: these tasks of this Llm produced nothing yet (frame order)
    and could move to another member (docs/protocol.md, Pools: Failover). Always answered with
    ReleaseTasks, possibly empty."""

    session_id: str
    task_ids: tuple[str, ...]
    session: pykka.ActorRef = field(compare=False)


@dataclass(frozen=True)
class TasksReleased:
    """The session gave up these untouched tasks (frame order) after ReleaseTasks: they are
    out of its table and replay, and the LlmActor routes them again."""

    session_id: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True)
class GraceEnded:
    """The LlmActor's own timer: a member that lost its stream had publisher_grace_s to
    come back; requests that waited for it are answered if it did not."""


@dataclass(frozen=True)
class QueueTimedOut:
    """The LlmActor's own timer: waiting requests past infer_timeout_s since arrival."""

    generation: int


# --- SessionActor ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenStream:
    outbox: queue.Queue = field(compare=False)
    last_event_id: str | None = None  # as the publisher sent it: FrameIds.parse reads it


@dataclass(frozen=True)
class LlmRestarted:
    """The actor of Llm `name` was restarted: its open tasks report to `ref` from now on."""

    name: str
    ref: pykka.ActorRef = field(compare=False)


@dataclass(frozen=True)
class StreamClosed:
    token: int


@dataclass(frozen=True)
class SendInfer:
    task_id: str
    llm_name: str
    request: dict[str, Any]
    streaming: bool
    endpoint: str
    reply: ReplyChannel = field(compare=False)
    llm: pykka.ActorRef = field(compare=False)
    timeout_s: float | None = None  # what is left of infer_timeout_s since the arrival


@dataclass(frozen=True)
class ReleaseTasks:
    """The LlmActor's answer to TasksOffered: hand back those of these tasks that still
    produced nothing (answered with TasksReleased); the other offered ones stay and wait
    the grace (with publisher_grace_s = 0 they fail now)."""

    llm_name: str
    task_ids: tuple[str, ...]
    llm: pykka.ActorRef = field(compare=False)


@dataclass(frozen=True)
class SendWake:
    task_id: str
    llm_name: str
    llm: pykka.ActorRef = field(compare=False)


@dataclass(frozen=True)
class SubmitResult:
    task_id: str
    claimed_session: str | None
    result: dict[str, Any]
    caller_owns_session: bool = True  # with auth on: the caller's key owns this session


@dataclass(frozen=True)
class CancelTask:
    task_id: str
    reason: str


@dataclass(frozen=True)
class TaskTimedOut:
    task_id: str
    deadline_no: int


@dataclass(frozen=True)
class GraceExpired:
    token: int


@dataclass(frozen=True)
class Drain:
    """Shutdown: take no new task; open tasks may finish for `deadline_s`, then get 503.
    The stream then ends with a retry hint, and the session id goes on `drained`."""

    deadline_s: float = 0.0
    drained: queue.Queue | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DrainExpired:
    pass


# --- sweeper -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    pass


# --- reply events (on a request's ReplyChannel) ------------------------------------------


@dataclass(frozen=True)
class Dispatched:
    """The infer started as `task_id`. A cancel (client gone, no answer) goes by the task id
    to the session holding it (ActorSystem.cancel): plain data, so it crosses the bus. Only
    a public Llm's upstream call, which never leaves its process, brings its own `cancel`."""

    task_id: str
    # what it returns is ignored
    cancel: Callable[[str], object] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WakePending:
    pass


@dataclass(frozen=True)
class Queued:
    """The LlmActor took an infer sent with `ack` and it waits (no other event went out for
    it yet): the acknowledgement its sender on another process waits for."""


@dataclass(frozen=True)
class Completed:
    status: int
    body: Any


@dataclass(frozen=True)
class Chunks:
    data: tuple[str, ...]


@dataclass(frozen=True)
class StreamDone:
    pass


@dataclass(frozen=True)
class Failed:
    error: TetherError


# --- who receives what -------------------------------------------------------------------
# Each actor's `receive` takes one of these unions and matches on it exhaustively (see
# tether/common/actor.py); tests/actors/test_dispatch.py checks every message class above has its
# one receiver.

SupervisorMessage: TypeAlias = (
    Register | ChildFailed | SessionStreamLost | SessionStreamOpened | ReportStatus
    | RetireExpired
)
LlmMessage: TypeAlias = (
    Infer | Withdraw | Adopt | Relink | RecordHeartbeat | SetStatus | StreamLost | StreamOpened
    | ExpireHeartbeat | WakeSucceeded | WakeFailed | WakeTimedOut | TaskEnded | TasksInFlight
    | TaskReturned | TasksOffered | TasksReleased | GraceEnded | QueueTimedOut | TaskMoved
    | InventoryTimedOut | Relinquish
)
# A public Llm's actor takes only what may reach it: its infers, their ends, a withdrawal.
PublicLlmMessage: TypeAlias = Infer | Withdraw | TaskEnded
# What a ClusterSupervisor takes besides the SupervisorMessages.
ClusterSupervisorMessage: TypeAlias = (
    OwnName | ReloadLlm | ReloadSession | Evict | NamesLost | EnsureOwners | HomeSession
)
SessionMessage: TypeAlias = (
    OpenStream | LlmRestarted | StreamClosed | SendInfer | ReleaseTasks | SendWake
    | SubmitResult | CancelTask | TaskTimedOut | GraceExpired | Drain | DrainExpired
    | Evict | AdoptTasks  # with a bus (tether.cluster)
)
SweeperMessage: TypeAlias = Sweep
