"""The status page: GET /status (HTML), its script and style, GET /status/state (JSON) and
GET /status/events (the live feed, SSE).

Everything comes from the board (tether.observability.board), which the actors keep
current: no handler here and nothing in the feed's generator touches the database or asks
an actor. With several hub processes the board merges in what the others share (Redis), so
every process shows the whole cluster's Llms and sessions.

The page and its files hold no data and need no key. The state and the feed are reads
(client role, as GET /api/v1/llms). The page sends the key in an Authorization header of a
fetch() whose body it reads as a stream, rather than using EventSource: EventSource cannot
send headers, and a key in a query string ends up in proxy logs and browser history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon

from tether.common import sse
from tether.http import auth, disconnect, schemas, streams
from tether.http.operation import SSE, Operation
from tether.observability.board import BOARD, Watcher
from tether.store.keys import Caller

STATIC = Path(__file__).resolve().parent.parent / "static"
# Changes arrive in bursts (a wake touches an Llm several times within a millisecond): one
# snapshot per gap at most, so a watcher costs the hub little however busy it is.
MIN_GAP_S = 0.2


class Page:
    role = None  # the page holds no data; it asks for a key when the feed wants one

    def __init__(self, name: str, content_type: str, summary: str) -> None:
        self.path = STATIC / name
        self.content_type = content_type
        self.operations = {"GET": Operation(summary, media=content_type.split(";")[0])}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.content_type
        resp.data = self.path.read_bytes()
        resp.set_header("Cache-Control", "no-cache")


class State:
    role = "client"
    operations = {"GET": Operation("The hub's live state", ok=schemas.STATE)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = visible(BOARD.snapshot(whole_cluster=True), req.context.caller)


def visible(snapshot: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The state a key may see: a key limited to some Llms sees only those (their rows and
    errors), as the lists show it only its names."""
    if caller.llms is None:
        return snapshot
    return {**snapshot,
            "llms": [r for r in snapshot["llms"] if auth.allow_llm(caller, r["name"])],
            "errors": [e for e in snapshot["errors"] if auth.allow_llm(caller, e["llm"])]}


class Events:
    role = "client"
    operations = {"GET": Operation("The live state as SSE", media=SSE,
                                   events=(("state", schemas.STATE),))}

    def __init__(self, keepalive_s: float) -> None:
        self.keepalive_s = keepalive_s

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        watcher = BOARD.watch()
        gone: list[bool] = []

        def on_gone() -> None:
            gone.append(True)
            watcher.notify()

        stop_watch = disconnect.watch(req.env, on_gone)
        resp.content_type = "text/event-stream"
        resp.set_headers(streams.SSE_HEADERS)
        resp.stream = _feed(watcher, gone, self.keepalive_s, stop_watch, req.context.caller)


def _feed(
    watcher: Watcher, gone: list[bool], keepalive_s: float, stop_watch: Callable[[], None],
    caller: Caller,
) -> Iterator[bytes]:
    """A `state` event with the whole snapshot first and after every change; a quiet change
    (a heartbeat) goes out by the next keepalive instead of a comment."""
    sent = -1
    try:
        while not gone:
            if not watcher.wait(keepalive_s) and BOARD.version == sent:
                yield sse.comment("keepalive").encode()
                continue
            if gone:
                return
            if watcher.closed:  # the hub is shutting down: come back in a second
                yield b"retry: 1000\n\n"
                return
            sent = BOARD.version
            snapshot = BOARD.snapshot(whole_cluster=True)
            yield sse.frame("state", sse.dumps(visible(snapshot, caller))).encode()
            # Cooperative under gevent; what changed meanwhile follows. A big hub's snapshot
            # costs more: fewer of them (10,000 Llms: one a second at most).
            time.sleep(MIN_GAP_S + len(snapshot["llms"]) * 1e-4)
    finally:
        watcher.close()
        stop_watch()
