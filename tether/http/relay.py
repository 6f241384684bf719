"""Answering a client from its reply channel: a plain JSON response, or an SSE stream.

The status must be chosen before the first byte. A streaming request waits for its first
event that shows the client something (or `keepalive_s`, when its renderer has something to
send meanwhile: SSE has comments, NDJSON nothing); failures before then are plain answers
with their status, after it they end the stream (with `event: error`, in SSE).

The relay reads the reply channel only through an Attempt, whose InferState decides what
each event means for the client (tether.actors.infer_state), and writes only through a
Renderer (streams.Renderer), which decides how it looks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from tether.actors import messages as m
from tether.actors.infer_state import End, Step
from tether.actors.system import ActorSystem
from tether.http import disconnect, streams
from tether.http.attempt import Attempt
from tether.http.auth import usage_key
from tether.http.openai_render import OpenAIRenderer, ask_for_usage

SERVED_BY = "X-Tether-Llm"  # every relayed answer names the Llm that served it


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
        endpoint: str,
        release: Callable[[], None],
        renderer: streams.Renderer | None = None,
    ) -> None:
        """Answer `resp` from the Llm; `release()` runs once the answer is complete.
        `renderer`: how the answer looks (another API's than OpenAI's, e.g. Ollama's)."""
        streaming = bool(body.get("stream")) and endpoint != "embeddings"
        body, hide_usage = ask_for_usage(body, endpoint, streaming)  # usage is counted
        renderer = renderer or OpenAIRenderer(hide_usage)  # this request's own
        affinity = req.get_header("X-Tether-Affinity")
        key = usage_key(req.context.caller)
        system = self._system

        def start(tried: frozenset[str] | None) -> tuple[Any, Callable[[str | None], None]]:
            reply = system.infer(name, body, streaming, endpoint, affinity, tried, key=key)
            return reply, lambda served_by: system.withdraw(served_by or name, reply)

        try:
            reply, withdraw = start(None)
        except BaseException:
            release()
            raise
        req.context.outcome_logged = True  # from here the reply channel logs the outcome
        # For the usage meter: the alias the client named (None: an Llm) and, once the
        # answer begins, the Llm that served it.
        req.context.alias = name if system.alias_targets(name) is not None else None
        req.context.served_by = None
        again = start if req.context.alias is not None else None
        attempt = Attempt(reply, withdraw, system.cancel, again)
        stop_watch = disconnect.watch(req.env, attempt.client_gone)

        def finished() -> None:
            stop_watch()
            # a stream's headers may have gone out before a failover: the last try's
            req.context.served_by = attempt.served_by or name
            release()

        def served(resp: falcon.Response) -> None:
            """The answer begins: it names the Llm that serves it (an alias's target)."""
            req.context.served_by = attempt.served_by or name
            resp.set_header(SERVED_BY, req.context.served_by)

        try:
            if streaming:
                handed_over = self._start_stream(resp, attempt, renderer, finished, served)
            else:
                handed_over = False
                self._wait(resp, attempt, renderer, served)
        except BaseException:
            finished()
            attempt.stop("client_gone")
            raise
        if not handed_over:
            finished()

    def _wait(self, resp: falcon.Response, attempt: Attempt, renderer: streams.Renderer,
              served: Callable[[falcon.Response], None]) -> None:
        while True:
            got = attempt.next(self._deadline)
            if got is None:
                attempt.stop("no_answer")
                raise streams.no_answer(self._deadline)
            step, shown = got
            if step is Step.END and _whole(resp, renderer, shown, served):
                return
            if step is Step.GONE:
                attempt.stop("client_gone")
                resp.status = 499  # nobody reads it; ends the request quietly
                return

    def _start_stream(
        self, resp: falcon.Response, attempt: Attempt, renderer: streams.Renderer,
        end: Callable[[], None], served: Callable[[falcon.Response], None],
    ) -> bool:
        """Wait for the first byte's worth; True once the stream body took over the reply
        (and with it the duty to call `end()` when the answer is over)."""
        first: list[str] = []
        finished = False
        waited = 0.0
        while True:
            got = attempt.next(self._keepalive)
            if got is None:
                waited += self._keepalive
                if waited >= self._deadline:
                    attempt.stop("no_answer")
                    raise streams.no_answer(self._deadline)
                idle = renderer.idle(attempt.state.waking)
                if not idle:
                    continue  # a format without comments (NDJSON): the headers wait on
                first.append(idle)
                break
            step, shown = got
            if step is Step.END and _whole(resp, renderer, shown, served):
                return False  # nothing streamed yet: the plain answer
            if step is Step.GONE:
                attempt.stop("client_gone")
                resp.status = 499
                return False
            if step is not Step.WAIT:  # Chunks or StreamDone
                finished = streams.render(renderer, step, shown, first)
                if finished or any(first):
                    break  # the stream begins (not on chunks that show nothing yet)
        served(resp)
        renderer.begin(resp)
        if finished:
            end()
            resp.data = "".join(first).encode()
            return True

        def on_end(finished: bool) -> None:
            end()
            if not finished:
                attempt.stop("client_gone")

        resp.stream = streams.client_stream(
            attempt, renderer, first, self._keepalive, self._deadline, on_end
        )
        return True


def _whole(resp: falcon.Response, renderer: streams.Renderer, end: End,
           served: Callable[[falcon.Response], None]) -> bool:
    """Answer with `end` alone, before anything of a stream went out: a publisher's answer
    with its own status (verbatim), a hub error as a plain error (raised). False for
    StreamDone, which only ends a stream."""
    if isinstance(end, m.Failed):
        raise end.error
    if isinstance(end, m.Completed):
        served(resp)
        renderer.answer(resp, end)
        return True
    return False
