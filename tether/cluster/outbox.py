"""What this process publishes on the bus, sent by one greenlet (docs/performance.md, The bus
hop; docs/architecture.md).

Before, whoever sent a message published it and waited for Redis: an owner's SessionActor
waited two round trips per forwarded request (its `Dispatched`, then its `Completed`), one
after the other, and every request of that publisher queued behind them. Now a sender
appends to one queue and one greenlet drains it: each turn takes everything queued (at most
BATCH) and PUBLISHes it in one pipeline, one round trip for the lot.

- **Order.** One queue, one drainer, each batch sent before the next is taken, and a
  pipeline's commands run in order on one connection: what this process sends reaches Redis
  in the order it was queued, so every destination hears it in that order (a request's
  `Dispatched`, its chunks, its end).
- **Failure semantics unchanged.** A message is heard or not, as a PUBLISH said before: a
  batch that Redis does not take (refused, cut off, silent past the socket timeout: the
  bus's client does not retry) is not heard, each of its messages as if its own PUBLISH had
  failed, logged once per outage. `post` is for messages whose sender did nothing when a
  send failed (an event for a waiting request, an answer, a cancel): the receiver's
  deadlines answer for a lost one, as they did. `send` waits for its message's fate and
  returns it, for callers that act on it (an infer answered 503, an ask answered at once, a
  session told dead): their answer is the same as before.
- **A stalled batch stalls no `send`.** A batch on a connection gone silent waits out the
  socket timeout (5 s), and what is queued behind it waits too; the posts then go out in
  order, on a new connection (not failed with it: sent after the network came back, they
  would have been heard). A `send` still queued after STALL_S takes its message back and
  publishes it on a connection of its own, as every send did before: it does not wait on
  another message's silence, nor does an infer sent once the network is back. Only then may
  it overtake posts queued before it (messages the bus may lose anyway).
- **Bounded.** Past MAX_QUEUED waiting messages (Redis too slow for what this process
  sends), a new one is not queued: it is not heard, like a send to a Redis that does not
  answer.
- Before the drainer runs (the bus not started) and after it stopped, a message is
  published at once by its sender, as before.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable
from typing import Any

import redis

from tether.cluster.redis_client import Outage
from tether.common.runtime import spawn

BATCH = 256  # messages per pipeline: one turn's JSON and socket write stay short
MAX_QUEUED = 20_000  # beyond this, Redis does not keep up: refuse rather than hold memory
STOP_WAIT_S = 2.0  # at stop, how long what is still queued may take to go out
# How long a `send` waits in the queue before it publishes by itself: far above a turn's
# round trip on a busy loop (milliseconds), far below the socket timeout (5 s).
STALL_S = 0.5


class _Waiter:
    """A `send` waiting for its message's fate. `taken`: in a batch on the wire (its fate is
    that batch's); `withdrawn`: taken back by its sender (the drainer skips it)."""

    __slots__ = ("done", "heard", "taken", "withdrawn")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.heard = False
        self.taken = self.withdrawn = False


