"""MeteredReply: a request's reply channel that observes the events on their way to the
HTTP handler (tether.observability.metrics counts them, the outcome gets one log line).

It lives with the actors because it reads their reply events (messages.py); it only calls
down into tether.observability.metrics and tether.common.logs. Observing never raises into
the actor that puts.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

from tether.actors import messages as m
from tether.common import logs
from tether.observability import metrics

log = logging.getLogger("tether.requests")


class MeteredReply(queue.Queue):
    """Dispatch (queue wait), first chunk, and the outcome: the first terminal event, or a
    cancel of the task (see `cancelled`)."""

    def __init__(self, llm: str, endpoint: str) -> None:
        super().__init__()
        self.llm = llm  # an Llm that exists: unknown names are refused before this
        self.endpoint = endpoint
        self.request_id = logs.request_id()  # of the request that creates this channel
        self.task_id: str | None = None
        self._started = time.monotonic()
        self._dispatched = False
        self._chunked = False
        self._done = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            self._observe(item)
        except Exception:  # noqa: BLE001 - observing must never break what it observes
            log.exception("metrics: observing a reply event failed")
        super().put(item, block, timeout)

    def _observe(self, item: Any) -> None:
        if self._done:
            return
        elapsed = time.monotonic() - self._started
        if isinstance(item, m.Dispatched):
            if not self._dispatched:
                self._dispatched = True
                self.task_id = item.task_id
                metrics.queue_waited(self.llm, elapsed)
                if log.isEnabledFor(logging.DEBUG):  # its fields cost more than the check
                    log.debug("dispatched", extra=self._fields(duration_ms=_ms(elapsed)))
        elif isinstance(item, m.Chunks):
            if not self._chunked:
                self._chunked = True
                metrics.first_chunk(self.llm, elapsed)
        elif isinstance(item, m.Completed):
            self._finish(elapsed, item.status, None if item.status < 400 else "backend_error")
        elif isinstance(item, m.StreamDone):
            self._finish(elapsed, 200, None)
        elif isinstance(item, m.Failed):
            self._finish(elapsed, item.error.status, item.error.code)
        elif type(item).__name__ == "ClientGone":  # tether.http.streams.ClientGone (above us)
            self._finish(elapsed, 499, "client_gone")

    def cancelled(self, reason: str) -> None:
        """The task was cancelled (client gone, or the relay gave up): that is its outcome,
        unless one was already seen. No event reaches a cancelled request's channel."""
        if not self._done:
            code = 499 if reason == "client_gone" else 504
            self._finish(time.monotonic() - self._started, code, reason)

    def _fields(self, **more: Any) -> dict[str, Any]:
        return {"request_id": self.request_id, "llm": self.llm, "endpoint": self.endpoint,
                **({"task_id": self.task_id} if self.task_id else {}), **more}

    def _finish(self, elapsed: float, status: int, code: str | None) -> None:
        self._done = True
        metrics.request_done(self.llm, self.endpoint, status, code, elapsed)
        level = logging.WARNING if status >= 500 else logging.INFO
        log.log(level, "request %s %s -> %d%s in %d ms", self.llm, self.endpoint, status,
                f" {code}" if code else "", _ms(elapsed),
                extra=self._fields(status=status, code=code, duration_ms=_ms(elapsed)))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
