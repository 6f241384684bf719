"""Every message the actors exchange: commands are verbs, events are in the past tense;
each has one receiver (the unions at the bottom). The supervisor's are in
tether/actors/supervisor_messages.py; those of the LlmActor, the SessionActor and the
sweeper are here.

Replies to HTTP handlers travel on a per-request channel (a ReplyChannel) carried inside the
message. The supervisor's messages, the events put on a reply
channel (events.py), the records messages carry (records.py) and the sentinel that ends a
publisher's stream (outbox.py) are named here too, so that one import serves whoever reads
messages: `m.Register`, `m.Failed`, `m.LlmState`, `m.Close`.
"""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

import pykka

from tether.actors.events import Chunks as Chunks
from tether.actors.events import Completed as Completed
from tether.actors.events import Dispatched as Dispatched
from tether.actors.events import Failed as Failed
from tether.actors.events import Queued as Queued
from tether.actors.events import Routed as Routed
from tether.actors.events import StreamDone as StreamDone
from tether.actors.events import WakePending as WakePending
from tether.actors.outbox import Close as Close
from tether.actors.records import AliasRoute as AliasRoute
from tether.actors.records import LlmState as LlmState
from tether.actors.records import MemberInfo as MemberInfo
from tether.actors.records import ProxiesInFlight as ProxiesInFlight
from tether.actors.records import SessionLink as SessionLink
from tether.actors.supervisor_messages import ChildFailed as ChildFailed
from tether.actors.supervisor_messages import ClusterSupervisorMessage as ClusterSupervisorMessage
from tether.actors.supervisor_messages import EnsureOwners as EnsureOwners
from tether.actors.supervisor_messages import Evict as Evict
from tether.actors.supervisor_messages import HomeSession as HomeSession
from tether.actors.supervisor_messages import NamesLost as NamesLost
from tether.actors.supervisor_messages import OwnName as OwnName
from tether.actors.supervisor_messages import Register as Register
from tether.actors.supervisor_messages import ReloadLlm as ReloadLlm
from tether.actors.supervisor_messages import ReloadSession as ReloadSession
from tether.actors.supervisor_messages import ReportStatus as ReportStatus
from tether.actors.supervisor_messages import RetireExpired as RetireExpired
from tether.actors.supervisor_messages import SessionStreamLost as SessionStreamLost
from tether.actors.supervisor_messages import SessionStreamOpened as SessionStreamOpened
from tether.actors.supervisor_messages import SupervisorMessage as SupervisorMessage
from tether.actors.supervisor_messages import WithdrawNames as WithdrawNames
from tether.errors import TetherError