class Outbox:
    """`channel(process)` names a process's channel; `sending` logs failures once per
    outage."""

    def __init__(self, client: redis.Redis, channel: Callable[[str], str],
                 sending: Outage) -> None:
        self._redis = client
        self._channel = channel
        self._sending = sending
        # (channel, JSON, waiter or None), oldest first.
        self._queue: collections.deque[tuple[str, str, _Waiter | None]] = collections.deque()
        self._wake = threading.Event()
        # Taken around "is the drainer there? then queue it" and around the drainer's last
        # look at the queue: nothing is queued after that look (it would wait forever).
        self._lock = threading.Lock()
        self._running = False  # until stop(): the drainer waits for more
        self._draining = False  # while the drainer takes what is queued
        self._stopped = threading.Event()
        self.in_flight = 0  # messages of the batch on the wire

    def start(self) -> None:
        self._running = self._draining = True
        self._stopped.clear()
        spawn(self._drain)

    def stop(self) -> None:
        """Send what is queued (for STOP_WAIT_S at most), then stop the drainer; later
        messages are published by their senders."""
        if not self._running:
            return
        self._running = False
        self._wake.set()
        self._stopped.wait(STOP_WAIT_S)

    @property
    def backlog(self) -> int:
        """Messages queued that the drainer has not taken yet."""
        return len(self._queue)

    # --- sending -------------------------------------------------------------------------

    def post(self, process: str, payload: dict[str, Any]) -> None:
        """Queue `payload` for `process` and go on: nobody waits on its fate."""
        self._put(process, payload, None)

    def send(self, process: str, payload: dict[str, Any]) -> bool:
        """Queue `payload` for `process` and wait for its fate: False if Redis did not take
        it or nobody listens there."""
        waiter = _Waiter()
        entry = self._put(process, payload, waiter)
        if entry is None:
            return waiter.heard
        if waiter.done.wait(STALL_S):
            return waiter.heard
        with self._lock:  # the drainer is stuck on a batch ahead: publish it ourselves
            waiter.withdrawn = not waiter.taken
        if waiter.withdrawn:
            return self._publish_now(entry[0], entry[1])
        waiter.done.wait()  # on the wire: set by the drainer, whatever becomes of its batch
        return waiter.heard

    def _put(self, process: str, payload: dict[str, Any],
             waiter: _Waiter | None) -> tuple[str, str, _Waiter | None] | None:
        """The entry queued, or None when it is settled already: sent at once, or refused."""
        entry = (self._channel(process), json.dumps(payload, separators=(",", ":")), waiter)
        with self._lock:
            queued = self._draining and len(self._queue) < MAX_QUEUED
            if queued:
                self._queue.append(entry)
        if queued:
            self._wake.set()
            return entry
        if self._draining:  # the queue is full
            self._sending.failed(redis.ConnectionError(
                f"{MAX_QUEUED} messages wait to be published: Redis does not keep up"))
            heard = False
        else:
            heard = self._publish_now(entry[0], entry[1])
        if waiter is not None:
            waiter.heard = heard
        return None

    def _publish_now(self, channel: str, data: str) -> bool:
        try:
            heard = self._redis.publish(channel, data)
        except redis.RedisError as exc:
            self._sending.failed(exc)
            return False
        self._sending.answered()
        return bool(heard)

    # --- the drainer ---------------------------------------------------------------------

    def _drain(self) -> None:
        try:
            while True:
                # Cleared before taking: a message queued after the take sets it again.
                self._wake.clear()
                batch = self._take(BATCH)
                if batch:
                    self._send_batch(batch)
                elif self._running:
                    self._wake.wait()
                else:
                    break
        finally:
            # Stopped (or a bug): from now on senders publish themselves. What was queued
            # before they could know goes out now, in order, so no waiter waits forever.
            with self._lock:
                self._draining = False
            while rest := self._take(BATCH):
                self._send_batch(rest)
            self._stopped.set()

    def _take(self, most: int) -> list[tuple[str, str, _Waiter | None]]:
        """Up to `most` messages, oldest first, but those their senders took back."""
        batch: list[tuple[str, str, _Waiter | None]] = []
        with self._lock:
            while self._queue and len(batch) < most:
                entry = self._queue.popleft()
                waiter = entry[2]
                if waiter is not None:
                    if waiter.withdrawn:
                        continue
                    waiter.taken = True
                batch.append(entry)
        return batch

    def _send_batch(self, batch: list[tuple[str, str, _Waiter | None]]) -> None:
        self.in_flight = len(batch)
        try:
            heard: list[Any]
            if len(batch) == 1:  # a quiet turn: a pipeline of one costs more than its PUBLISH
                heard = [self._redis.publish(batch[0][0], batch[0][1])]
            else:
                pipe = self._redis.pipeline(transaction=False)
                for channel, data, _ in batch:
                    pipe.publish(channel, data)
                heard = pipe.execute(raise_on_error=False)
        # Anything: the drainer must outlive it, and every waiter must learn its fate.
        except Exception as exc:  # noqa: BLE001 - see above
            self._sending.failed(exc)
            self._settle(batch, [False] * len(batch))
            return
        failed = next((h for h in heard if isinstance(h, Exception)), None)
        if failed is None:
            self._sending.answered()
        else:
            self._sending.failed(failed)
        self._settle(batch, [not isinstance(h, Exception) and bool(h) for h in heard])

    def _settle(self, batch: list[tuple[str, str, _Waiter | None]], heard: list[bool]) -> None:
        self.in_flight = 0
        for (_, _, waiter), fate in zip(batch, heard, strict=True):
            if waiter is not None:
                waiter.heard = fate
                waiter.done.set()
