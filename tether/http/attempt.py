"""Answering a client from its Llm: its reply channel read through an InferState, and the one
way to stop it.

The relay reads a request's events only through its Attempt, so the state machine
(tether.actors.infer_state) sees every event the client's answer is made of. An Attempt knows
nothing of rendering (tether.http.openai_render).

A MeteredReply records a Dispatched instead of queueing it (tether.actors.reply): the Attempt
folds it into the state when it next reads the channel, at its place among the events (it
changes only `dispatched` and `waking`), and a stop finds the latest there at once.

A request for an alias may take several tries (docs/protocol.md, Aliases: failover): when
its target fails before any output (an answer >= 500, or the hub's own `queue_full`), the
Attempt starts the next try on a new reply channel (`again`) and reads that one instead,
under the same renderer; the relay sees one request. Each target is tried at most once.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from tether.actors import messages as m
from tether.actors.infer_state import ClientGone, End, InferState, Step

# A new try of an alias's request without the targets that failed it: its reply channel
# and how to withdraw it; None when there is nothing left to try.
Again = Callable[[frozenset[str]], "tuple[queue.Queue, Callable[[str | None], None]] | None"]


class Attempt:
    def __init__(
        self,
        reply: queue.Queue,
        withdraw: Callable[[str | None], None],
        cancel: Callable[[m.Dispatched, str], None],
        again: Again | None = None,
    ) -> None:
        """`withdraw(served_by)` takes the request out of its Llm's wait queue (an alias's
        target's, once one took it); `cancel(dispatched, reason)` stops its task where it
        runs; `again`, for an alias, starts the next try after a failure."""
        self.reply = reply
        self.state = InferState(llm=getattr(reply, "llm", "?"))
        self._withdraw = withdraw
        self._cancel = cancel
        self._stopped = False
        self._again = again
        self._tried: frozenset[str] = frozenset()
        self._failed: End | None = None  # a failed try's end: the answer if none is left
        self._failed_at: str | None = None  # the target of that try
        self._gone = False
        self._read = 0  # events taken from this try's channel
        self._folded: m.Dispatched | None = None  # the channel's recorded Dispatched, applied

    def next(self, timeout: float | None) -> tuple[Step, Any] | None:
        """The next event, folded into the state: its step and what it shows the client (the
        Chunks of a PART, `state.end` for the END); None when nothing came within `timeout`
        seconds (None: without waiting)."""
        try:
            event = self.reply.get_nowait() if timeout is None else self.reply.get(
                timeout=timeout)
        except queue.Empty:
            self._fold()
            return None
        self._fold()  # one recorded before this event was put comes first
        step = self.state.apply(event)
        self._read += 1
        self._fold()
        if step is Step.END and self.state.rerun:
            self.stop("its answer began on a task that was lost")  # the rerun's task
        if step is Step.END and self._again is not None:
            if self._failed is not None and self.state.served_by is None:
                return step, self._failed  # no target left that can serve now
            if self._fails_over() and self._next_try():
                return Step.WAIT, None
        return step, self.state.end if step is Step.END else event

    def _fold(self) -> None:
        """Apply the channel's recorded Dispatched once every event queued before it was
        read (a plain queue records none: its Dispatched events come in line)."""
        recorded = getattr(self.reply, "unread_dispatch", None)
        if recorded is not None and recorded[0] is not self._folded \
                and recorded[1] <= self._read:
            self._folded = recorded[0]
            self.state.apply(recorded[0])  # WAIT: a Dispatched before any chunk

    @property
    def served_by(self) -> str | None:
        """The alias's target whose answer the client gets (so far)."""
        return self.state.served_by or self._failed_at

    def _fails_over(self) -> bool:
        """A target failed before any output: an answer >= 500 of any origin, or the hub's
        own `queue_full` (any other answer, and anything after output, is the client's)."""
        state, end = self.state, self.state.end
        if state.streamed or state.served_by is None or self._stopped:
            return False
        if isinstance(end, m.Failed):
            return end.error.status >= 500 or end.error.code == "queue_full"
        return isinstance(end, m.Completed) and end.status >= 500

    def _next_try(self) -> bool:
        assert self._again is not None and self.state.served_by is not None
        self._tried |= {self.state.served_by}
        started = self._again(self._tried)
        if started is None:
            return False
        self._failed, self._failed_at = self.state.end, self.state.served_by
        self.reply, self._withdraw = started
        self.state = InferState(llm=self.state.llm)
        self._read, self._folded = 0, None
        if self._gone:  # the watcher told the channel of the try that just ended
            self.reply.put(ClientGone())
        return True

    def client_gone(self) -> None:
        """The client disconnected (called by its watcher): the reader learns it in turn."""
        self._gone = True
        self.reply.put(ClientGone())

    def stop(self, reason: str) -> None:
        """Stop the request where it is, once: until it is dispatched it leaves its Llm's
        wait queue, from then on its (latest) task is cancelled where it runs."""
        if self._stopped:
            return
        self._stopped = True
        # Where its task runs now: the channel's latest, which the state may not have read.
        dispatched = getattr(self.reply, "dispatched", None) or self.state.dispatched
        if dispatched is not None:
            self._cancel(dispatched, reason)
        else:
            self._withdraw(self.state.served_by)
