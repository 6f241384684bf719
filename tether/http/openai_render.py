"""How a relayed answer looks to an OpenAI client: the publisher's JSON verbatim, or SSE
`data:` lines ending with `data: [DONE]` (an `event: error` when it fails midway).

A renderer only writes: what the client is to get, and when, is the InferState's
(tether.actors.infer_state). streams.Renderer is the shape another API's renderer takes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import falcon

from tether import errors
from tether.actors import messages as m
from tether.actors.infer_state import End
from tether.common import sse
from tether.errors import TetherError
from tether.http.streams import SSE_HEADERS

DONE = "data: [DONE]\n\n"


def ask_for_usage(body: dict[str, Any], endpoint: str,
                  streaming: bool) -> tuple[dict[str, Any], bool]:
    """A streamed chat completion carries its usage only when asked (docs/protocol.md, Usage):
    the hub always asks (`stream_options.include_usage`). Returns the body to send and
    whether the client did not ask itself, so that its renderer holds the usage chunk back."""
    if not streaming or endpoint != "chat/completions":
        return body, False
    options = body.get("stream_options")
    options = options if isinstance(options, Mapping) else {}
    if options.get("include_usage") is True:
        return body, False
    return {**body, "stream_options": {**options, "include_usage": True}}, True


def is_usage_chunk(data: str) -> bool:
    """A chat stream's usage chunk: no choices, only the usage (read only when it may be:
    every chunk of a stream that asked for usage mentions it, as null)."""
    if '"choices":[]' not in data and '"choices": []' not in data:
        return False
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and \
        chunk.get("usage") is not None


class OpenAIRenderer:
    def __init__(self, hide_usage: bool = False) -> None:
        """`hide_usage`: the hub asked for the usage chunk, the client did not."""
        self.hide_usage = hide_usage

    def answer(self, resp: falcon.Response, end: m.Completed) -> None:
        resp.status = end.status
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(end.body).encode()

    def begin(self, resp: falcon.Response) -> None:
        resp.status = falcon.HTTP_200
        resp.content_type = "text/event-stream"
        resp.set_headers(SSE_HEADERS)

    def idle(self, waking: bool) -> str:
        return sse.comment("waking" if waking else "keepalive")

    def part(self, chunks: m.Chunks) -> str:
        return "".join(f"data: {data}\n\n" for data in chunks.data
                       if not (self.hide_usage and is_usage_chunk(data)))

    def end(self, end: End) -> str:
        match end:
            case m.StreamDone():
                return DONE
            case m.Completed() if 200 <= end.status < 300:
                body = "" if end.body is None else f"data: {sse.dumps(end.body)}\n\n"
                return body + DONE
            case m.Completed():
                return sse.frame("error", sse.dumps(error_envelope(end.status, end.body)))
            case m.Failed():
                return error_event(end.error)


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
