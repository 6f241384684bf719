"""How a relayed answer looks to an Ollama client: one JSON object, or NDJSON — a line per
chunk as it arrives, then a last line with `done: true`, or `{"error": "…"}` when the
answer fails after its first line.

NDJSON has no comments: while a request waits (a wake, a queue) nothing is sent, and the
headers go out with the first line (`idle` and an empty `part` say so to the relay). One
renderer serves one request: it folds the stream (answers.Fold) for the last line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import falcon

from tether.actors import messages as m
from tether.actors.infer_state import End
from tether.http.ollama import answers
from tether.http.streams import SSE_HEADERS

NDJSON = "application/x-ndjson"
SERVED_BY = "X-Tether-Llm"  # the Llm that served, when the relay names it (an alias's target)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":")) + "\n"


class OllamaRenderer:
    def __init__(self, kind: str, model: str, streaming: bool,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        """`kind`: the route's (translate.KIND_*); `model`: the Llm name the answer gives,
        unless the relay names the one that served; `streaming`: the client asked for
        NDJSON."""
        self._kind = kind
        self._model = model
        self._streaming = streaming
        self._clock = clock
        self._started = clock()
        self._first: int | None = None  # when the first line's worth arrived
        self._fold = answers.Fold(kind)

    # --- streams.Renderer -----------------------------------------------------------------

    def answer(self, resp: falcon.Response, end: m.Completed) -> None:
        self._served_by(resp)
        if not 200 <= end.status < 300:
            error(resp, end.status, answers.error_message(end.status, end.body))
            return
        if end.body is None:  # chunks that showed nothing, then the end
            out = self._closing()
        elif isinstance(end.body, Mapping):
            out = [answers.whole(self._kind, self._model, end.body, self._timing())]
        else:
            error(resp, 502, "the backend's answer is not a JSON object")
            return
        resp.status = falcon.HTTP_200
        if self._streaming:  # a stream of one line: NDJSON readers read it as any other
            resp.content_type = NDJSON
            resp.data = "".join(dumps(line) for line in out).encode()
        else:
            resp.media = out[-1]

    def begin(self, resp: falcon.Response) -> None:
        self._served_by(resp)
        resp.status = falcon.HTTP_200
        resp.content_type = NDJSON
        resp.set_headers(SSE_HEADERS)  # no caching, no proxy buffering: as for SSE

    def idle(self, waking: bool) -> str:
        return ""  # NDJSON has no comments

    def part(self, chunks: m.Chunks) -> str:
        out = []
        for data in chunks.data:
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):
                continue  # not an OpenAI chunk: nothing an Ollama client could read
            piece = self._fold.piece(chunk)
            if piece is not None:
                if self._first is None:
                    self._first = self._clock()
                out.append(dumps(answers.line(self._kind, self._model, piece)))
        return "".join(out)

    def end(self, end: End) -> str:
        if isinstance(end, m.Failed):
            return dumps({"error": end.error.message})
        if isinstance(end, m.Completed):
            if not 200 <= end.status < 300:
                return dumps({"error": answers.error_message(end.status, end.body)})
            if isinstance(end.body, Mapping):  # a whole answer after all
                return dumps(answers.whole(self._kind, self._model, end.body, self._timing()))
        return "".join(dumps(line) for line in self._closing())  # StreamDone

    # ---------------------------------------------------------------------------------------

    def _served_by(self, resp: falcon.Response) -> None:
        self._model = resp.get_header(SERVED_BY) or self._model

    def _timing(self) -> answers.Timing:
        now = self._clock()
        first = self._started if self._first is None else self._first
        return answers.Timing(now - self._started, first - self._started, now - first)

    def _closing(self) -> list[dict[str, Any]]:
        """The stream's last lines: its tool calls, if any came, then `done: true`."""
        called = self._fold.called()
        out = [] if called is None else [answers.line(self._kind, self._model, called)]
        out.append(answers.final(self._kind, self._model, self._fold.finish,
                                 self._fold.usage, self._timing()))
        return out


def error(resp: falcon.Response, status: int, message: str) -> None:
    """An error before anything went out, in Ollama's shape (tether/http/ollama/errors.py
    does the same for the hub's own errors)."""
    resp.status = status
    resp.media = {"error": message}
