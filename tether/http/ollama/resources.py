"""Ollama's generation routes: POST /api/chat, /api/generate, /api/embed and /api/embeddings.

Thin: the body is validated (schemas.py), translated to an OpenAI task (translate.py) and
relayed exactly as a `/v1` request is (same limiter, same name lookup, same relay), with an
Ollama renderer (render.py) for the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import falcon

from tether.actors.system import ActorSystem
from tether.http import auth
from tether.http.body import BodyLimits
from tether.http.limits import Limiter
from tether.http.ollama import answers, schemas, translate
from tether.http.ollama.render import NDJSON, OllamaRenderer
from tether.http.operation import AFFINITY, Operation, json_body
from tether.http.relay import Relay
from tether.http.resources import openai

Translate = Callable[[Mapping[str, Any]], "translate.Task | translate.Load"]


def _operation(summary: str, request: dict[str, Any], ok: dict[str, Any],
               streamed: bool = True) -> Operation:
    return Operation(summary, request=request, ok=ok, streams=NDJSON if streamed else None,
                     errors=schemas.ERROR, limited=True, params=(AFFINITY,))


CHAT = _operation("Ollama chat (NDJSON unless `stream` is false)", schemas.CHAT,
                  schemas.CHAT_ANSWER)
GENERATE = _operation("Ollama generate (NDJSON unless `stream` is false)", schemas.GENERATE,
                      schemas.GENERATE_ANSWER)
EMBED = _operation("Ollama embeddings of one input or several", schemas.EMBED,
                   schemas.EMBED_ANSWER, streamed=False)
EMBEDDINGS = _operation("Ollama embedding of one prompt (the older route)",
                        schemas.EMBEDDINGS, schemas.EMBEDDINGS_ANSWER, streamed=False)


class Generation:
    role = "client"

    def __init__(self, system: ActorSystem, relay: Relay, limiter: Limiter,
                 operation: Operation, translate: Translate) -> None:
        self.limit = BodyLimits.of(system.settings)
        self.relay = relay
        self.limiter = limiter
        self.translate = translate
        self.operations = {"POST": operation}
        self.aliases = system.settings.alias_targets()

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        name = body["model"]
        auth.check_llm(req.context.caller, name)
        task = self.translate(body)
        if isinstance(task, translate.Load):
            # nothing to relay, but the name must be one the lists show
            openai.find(req, name, self.aliases)
            resp.media = answers.loaded(task.kind, name, task.unload)
            return
        release = self.limiter.admit(req.context.caller)
        self.relay.respond(req, resp, name, task.request, task.endpoint, release=release,
                           renderer=OllamaRenderer(task.kind, name, task.streaming))
