"""Wake: the wake state of one pool (docs/protocol.md, Wake and Pools), a plain class the
LlmActor holds and drives, as Mopidy keeps its logic in controllers its actors hold; it
sends nothing and can be tested without actors.

At most one wake is in flight per name however many requests wait (dedup): the LlmActor's
mailbox serializes infers, and `next_member` names nobody while one runs. A wake that
fails, times out or loses its member marks that member failed for this round, so the next
hibernating member is tried; the round ends when no request waits any more. Every answer
carries the wake's task id: one for a wake that already ended is stale and changes nothing.
Each wake that starts ends once, with its outcome (tether.observability.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tether import errors
from tether.actors import routing
from tether.common.runtime import Timer
from tether.errors import TetherError
from tether.observability import metrics

# Arms the wake's timer: after `delay` seconds it must report WakeTimedOut(task_id).
Arm = Callable[[float, str], Timer]

# After a failed wake, alias requests do not wake that name again for this long (direct
# requests still do): a backstop answers meanwhile, without a failing wake per request.
ALIAS_BACKOFF_S = 30.0


class Flight:
    """The one wake in flight: its task, the member it runs at, and its timer."""

    __slots__ = ("task_id", "session_id", "deadline", "timer")

    def __init__(self, task_id: str, session_id: str, deadline: float, timer: Timer) -> None:
        self.task_id = task_id
        self.session_id = session_id
        self.deadline = deadline  # when its timer fires (monotonic)
        self.timer = timer


class Wake:
    def __init__(self, name: str, timeout_s: float, arm: Arm,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._timeout_s = timeout_s
        self._arm = arm
        self._clock = clock
        self.flight: Flight | None = None
        self._failed: set[str] = set()  # members whose wake failed while requests wait
        self._error: TetherError | None = None
        self._failed_at = float("-inf")  # when a wake last failed or timed out

    @property
    def in_flight(self) -> bool:
        return self.flight is not None

    def next_member(self, members: Sequence[routing.MemberView],
                    alias: bool = False) -> str | None:
        """Whom to wake now: nobody while a wake is in flight, else the next hibernating
        member with a live stream whose wake has not failed in this round. For an alias's
        request (`alias`), nobody either for ALIAS_BACKOFF_S after a failed wake."""
        if self.flight is not None or (
                alias and self._clock() - self._failed_at < ALIAS_BACKOFF_S):
            return None
        return routing.choose_wake(members, self._failed)

    def start(self, task_id: str, session_id: str) -> Flight:
        assert self.flight is None, "one wake in flight per name"
        timer = self._arm(self._timeout_s, task_id)
        self.flight = Flight(task_id, session_id, self._clock() + self._timeout_s, timer)
        metrics.wake_started(self._name, task_id)
        return self.flight

    # --- how a wake ends: each returns the wake that ended, or None if none did --------

    def succeeded(self, task_id: str) -> Flight | None:
        return self._end(task_id, "succeeded")

    def failed(self, task_id: str, error: TetherError, outcome: str = "failed") -> Flight | None:
        """Its member stays hibernating: the next one is woken, and `error` answers the
        waiters if none is left."""
        flight = self._end(task_id, outcome)
        if flight is not None:
            self._failed.add(flight.session_id)
            self._error = error
            self._failed_at = self._clock()
        return flight

    def timed_out(self, task_id: str) -> Flight | None:
        return self.failed(task_id, errors.WAKE_TIMEOUT(name=self._name,
                                                        seconds=self._timeout_s), "timed_out")

    def superseded(self, session_id: str) -> Flight | None:
        """The member being woken is up without the wake's answer (it reported `active`):
        the wake is over (its task is to be cancelled, so no second one runs beside it)."""
        return self._end_at(session_id, "succeeded")

    def abandon(self) -> Flight | None:
        """End the wake in flight, if any, without a verdict on its member."""
        return self._end(self.flight.task_id, "abandoned") if self.flight is not None else None

    def expired(self, session_id: str) -> Flight | None:
        """The member being woken missed its heartbeats: the wake ends, and that member is
        not woken again in this round."""
        flight = self._end_at(session_id, "abandoned")
        if flight is not None:
            self._failed.add(session_id)
        return flight

    def _end_at(self, session_id: str, outcome: str) -> Flight | None:
        if self.flight is None or self.flight.session_id != session_id:
            return None
        return self._end(self.flight.task_id, outcome)

    def _end(self, task_id: str, outcome: str) -> Flight | None:
        flight = self.flight
        if flight is None or flight.task_id != task_id:
            return None  # a stale answer for a wake that already ended
        flight.timer.cancel()
        self.flight = None
        metrics.wake_ended(self._name, task_id, outcome)
        return flight

    # --- bookkeeping ---------------------------------------------------------------------

    def renamed(self, task_id: str, new_task_id: str) -> bool:
        """Its session moved to another process, where the wake goes on under a new id: it
        keeps its deadline."""
        flight = self.flight
        if flight is None or flight.task_id != task_id:
            return False
        flight.timer.cancel()
        flight.task_id = new_task_id
        flight.timer = self._arm(max(flight.deadline - self._clock(), 0.0), new_task_id)
        metrics.wake_renamed(task_id, new_task_id)
        return True

    def forget(self, session_id: str) -> None:
        """The member left the pool."""
        self._failed.discard(session_id)

    def note_error(self, error: TetherError) -> None:
        """The latest error a waiting request met: its answer, should nobody else serve it."""
        self._error = error

    def waiters_error(self) -> TetherError:
        """The answer for requests nobody can serve: why the last wake or try failed."""
        return self._error or errors.PUBLISHER_OFFLINE(name=self._name)

    def round_over(self) -> None:
        """No request waits: the next one tries every member again."""
        self._failed.clear()
        self._error = None
