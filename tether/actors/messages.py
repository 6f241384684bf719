"""Every message the actors exchange: commands are verbs, events are in the past tense.

Replies to HTTP handlers travel on a per-request channel (a queue.Queue, cooperative under
gevent) carried inside the message; the events put on it are at the bottom of this module.
"""

from __future__ import annotations

import datetime as dt
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

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


# --- supervisor --------------------------------------------------------------------------


@dataclass(frozen=True)
class Register:
    session_id: str | None
    providers: tuple[dict[str, Any], ...]


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
    home: Any = field(compare=False)  # base.Parent: where the running calls report
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


# --- LlmActor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Infer:
    request: dict[str, Any]
    streaming: bool
    endpoint: str
    reply: ReplyChannel = field(compare=False)


@dataclass(frozen=True)
class Withdraw:
    """The client of the infer answering on `reply` left before it saw its task start:
    drop it from the wait (or cancel its task, if one went out meanwhile)."""

    reply: ReplyChannel = field(compare=False)


@dataclass(frozen=True)
class Adopt:
    """The row was (re-)registered: take this state and owner."""

    state: LlmState
    session: SessionLink
    adopted_at: float  # time.monotonic() when the registration was applied


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
class TasksInFlight:
    """From a session, to a restarted LlmActor: its tasks still open there."""

    task_ids: tuple[str, ...]


# --- SessionActor ------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenStream:
    outbox: queue.Queue = field(compare=False)
    last_event_id: int | None = None


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
    # A waiter released from the LlmActor's queue: with the stream down it waits for the
    # stream (publisher_grace_s) instead of failing publisher_offline at once.
    may_wait: bool = False


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
    """The infer started as `task_id`; `cancel(reason)` stops it (client gone, no answer)."""

    task_id: str
    cancel: Callable[[str], None] = field(compare=False)


@dataclass(frozen=True)
class WakePending:
    pass


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


class Close:
    """Sentinel on a publisher outbox: end the stream (with `retry:` when given)."""

    __slots__ = ("retry_ms",)

    def __init__(self, retry_ms: int | None = None) -> None:
        self.retry_ms = retry_ms
