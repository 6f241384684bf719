"""Messages of the publisher's actors (one BackendActor per backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from tether.common.task_wire import InferTask


@dataclass(frozen=True)
class RunInfer:
    task: InferTask


@dataclass(frozen=True)
class RunWake:
    task_id: str


@dataclass(frozen=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True)
class TaskFinished:
    task_id: str


@dataclass(frozen=True)
class BackendDown:
    """A task found the backend unreachable before any byte: nothing ran, nothing was
    posted for it."""

    task: InferTask
    error: str


@dataclass(frozen=True)
class ProbeDue:
    """Time to probe a backend without wake recipe that went down."""


@dataclass(frozen=True)
class ListDue:
    """Time to read the list of a backend that discovers its models."""


@dataclass(frozen=True)
class Listed:
    """A listing's outcome: the ids and Ollama's details of each, or why it failed."""

    ids: tuple[str, ...] = ()
    details: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class WakeFinished:
    error: str | None  # None: awake
    timed_out: bool = False  # not ready within wake_timeout_s


@dataclass(frozen=True)
class SleepFinished:
    error: str | None


@dataclass(frozen=True)
class IdleExpired:
    generation: int


@dataclass(frozen=True)
class GetStatus:
    """Answered with "active" or "hibernating", for (re-)registration."""


@dataclass(frozen=True)
class Drain:
    """The publisher is stopping: answer the tasks not started, refuse new ones."""


@dataclass(frozen=True)
class GetDrainState:
    """Answered with (tasks still running, result POSTs still under way)."""


@dataclass(frozen=True)
class Abandon:
    """The drain time is up: stop the running tasks and answer each with an error.
    Answered with the result POSTs under way, for the publisher to wait on."""


# Everything a BackendActor receives: it matches on this union exhaustively
# (tether/common/actor.py).
BackendMessage: TypeAlias = (
    RunInfer | RunWake | CancelTask | TaskFinished | BackendDown | ProbeDue | WakeFinished
    | SleepFinished | IdleExpired | GetStatus | Drain | GetDrainState | Abandon | ListDue
    | Listed
)
