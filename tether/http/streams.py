"""SSE response bodies: the publisher's task stream and a client's streamed completion.

Generators here never touch the database; they drain a queue, batch what is ready into one
write, and tell actors (never ask) when they end.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tether import errors
from tether.actors import messages as m
from tether.common import sse
from tether.errors import TetherError

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _drain(outbox: queue.Queue, first: Any, out: list[str]) -> Any:
    """Append `first` and everything already queued; return a Close sentinel if met."""
    item = first
    while True:
        if isinstance(item, m.Close):
            return item
        out.append(item)
        try:
            item = outbox.get_nowait()
        except queue.Empty:
            return None


def publisher_stream(
    outbox: queue.Queue, keepalive_s: float, on_end: Callable[[], None]
) -> Iterator[bytes]:
    try:
        while True:
            try:
                item = outbox.get(timeout=keepalive_s)
            except queue.Empty:
                yield sse.comment("keepalive").encode()
                continue
            out: list[str] = []
            close = _drain(outbox, item, out)
            if close is not None and close.retry_ms is not None:
                out.append(f"retry: {close.retry_ms}\n\n")
            if out:
                yield "".join(out).encode()
            if close is not None:
                return
    finally:
        on_end()


class ClientGone:
    """Put on a reply channel by the disconnect watcher."""


@dataclass
class InferState:
    """What the relay learned about one infer request from its reply channel so far."""

    withdraw: Callable[[], None]  # until dispatched: leave the Llm's wait queue
    dispatched: m.Dispatched | None = None  # from then on, cancel through it instead
    waking: bool = False  # the backend is waking: keepalives say so
    chunks: bool = False  # chunks went out: a final Completed body is not repeated
    finished: bool = False  # the stream's last event was rendered
    gone: bool = False  # the client disconnected


def error_event(error: TetherError) -> str:
    return sse.frame("error", sse.dumps(error.envelope()))


def error_envelope(status: int, body: Any) -> dict[str, Any]:
    """What `event: error` carries for a publisher's non-2xx answer once the stream began:
    its body when that already is an OpenAI error envelope (SDKs read `error.message`),
    else an envelope with code `publisher_error` that quotes what the backend said."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return body
    said = body
    if isinstance(body, dict):  # {"error": "…"} (Ollama), {"detail": "…"} (FastAPI), …
        said = next((body[k] for k in ("error", "detail", "message")
                     if isinstance(body.get(k), str)), None)
    message = f"the backend answered {status}"
    if isinstance(said, str) and said.strip():
        message += f": {said.strip()[:500]}"
    return errors.PUBLISHER_ERROR.at(status if 400 <= status <= 599 else 502,
                                     why=message).envelope()


def chunk_events(chunks: m.Chunks) -> str:
    return "".join(f"data: {data}\n\n" for data in chunks.data)


DONE = "data: [DONE]\n\n"


def client_stream(
    reply: queue.Queue,
    first: list[str],
    state: InferState,
    keepalive_s: float,
    deadline_s: float,
    on_end: Callable[[bool], None],
) -> Iterator[bytes]:
    """Relay reply events as SSE after the 200 went out. `on_end(finished)` runs last."""
    finished = False
    idle = 0.0
    try:
        if first:
            yield "".join(first).encode()
        while True:
            try:
                event = reply.get(timeout=keepalive_s)
            except queue.Empty:
                idle += keepalive_s
                if idle >= deadline_s:  # a safety net: actors' own timers fire long before
                    yield error_event(no_answer(deadline_s)).encode()
                    return
                yield sse.comment("waking" if state.waking else "keepalive").encode()
                continue
            idle = 0.0
            out: list[str] = []
            while True:
                done = render_event(event, state, out)
                if done:
                    finished = True
                    break
                try:
                    event = reply.get_nowait()
                except queue.Empty:
                    break
            if out:
                yield "".join(out).encode()
            if finished or state.gone:
                return
    finally:
        on_end(finished)


def render_event(event: Any, state: InferState, out: list[str]) -> bool:
    """Render one event into `out`; True when the stream is over."""
    if isinstance(event, m.Chunks):
        state.waking = False
        state.chunks = True
        out.append(chunk_events(event))
    elif isinstance(event, m.StreamDone):
        out.append(DONE)
        return True
    elif isinstance(event, m.Completed):
        if 200 <= event.status < 300:
            if not state.chunks and event.body is not None:
                out.append(f"data: {sse.dumps(event.body)}\n\n")
            out.append(DONE)
        else:
            out.append(sse.frame("error", sse.dumps(error_envelope(event.status, event.body))))
        return True
    elif isinstance(event, m.Failed):
        out.append(error_event(event.error))
        return True
    elif isinstance(event, m.Dispatched):
        state.dispatched = event
        state.waking = False
    elif isinstance(event, m.WakePending):
        state.waking = True
    elif isinstance(event, ClientGone):
        state.gone = True
    return False


def no_answer(seconds: float) -> TetherError:
    return errors.INFER_TIMEOUT(source="the publisher", seconds=seconds)
