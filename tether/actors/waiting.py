"""Waiting: the requests of one pool that wait for a member, in arrival order (late binding:
docs/protocol.md, Pools), a plain class the LlmActor holds. One timer covers them all: it
fires when the oldest has waited infer_timeout_s; a timer that fires after the queue changed
is stale (each arming has its own number).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from tether.actors import messages as m
from tether.actors.pool import Request
from tether.common.runtime import Timer

# Arms the queue's timer: after `delay` seconds it must report QueueTimedOut(generation).
Arm = Callable[[float, int], Timer]


class Waiting:
    def __init__(self, timeout_s: float, arm: Arm,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout_s = timeout_s
        self._arm = arm
        self._clock = clock
        self._requests: deque[Request] = deque()
        self._timer: Timer | None = None
        self._generation = 0

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def __contains__(self, req: Request) -> bool:
        return req in self._requests

    def append(self, req: Request) -> None:
        self._requests.append(req)

    def put_back(self, reqs: list[Request]) -> None:
        """Requests that went out and came back (failover, retry) go first, in their order."""
        self._requests.extendleft(reversed(reqs))

    def serve(self, place: Callable[[Request], bool]) -> None:
        """Offer each request to `place`, oldest first (True: it went out). One that no
        member takes keeps its place; if no member had refused it before, every later one
        has the same candidates, none of which has a slot: they keep theirs untried."""
        kept: deque[Request] = deque()
        while self._requests:
            req = self._requests.popleft()
            if place(req):
                continue
            kept.append(req)
            if not req.tried:
                kept.extend(self._requests)
                self._requests.clear()
        self._requests = kept

    def drop(self, keep: Callable[[Request], bool]) -> list[Request]:
        """Out of the queue with those `keep` refuses, in order: the caller answers them."""
        kept: deque[Request] = deque()
        dropped: list[Request] = []
        for req in self._requests:
            (kept if keep(req) else dropped).append(req)
        self._requests = kept
        return dropped

    def clear(self) -> list[Request]:
        dropped, self._requests = list(self._requests), deque()
        return dropped

    def withdraw(self, reply: m.ReplyChannel) -> bool:
        """Drop the request answering on `reply` (a remote request's proxy compares by its
        request id); False if it no longer waits."""
        for req in self._requests:
            if req.infer.reply == reply:
                self._requests.remove(req)
                return True
        return False

    # --- the timer -----------------------------------------------------------------------

    def rearm(self) -> None:
        """One timer, for the oldest request's deadline (none for an empty queue)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._requests:
            return
        oldest = min(req.arrived for req in self._requests)
        self._generation += 1
        self._timer = self._arm(max(oldest + self._timeout_s - self._clock(), 0.0),
                                self._generation)

    def timed_out(self, generation: int) -> list[Request] | None:
        """The timer of `generation` fired: out with the requests past their deadline; None
        if a newer timer replaced that one."""
        if generation != self._generation:
            return None
        self._timer = None
        now = self._clock()
        return self.drop(lambda req: now - req.arrived < self._timeout_s)
