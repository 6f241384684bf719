"""The floor under opening a publisher session: the hub's own server (gunicorn, Tether's
gevent worker class, its gunicorn.conf.py) and falcon, answering the two requests a session
opens with, and nothing of Tether behind them: no validation, store, actors or directory.

`python -m bench.run sessions` opens as many sessions here as on the hub, in the same run:
what the hub spends above this is Tether's; this much no change inside Tether can remove.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import falcon
import gevent.event

_HELD = gevent.event.Event()  # never set: a stream stays open until its client goes


class Register:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json.loads(req.stream.read(req.content_length or 0))
        resp.media = {"providerSessionId": body["providerSessionId"], "llms": [
            {"name": p["name"], "status": "active"} for p in body["providers"]]}


class Stream:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/event-stream"
        resp.stream = self.events()

    @staticmethod
    def events() -> Iterator[bytes]:
        yield b": open\n\n"
        _HELD.wait()


app = falcon.App()
app.add_route("/api/v1/llms/_provider-register", Register())
app.add_route("/api/v1/llms/_provider-stream", Stream())
