"""Client reads and the native infer route."""

from __future__ import annotations

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.body import read_json
from tether.http.limits import Limiter
from tether.http.relay import Relay
from tether.store import llms as store


class LlmCollection:
    role = "client"

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"llms": self.system.read(store.list_all())}


class LlmItem:
    role = "client"

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        row = store.get(name)
        if row is None:
            raise errors.LLM_NOT_FOUND(name=name)
        resp.media = self.system.read([row])[0]


class Infer:
    role = "client"

    def __init__(self, system: ActorSystem, relay: Relay, limiter: Limiter) -> None:
        self.limit = system.settings.max_body_bytes
        self.relay = relay
        self.limiter = limiter

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = schemas.validate(schemas.CHAT_REQUEST, read_json(req, self.limit))
        release = self.limiter.admit(req.context.caller)
        self.relay.respond(req, resp, name, body, release=release)
