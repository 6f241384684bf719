"""Infer: a request relayed to an Llm, the native way (POST /api/v1/llms/{name}/infer) or
OpenAI's (POST /v1/chat/completions, …, where any OpenAI client points `base_url` at
`{hub}/v1`). The two differ only by how the Llm is named: the path's `{name}`, or the
body's `model`."""

from __future__ import annotations

import falcon

from tether.actors.system import ActorSystem
from tether.http import auth, schemas
from tether.http.body import BodyLimits
from tether.http.limits import Limiter
from tether.http.operation import AFFINITY, RELAYED_EVENTS, Operation, json_body
from tether.http.relay import Relay

ANY: dict = {}  # a relayed answer is whatever the publisher's backend or upstream said


def _relayed(summary: str, request: dict) -> Operation:
    return Operation(summary, request=request, ok=ANY, relayed=True, limited=True,
                     params=(AFFINITY,), events=RELAYED_EVENTS)


NATIVE = _relayed("Chat completion on an Llm", schemas.CHAT_REQUEST)
# POST /v1/{endpoint}: the publisher calls that path of its backend.
V1 = {
    "chat/completions": _relayed("OpenAI chat completions", schemas.V1_CHAT),
    "completions": _relayed("OpenAI completions", schemas.V1_COMPLETION),
    "embeddings": _relayed("OpenAI embeddings", schemas.V1_EMBEDDING),
    "responses": _relayed("OpenAI Responses API", schemas.V1_RESPONSES),
}


class Infer:
    role = "client"

    def __init__(self, system: ActorSystem, relay: Relay, limiter: Limiter,
                 operation: Operation, endpoint: str = "chat/completions") -> None:
        self.limit = BodyLimits.of(system.settings)
        self.relay = relay
        self.limiter = limiter
        self.endpoint = endpoint
        self.operations = {"POST": operation}

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict,
                name: str | None = None) -> None:
        name = body["model"] if name is None else name
        auth.check_llm(req.context.caller, name)
        release = self.limiter.admit(req.context.caller)
        self.relay.respond(req, resp, name, body, self.endpoint, release=release)
