"""Bounded restarts, like an Erlang supervisor's: an actor that crashes more than
MAX_RESTARTS times within RESTART_WINDOW_S is left down. The Supervisor keeps one
RestartHistory for its children, the ActorSystem one for its root actors."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from tether.observability import metrics

MAX_RESTARTS = 5
RESTART_WINDOW_S = 10.0
# A child that cannot be rebuilt because the database does not answer is tried again this
# often: an outage is waited out, it never counts toward MAX_RESTARTS.
OUTAGE_RETRY_S = 1.0

K = TypeVar("K", bound=Hashable)


class RestartHistory(Generic[K]):
    def __init__(self) -> None:
        self._crashes: dict[K, deque[float]] = {}

    def crashed(self, key: K, kind: str, now: float, counted: bool = True) -> int:
        """The crashes of `key` within RESTART_WINDOW_S of `now`, this one included if
        `counted` (a retry after an outage is not a crash); more than MAX_RESTARTS and
        the caller leaves it down."""
        history = self._crashes.setdefault(key, deque())
        while history and now - history[0] > RESTART_WINDOW_S:
            history.popleft()
        if counted:
            history.append(now)
            metrics.actor_restarted(kind, gave_up=len(history) > MAX_RESTARTS)
        return len(history)
