"""A publisher's task stream as its SessionActor holds it: the outbox (a queue of SSE frames
the stream's writer in tether/http drains) and Close, the sentinel that ends the stream.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque

log = logging.getLogger("tether.session")


class Close:
    """Sentinel on a publisher outbox: end the stream (with `retry:` when given)."""

    __slots__ = ("retry_ms",)

    def __init__(self, retry_ms: int | None = None) -> None:
        self.retry_ms = retry_ms


class Stream:
    """The stream of one session open now, if any. Each stream opened comes with a new
    `token` (its writer hands it back when it ends: an older stream's end is no loss);
    `opened_at` (monotonic) tells whether a loss predates a registration."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self.outbox: queue.Queue | None = None
        self.announced = False  # its `hello` went out: it carries tasks
        self.token = 0
        self.opened_at = 0.0
        self._replaced: deque[float] = deque()  # when a stream replaced a live one
        self._replaced_warned = float("-inf")

    @property
    def is_open(self) -> bool:
        """Open and announced: tasks go out on it."""
        return self.outbox is not None and self.announced

    @property
    def is_down(self) -> bool:
        """No stream, not even one about to say `hello`."""
        return self.outbox is None

    def announce(self, token: int) -> bool:
        """Stream `token` may carry tasks now; False if it ended or was replaced since."""
        if not self.is_current(token) or self.announced:
            return False
        self.announced = True
        return True

    def is_current(self, token: int) -> bool:
        return token == self.token and self.outbox is not None

    def open(self, outbox: queue.Queue, token: int, opened_at: float) -> None:
        if self.outbox is not None:
            self.outbox.put(Close())  # a second stream replaces the first
            self._note_replaced()
        self.token = token
        self.outbox = outbox
        self.announced = False
        self.opened_at = opened_at

    def put(self, frame: str) -> None:
        """A frame for the publisher, if a stream is open (else the caller holds it)."""
        if self.is_open:
            assert self.outbox is not None
            self.outbox.put(frame)

    def close(self, retry_ms: int | None = None) -> None:
        if self.outbox is not None:
            self.outbox.put(Close(retry_ms=retry_ms))
            self.outbox = None
            self.announced = False

    def _note_replaced(self) -> None:
        """Two live processes on one session id take the stream from each other forever:
        say so (at most once a minute) when it is replaced more than 3 times in a minute."""
        now = time.monotonic()
        self._replaced.append(now)
        while now - self._replaced[0] > 60:
            self._replaced.popleft()
        if len(self._replaced) > 3 and now - self._replaced_warned > 60:
            self._replaced_warned = now
            log.warning("the stream of session %s was replaced %d times in a minute: two "
                        "publishers may share one session id (one session file)",
                        self._session_id, len(self._replaced))
