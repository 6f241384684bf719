"""Infer: a request relayed to an Llm, the native way (POST /api/v1/llms/{name}/infer) or
OpenAI's (POST /v1/chat/completions, …, where any OpenAI client points `base_url` at
`{hub}/v1`). The two differ only by how the Llm is named: the path's `{name}`, or the
body's `model`."""

from __future__ import annotations

import falcon

from tether.actors.system import ActorSystem
from tether.http import auth, schemas
from tether.http.limits import Limiter
from tether.http.operation import Operation, json_body
from tether.http.relay import Relay

ANY: dict = {}  # a relayed answer is whatever the publisher's backend or upstream said

NATIVE = Operation("Chat completion on an Llm", request=schemas.CHAT_REQUEST, ok=ANY,
                   relayed=True)
# POST /v1/{endpoint}: the publisher calls that path of its backend.
V1 = {
    "chat/completions": Operation("OpenAI chat completions", request=schemas.V1_CHAT,
                                  ok=ANY, relayed=True),
    "completions": Operation("OpenAI completions", request=schemas.V1_COMPLETION, ok=ANY,
                             relayed=True),
    "embeddings": Operation("OpenAI embeddings", request=schemas.V1_EMBEDDING, ok=ANY,
                            relayed=True),
    "responses": Operation("OpenAI Responses API", request=schemas.V1_RESPONSES, ok=ANY,
                           relayed=True),
}


class Infer:
    role = "client"

    def __init__(self, system: ActorSystem, relay: Relay, limiter: Limiter,
                 operation: Operation, endpoint: str = "chat/completions") -> None:
        self.limit = system.settings.max_body_bytes
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
