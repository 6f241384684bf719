"""Messages of the publisher's actors (one BackendActor per backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfer:
    task: dict[str, Any]


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
class WakeFinished:
    error: str | None


@dataclass(frozen=True)
class SleepFinished:
    error: str | None


@dataclass(frozen=True)
class IdleExpired:
    generation: int


@dataclass(frozen=True)
class GetStatus:
    """Answered with "active" or "hibernating", for (re-)registration."""
