"""MeteredReply: a request's reply channel that observes the events on their way to the
HTTP handler (tether.observability.metrics counts them, the outcome gets one log line).

It lives with the actors because it reads their reply events (with an InferState, as the
relay does); it only calls down into tether.observability.metrics and tether.common.logs.
Observing never raises into the actor that puts.

A Dispatched is recorded on the channel, not queued (`dispatched`, `unread_dispatch`): it
shows the client nothing, so waking the relay greenlet for it was a hop of every request
spent on bookkeeping. The relay's Attempt reads it from here when it next wakes (or stops
the request). Only a Dispatched after chunks is queued as well: in order, it ends the
answer (a task sent again after its output began: infer_state.InferState.rerun).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from tether import errors
from tether.actors import messages as m
from tether.actors import usage
from tether.actors.infer_state import InferState, Step
from tether.common import logs
from tether.observability import metrics

log = logging.getLogger("tether.requests")


class MeteredReply(queue.Queue):
    """Dispatch (queue wait), first chunk, and the outcome: the first terminal event, or a
    cancel of the task (see `cancelled`)."""

    def __init__(self, llm: str, endpoint: str, key: str | None = None,
                 counter: usage.UsageCounter | None = None, alias: str | None = None) -> None:
        super().__init__()
        self.llm = llm  # an Llm that exists (unknown names are refused before this), or an
        # alias until its target took the request (Routed): metrics count that target
        self.alias = alias  # the alias the client named, if it named one
        self.endpoint = endpoint
        # Usage (tether.actors.usage): the client's key, and the last chunk that mentions
        # a usage, read only once the answer ended.
        self.key = key
        self._counter = counter
        self._usage_chunk: str | None = None
        self.request_id = logs.request_id()  # of the request that creates this channel
        self.task_id: str | None = None
        self._started = time.monotonic()
        self._state = InferState(llm=llm)  # what its events said: the same reading as the relay's
        self._done = False  # the outcome was logged
        # The latest Dispatched put (where the request's task runs now: a stop cancels it
        # there), and the latest not queued with how many events were queued before it, so
        # the reader folds it in at its place among them (tether.http.attempt).
        self.dispatched: m.Dispatched | None = None
        self.unread_dispatch: tuple[m.Dispatched, int] | None = None
        self._queued = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            self._observe(item)
        except Exception:  # noqa: BLE001 - observing must never break what it observes
            log.exception("metrics: observing a reply event failed")
        if isinstance(item, m.Dispatched):
            self.dispatched = item
            if not self._state.streamed:  # nothing went out yet: not the reader's to see now
                self.unread_dispatch = (item, self._queued)
                return
        self._queued += 1
        super().put(item, block, timeout)

    def _observe(self, item: Any) -> None:
        if self._done:
            return
        state = self._state
        was_dispatched, had_chunks = state.dispatched is not None, state.streamed
        step = state.apply(item)
        if isinstance(item, m.Routed):
            self.llm = item.llm
        elapsed = time.monotonic() - self._started
        if step is Step.PART and self._counter is not None:
            for data in item.data:
                if '"usage"' in data:  # a key of the JSON: text in it would be escaped
                    self._usage_chunk = data
        if step is Step.END or step is Step.GONE:
            assert state.outcome is not None
            self._finish(elapsed, *state.outcome)
            if step is Step.END:
                self._count_usage(item)
        elif state.dispatched is not None and not was_dispatched:
            self.task_id = state.dispatched.task_id
            metrics.queue_waited(self.llm, elapsed)
            if log.isEnabledFor(logging.DEBUG):  # its fields cost more than the check
                log.debug("dispatched", extra=self._fields(duration_ms=_ms(elapsed)))
        elif step is Step.PART and not had_chunks:
            metrics.first_chunk(self.llm, elapsed)

    def _count_usage(self, end: Any) -> None:
        """An answer from the Llm (any status) counts, with its usage; the hub's own errors
        do not (a refusal, a timeout, a lost publisher), nor a request the client left."""
        if self._counter is None:
            return
        if isinstance(end, m.Failed) and end.error.code in HUB_CODES:
            return
        found = usage.usage_of(end.body) if isinstance(end, m.Completed) else None
        if found is None and self._usage_chunk is not None:
            found = usage.usage_of_chunk(self._usage_chunk)
        self._counter.count(self.key, self.llm, self.alias, found)

    def cancelled(self, reason: str) -> None:
        """The task was cancelled (client gone, or the relay gave up): that is its outcome,
        unless one was already seen. No event reaches a cancelled request's channel."""
        if not self._done:
            code = 499 if reason == "client_gone" else 504
            self._finish(time.monotonic() - self._started, code, reason)

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"request_id": self.request_id, "llm": self.llm, "endpoint": self.endpoint,
                **({"task_id": self.task_id} if self.task_id else {}),
                **({"alias": self.alias} if self.alias else {}), **more}

    def _finish(self, elapsed: float, status: int, code: str | None) -> None:
        self._done = True
        metrics.request_done(self.llm, self.endpoint, status, code, elapsed)
        if self.alias is not None:
            metrics.alias_request_done(self.alias, self.llm, status)
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "request %s %s -> %d%s in %d ms", self.llm, self.endpoint, status,
                f" {code}" if code else "", _ms(elapsed),
                extra=self._fields(status=status, code=code, duration_ms=_ms(elapsed)))


# The codes of errors the hub makes itself: a Failed with another code is an error result
# of the publisher (errors.from_publisher), an answer of the Llm.
HUB_CODES = frozenset(code.code for code in errors.CATALOGUE.values()) - {"publisher_error"}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
