"""Row writes kept through a database outage (docs/protocol.md, Faults: a PostgreSQL outage).

An Llm actor's row writes (a member's status, its heartbeat) must never fail the actor:
the actor's memory is what routes requests, the row only reports it. Each write is keyed
by its row (name, session, what); a later write of the same key replaces an earlier one
still waiting (only the latest state of a row matters). One background writer (a thread,
a greenlet under gevent) writes what waits, in order, and while the database does not
answer it keeps everything and retries with backoff, up to BACKOFF_MAX_S apart, so the
rows say what is true within that long of the database answering again.

A status write is made at once, in the actor's turn, while the database answers and no
older write of that row waits (readers then see it as soon as the actor moved on); once a
write failed for an outage, every write waits behind until the writer has written them
all. Heartbeats
always go behind: a name's infers never wait on its heartbeat's write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from tether.store.db import is_outage

log = logging.getLogger("tether.store")

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 2.0
# How long clear() waits for a write under way (a silent database gives one up in 2 × 3 s).
CLEAR_WAIT_S = 8.0


class WriteBehind:
    def __init__(self) -> None:
        self._pending: dict[Hashable, Callable[[], Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._failing = False  # the last write failed for an outage
        self._writer: threading.Thread | None = None
        self._generation = 0  # bumped by clear(): a writer of an older one stops

    def write(self, key: Hashable, fn: Callable[[], Any], now: bool = True) -> None:
        """Make the write `fn()` of the row `key`: at once when `now`, the database
        answers and no older write of `key` waits (an outage then keeps it), else behind.
        Never raises for an outage."""
        with self._lock:
            inline = now and not self._failing and key not in self._pending
        if inline:
            try:
                fn()
                return
            except Exception as exc:
                if not is_outage(exc):
                    raise  # a bug: the caller's supervision handles it
                self._outage(exc)
        with self._lock:
            self._pending.pop(key, None)  # the latest goes last, in order after the rest
            self._pending[key] = fn
            self._start()
        self._wake.set()

    def waiting(self, key: Hashable) -> bool:
        """Whether a write of `key` waits (it is newer than what the row says)."""
        with self._lock:
            return key in self._pending

    def discard(self, key: Hashable) -> None:
        """Forget a waiting write that a newer one made elsewhere (a registration) undoes."""
        with self._lock:
            self._pending.pop(key, None)

    def clear(self) -> None:
        """Forget everything (the store closes: at shutdown, between tests), once a write
        under way has ended: the store may not close a connection the writer still uses."""
        with self._lock:
            self._pending.clear()
            self._failing = False
            self._generation += 1
            writer, self._writer = self._writer, None
        self._wake.set()
        if writer is not None and writer is not threading.current_thread():
            writer.join(CLEAR_WAIT_S)

    def __len__(self) -> int:
        return len(self._pending)

    def _outage(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._failing
            self._failing = True
        if first:  # one line per outage, no traceback: it is the database's, not ours
            log.warning("the database does not answer (%s): row writes are kept and retried",
                        " ".join(str(exc).split()) or type(exc).__name__)

    def _start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._drain, args=(self._generation,),
                                            name="WriteBehind", daemon=True)
            self._writer.start()

    def _next(self, generation: int) -> tuple[Hashable, Callable[[], Any]] | None:
        with self._lock:
            if generation != self._generation or not self._pending:
                return None
            return next(iter(self._pending.items()))

    def _drain(self, generation: int) -> None:
        delay = BACKOFF_MIN_S
        while generation == self._generation:
            self._wake.wait()
            self._wake.clear()
            written = 0
            while (item := self._next(generation)) is not None:
                key, fn = item
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - an outage waits; a bug is logged
                    if is_outage(exc):
                        self._outage(exc)
                        time.sleep(delay)
                        delay = min(delay * 2, BACKOFF_MAX_S)
                        continue
                    log.exception("a kept row write failed and was dropped")
                with self._lock:
                    if self._pending.get(key) is fn:  # not replaced meanwhile
                        del self._pending[key]
                written += 1
                delay = BACKOFF_MIN_S
            with self._lock:
                recovered = self._failing and generation == self._generation \
                    and not self._pending
                if recovered:
                    self._failing = False
            if recovered:
                log.warning("the database answers again: %d kept row write(s) written",
                            written)


# The process's one writer: the actors' row writes go through it.
WRITES = WriteBehind()
