"""What one infer's reply events mean, read in one place: `InferState.apply`.

An infer's events (the reply events of messages.py) come on its reply channel: for an
alias, Routed once its target took it; Dispatched and WakePending any number of times,
Chunks when it streams, then one end: Completed, StreamDone or Failed. ClientGone is put
there too, by the HTTP relay's disconnect watcher.

Both readers of a request's events fold them with an InferState: the relay that answers the
client (tether.http.relay, through its Attempt) and the MeteredReply that meters them as they
are put (tether.actors.reply). Neither renders here: the state says what happened and what
the client is to get, the relay's renderer says how it looks.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import TypeAlias

from tether import errors
from tether.actors import messages as m


@dataclass(frozen=True)
class ClientGone:
    """The client went away: put on its reply channel by the HTTP relay's watcher."""


End: TypeAlias = m.Completed | m.StreamDone | m.Failed


class Step(enum.Enum):
    """What the reader of an event does next."""

    WAIT = "wait"  # nothing for the client: dispatched, waking (or anything after the end)
    PART = "part"  # a part of the answer (Chunks): send it
    END = "end"  # the answer's last event: send `state.end`; the request is over
    GONE = "gone"  # the client left: stop the request where it is


@dataclass(slots=True)
class InferState:
    """What one infer's events said so far."""

    # The latest: once dispatched, a request is stopped by cancelling this task where it
    # runs (a task that moved sends another); before, by leaving the Llm's wait queue.
    dispatched: m.Dispatched | None = None
    waking: bool = False  # the backend wakes (until dispatched or a chunk): idle says so
    streamed: bool = False  # chunks went out: they are the answer's body
    end: End | None = None  # the answer's last event, as the client is to get it
    gone: bool = False  # the client left
    served_by: str | None = None  # an alias's target that took the request (Routed)
    # The request's status and error code as logs and metrics count it, once known: its
    # end's, or 499 client_gone when the client left first.
    outcome: tuple[int, str | None] | None = None
    # Its answer began on a task that was lost (its home process died), and the request was
    # sent again as a new task, which would start the answer over: the reader cancels that
    # task, and the client's answer ends where it was (see `apply`).
    rerun: bool = False
    llm: str = "?"  # the name the client asked for, for an error's message

    def apply(self, event: object) -> Step:
        if self.end is not None:
            return Step.WAIT  # the answer is over: what still comes changes nothing
        match event:
            case m.Dispatched():
                restarts = (self.streamed and self.dispatched is not None
                            and event.task_id != self.dispatched.task_id)
                self.dispatched = event
                self.waking = False
                if restarts:
                    # Only the hub's bookkeeping saw the first task lost; the client saw its
                    # chunks. A second run's chunks would follow them (the chaos test saw
                    # "relays your local modelrelays your local model through one").
                    self.rerun = True
                    lost = errors.PUBLISHER_DISCONNECTED(name=self.served_by or self.llm)
                    return self._ended(m.Failed(lost), lost.status, lost.code)
                return Step.WAIT
            case m.WakePending():
                self.waking = True
                return Step.WAIT
            case m.Routed():
                self.served_by = event.llm
                return Step.WAIT
            case m.Chunks():
                self.waking = False
                self.streamed = True
                return Step.PART
            case m.Completed():
                status = event.status
                if self.streamed and 200 <= status < 300:
                    # the chunks were the body: a final 2xx body is not sent again
                    event = dataclasses.replace(event, body=None)
                return self._ended(event, status, None if status < 400 else "backend_error")
            case m.StreamDone():
                return self._ended(event, 200, None)
            case m.Failed():
                return self._ended(event, event.error.status, event.error.code)
            case ClientGone():
                self.gone = True
                self.outcome = (499, "client_gone")
                return Step.GONE
        return Step.WAIT  # Queued: for the bus router alone, it never reaches a client

    def _ended(self, event: End, status: int, code: str | None) -> Step:
        self.end = event
        self.outcome = (status, code)
        return Step.END
