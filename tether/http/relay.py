"""Answering a client from its reply channel: a plain JSON response, or an SSE stream.

The status must be chosen before the first byte. A streaming request waits for its first
event (or `keepalive_s`); failures before then are plain JSON with their status, after it
they end the stream with `event: error`.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Callable
from typing import Any

import falcon

from tether.actors import messages as m
from tether.actors.system import ActorSystem
from tether.common import sse
from tether.http import disconnect, streams


class Relay:
    def __init__(self, system: ActorSystem) -> None:
        self._system = system
        s = system.settings
        self._keepalive = s.keepalive_s
        # Actors answer every request through their own timers; this bound only guards
        # against a lost actor, so it is generous.
        self._deadline = s.wake_timeout_s + s.infer_timeout_s + 30.0

    def respond(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        name: str,
        body: dict[str, Any],
        endpoint: str = "chat/completions",
        release: Callable[[], None] = lambda: None,
    ) -> None:
        """Answer `resp` from the Llm; `release()` runs once the answer is complete."""
        streaming = bool(body.get("stream")) and endpoint != "embeddings"
        try:
            reply = self._system.infer(name, body, streaming, endpoint,
                                       req.get_header("X-Tether-Affinity"))
        except BaseException:
            release()
            raise
        req.context.outcome_logged = True  # from here the reply channel logs the outcome
        stop_watch = disconnect.watch(req.env, lambda: reply.put(streams.ClientGone()))
        # Until it is dispatched, a request that ends unanswered is withdrawn from its wait.
        state = streams.InferState(withdraw=lambda: self._system.withdraw(name, reply))

        def finished() -> None:
            stop_watch()
            release()

        try:
            if streaming:
                handed_over = self._start_stream(resp, reply, state, finished)
            else:
                handed_over = False
                self._wait(resp, reply, state)
        except BaseException:
            finished()
            self._cancel(state, "client_gone")
            raise
        if not handed_over:
            finished()

    def _cancel(self, state: streams.InferState, reason: str) -> None:
        if state.dispatched is not None:
            self._system.cancel(state.dispatched, reason)
        else:
            state.withdraw()

    def _next(self, reply: queue.Queue, timeout: float) -> Any:
        try:
            return reply.get(timeout=timeout)
        except queue.Empty:
            return None

    def _wait(self, resp: falcon.Response, reply: queue.Queue, state: streams.InferState) -> None:
        while True:
            event = self._next(reply, self._deadline)
            if event is None:
                self._cancel(state, "no_answer")
                raise streams.no_answer(self._deadline)
            if isinstance(event, m.Dispatched):
                state.dispatched = event
            elif isinstance(event, m.Completed):
                _verbatim(resp, event)
                return
            elif isinstance(event, m.Failed):
                raise event.error
            elif isinstance(event, streams.ClientGone):
                self._cancel(state, "client_gone")
                resp.status = 499  # nobody reads it; ends the request quietly
                return
            # WakePending: keep waiting

    def _start_stream(
        self, resp: falcon.Response, reply: queue.Queue, state: streams.InferState,
        end: Callable[[], None],
    ) -> bool:
        """Wait for the first byte's worth; True once the stream body took over the reply
        (and with it the duty to call `end()` when the answer is over)."""
        first: list[str] = []
        waited = 0.0
        while True:
            event = self._next(reply, self._keepalive)
            if event is None:
                waited += self._keepalive
                if waited >= self._deadline:
                    self._cancel(state, "no_answer")
                    raise streams.no_answer(self._deadline)
                first.append(sse.comment("waking" if state.waking else "keepalive"))
                break
            if isinstance(event, m.Dispatched):
                state.dispatched = event
            elif isinstance(event, m.WakePending):
                state.waking = True
            elif isinstance(event, m.Failed):
                raise event.error
            elif isinstance(event, m.Completed):
                _verbatim(resp, event)  # nothing streamed yet: the plain answer, verbatim
                return False
            elif isinstance(event, streams.ClientGone):
                self._cancel(state, "client_gone")
                resp.status = 499
                return False
            else:  # Chunks or StreamDone: the stream begins
                if streams.render_event(event, state, first):
                    state.finished = True
                break
        resp.status = falcon.HTTP_200
        resp.content_type = "text/event-stream"
        resp.set_headers(streams.SSE_HEADERS)

        def on_end(finished: bool) -> None:
            end()
            if not finished:
                self._cancel(state, "client_gone")

        if state.finished:
            end()
            resp.data = "".join(first).encode()
            return True
        resp.stream = streams.client_stream(
            reply, first, state, self._keepalive, self._deadline, on_end
        )
        return True


def _verbatim(resp: falcon.Response, event: m.Completed) -> None:
    resp.status = event.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = json.dumps(event.body).encode()

