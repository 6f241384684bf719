"""One try at answering a client from one Llm: its reply channel read through an InferState,
and the one way to stop it.

The relay reads a request's events only through its Attempt, so the state machine
(tether.actors.infer_state) sees every event the client's answer is made of. An Attempt knows
nothing of rendering (tether.http.openai_render): answering from another Llm after a failure
would be a new Attempt under the same renderer.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from tether.actors import messages as m
from tether.actors.infer_state import ClientGone, InferState, Step


class Attempt:
    def __init__(
        self,
        reply: queue.Queue,
        withdraw: Callable[[], None],
        cancel: Callable[[m.Dispatched, str], None],
    ) -> None:
        """`withdraw()` takes the request out of its Llm's wait queue; `cancel(dispatched,
        reason)` stops its task where it runs."""
        self.reply = reply
        self.state = InferState()
        self._withdraw = withdraw
        self._cancel = cancel
        self._stopped = False

    def next(self, timeout: float | None) -> tuple[Step, Any] | None:
        """The next event, folded into the state: its step and what it shows the client (the
        Chunks of a PART, `state.end` for the END); None when nothing came within `timeout`
        seconds (None: without waiting)."""
        try:
            event = self.reply.get_nowait() if timeout is None else self.reply.get(
                timeout=timeout)
        except queue.Empty:
            return None
        step = self.state.apply(event)
        return step, self.state.end if step is Step.END else event

    def client_gone(self) -> None:
        """The client disconnected (called by its watcher): the reader learns it in turn."""
        self.reply.put(ClientGone())

    def stop(self, reason: str) -> None:
        """Stop the request where it is, once: until it is dispatched it leaves its Llm's
        wait queue, from then on its (latest) task is cancelled where it runs."""
        if self._stopped:
            return
        self._stopped = True
        if self.state.dispatched is not None:
            self._cancel(self.state.dispatched, reason)
        else:
            self._withdraw()
