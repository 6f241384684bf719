"""Streamed response bodies: the publisher's task stream (SSE), and a client's streamed
answer in its API's shape (a Renderer's: SSE for OpenAI clients).

Generators here never touch the database; they drain a queue, batch what is ready into one
write, and tell actors (never ask) when they end.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import falcon

from tether import errors
from tether.actors import messages as m
from tether.actors.infer_state import End, Step
from tether.common import sse
from tether.errors import TetherError
from tether.http.attempt import Attempt

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


class Renderer(Protocol):
    """How an answer looks to one API's clients (openai_render.OpenAIRenderer,
    ollama.render.OllamaRenderer). The text methods return what to write; what the client
    gets, and when, is the Attempt's."""

    def answer(self, resp: falcon.Response, end: m.Completed) -> None:
        """The whole answer at once, before anything of a stream went out."""

    def begin(self, resp: falcon.Response) -> None:
        """A stream begins: its status and headers."""

    def idle(self, waking: bool) -> str:
        """Nothing came for keepalive_s (the backend wakes, when `waking`); "" to send
        nothing (a format without comments: the headers then wait for the first part)."""

    def part(self, chunks: m.Chunks) -> str:
        """Chunks of the answer; "" when they show the client nothing yet."""

    def end(self, end: End) -> str:
        """The stream's last event."""


def client_stream(
    attempt: Attempt,
    renderer: Renderer,
    first: list[str],
    keepalive_s: float,
    deadline_s: float,
    on_end: Callable[[bool], None],
) -> Iterator[bytes]:
    """Relay an attempt's events after the 200 went out. `on_end(finished)` runs last."""
    finished = False
    idle = 0.0
    try:
        if first:
            yield "".join(first).encode()
        while True:
            got = attempt.next(keepalive_s)
            if got is None:
                idle += keepalive_s
                if idle >= deadline_s:  # a safety net: actors' own timers fire long before
                    attempt.stop("no_answer")
                    yield renderer.end(m.Failed(no_answer(deadline_s))).encode()
                    return
                idle_text = renderer.idle(attempt.state.waking)
                if idle_text:  # NDJSON has no comments: nothing goes out
                    yield idle_text.encode()
                continue
            idle = 0.0
            out: list[str] = []
            while got is not None:  # with all that is ready: one write
                if render(renderer, *got, out):
                    finished = True
                    break
                got = attempt.next(None)
            if out:
                yield "".join(out).encode()
            if finished or attempt.state.gone:
                return
    finally:
        on_end(finished)


def render(renderer: Renderer, step: Step, shown: Any, out: list[str]) -> bool:
    """Append what a step shows the client of a stream to `out`; True at the answer's end."""
    if step is Step.PART:
        out.append(renderer.part(shown))
    elif step is Step.END:
        out.append(renderer.end(shown))
        return True
    return False


def no_answer(seconds: float) -> TetherError:
    return errors.INFER_TIMEOUT(source="the publisher", seconds=seconds)
