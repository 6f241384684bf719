"""The OpenAI-compatible front door: any OpenAI client points `base_url` at `{hub}/v1`."""

from __future__ import annotations

import calendar

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.body import read_json
from tether.http.limits import Limiter
from tether.http.relay import Relay
from tether.store import llms as store
from tether.store.models import INACTIVE, Llm


class Relayed:
    """POST /v1/{chat/completions,completions,embeddings,responses}: relayed with `endpoint`
    set (the publisher calls that path of its backend)."""

    role = "client"

    def __init__(self, system: ActorSystem, relay: Relay, limiter: Limiter, schema: dict,
                 endpoint: str) -> None:
        self.limit = system.settings.max_body_bytes
        self.relay = relay
        self.limiter = limiter
        self.schema = schema
        self.endpoint = endpoint

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = schemas.validate(self.schema, read_json(req, self.limit))
        release = self.limiter.admit(req.context.caller)
        self.relay.respond(req, resp, body["model"], body, self.endpoint, release=release)


def _model(row: Llm) -> dict:
    return {"id": row.name, "object": "model",
            "created": calendar.timegm(row.created_at.timetuple()), "owned_by": "tether"}


class Models:
    role = "client"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        rows = [row for row in store.list_all() if row.status != INACTIVE]
        resp.media = {"object": "list", "data": [_model(row) for row in rows]}


class Model:
    role = "client"

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        row = store.get(name)
        if row is None or row.status == INACTIVE:
            raise errors.LLM_NOT_FOUND(name=name)
        resp.media = _model(row)