class ReplyChannel(Protocol):
    """Where the reply events of one request go (tether.actors.events). The HTTP handler
    reads a MeteredReply (tether.actors.reply, a queue.Queue: cooperative under gevent); with
    a bus, a request of another process is a proxy that sends each event there. The codec
    knows a field of this type is a channel (tether.cluster.codec)."""

    def put(self, item: Any) -> None: ...

    def cancelled(self, reason: str) -> None:
        """The request's task was cancelled: no event comes any more (its outcome)."""


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
    alias: AliasRoute | None = None  # a request for an alias, at one of its targets


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
    (possibly none). The LlmActor gives that member no task before this arrives.

    Also the answer to CountTasks (a reconciliation, `asked` set): which of the asked tasks
    the session already answered, and whether its stream is open."""

    session_id: str
    task_ids: tuple[str, ...]
    asked: tuple[str, ...] | None = None
    answered: tuple[str, ...] = ()
    stream_open: bool | None = None


@dataclass(frozen=True)
class Reconcile:
    """The LlmActor's periodic check (with a bus: docs/protocol.md, Lost messages): ask the
    sessions of its busy members which of its tasks they hold (CountTasks)."""


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
    # Its client's channel: an actor that does not know the task (started again after
    # a crash, or after its name was withdrawn and registered anew) answers it there.
    reply: ReplyChannel = field(compare=False)


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


@dataclass(frozen=True)
class Relinquish:
    """To an LlmActor whose name moved to another process (its lease was taken over):
    answer the requests waiting here 503 `hub_busy` (a retry reaches the new owner; the hub
    is not shutting down), then stop. With `pass_on` (this process drains and hands its
    names over), each waiting request goes to it instead."""

    pass_on: Callable[[Infer], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Retire:
    """To the actor of a name that is gone (its last member withdrew or expired): answer
    the requests waiting here 503 `publisher_offline`, then stop."""


# --- SessionActor ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenStream:
    outbox: queue.Queue = field(compare=False)
    last_event_id: str | None = None  # as the publisher sent it: FrameIds.parse reads it
    names: tuple[str, ...] = ()  # what the session publishes: the `hello` frame lists them
    token: int = 0  # handed back in its StreamClosed: which stream ended
    opened_at: float = 0.0  # time.monotonic() at the request: before any later registration


@dataclass(frozen=True)
class StreamAnnounced:
    """From the supervisor: the LlmActors heard that stream `token` opened (its `hello` may
    go out: a member gets work as soon as its publisher sees `hello`, never a 503 before)."""

    token: int


@dataclass(frozen=True)
class LlmRestarted:
    """The actor of Llm `name` was restarted: its open tasks report to `ref` from now on."""

    name: str
    ref: pykka.ActorRef = field(compare=False)


@dataclass(frozen=True)
class CountTasks:
    """An LlmActor's reconciliation: which tasks of Llm `name` does this session hold, and
    which of `asked` (those it counts in flight here) did it answer? Answered with a
    TasksInFlight to `ref`."""

    name: str
    ref: pykka.ActorRef = field(compare=False)
    asked: tuple[str, ...] = ()


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
    """A result line for an open task, told by the result route once it checked the task,
    its owner and its kind on the TaskBoard (ActorSystem.submit_result): nobody waits."""

    task_id: str
    result: dict[str, Any]


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
    """The session's own timer: the drain's deadline passed."""


@dataclass(frozen=True)
class AdoptTasks:
    """Tasks that produced nothing, from this session's old home (a take-over), under the
    ids they have here: held as tasks sent while the stream is down, and sent as new frames
    when it opens (the publisher holds none of the old home's tasks: docs/protocol.md)."""

    tasks: tuple[SendInfer | SendWake, ...]


# --- sweeper -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """The sweeper's own timer: time for the next sweep."""


# --- who receives what -------------------------------------------------------------------
# Each actor's `receive` takes one of these unions and matches on it exhaustively (see
# tether/common/actor.py); tests/actors/test_dispatch.py checks every message class above has
# its one receiver.

LlmMessage: TypeAlias = (
    Infer | Withdraw | Adopt | Relink | RecordHeartbeat | SetStatus | StreamLost | StreamOpened
    | ExpireHeartbeat | WakeSucceeded | WakeFailed | WakeTimedOut | TaskEnded | TasksInFlight
    | TaskReturned | TasksOffered | TasksReleased | GraceEnded | QueueTimedOut | TaskMoved
    | InventoryTimedOut | Relinquish | Retire | Reconcile
)
# A public Llm's actor takes only what may reach it: its infers, their ends, a withdrawal.
PublicLlmMessage: TypeAlias = Infer | Withdraw | TaskEnded | Retire
SessionMessage: TypeAlias = (
    OpenStream | StreamAnnounced | LlmRestarted | CountTasks | StreamClosed | SendInfer
    | ReleaseTasks | SendWake
    | SubmitResult | CancelTask | TaskTimedOut | GraceExpired | Drain | DrainExpired
    | Evict | AdoptTasks  # with a bus (tether.cluster); Evict goes to the supervisor first
)
SweeperMessage: TypeAlias = Sweep
