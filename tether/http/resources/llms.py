"""Client reads: GET /api/v1/llms and /api/v1/llms/{name} (infer is
tether/http/resources/infer.py)."""

from __future__ import annotations

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import auth, schemas
from tether.http.operation import Operation
from tether.store import llms as store


class LlmCollection:
    role = "client"
    operations = {"GET": Operation("List Llms", ok=schemas.LLM_LIST)}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = req.context.caller
        resp.media = {"llms": self.system.read(
            [row for row in store.list_all() if auth.allow_llm(caller, row.name)])}


class LlmItem:
    role = "client"
    operations = {"GET": Operation("One Llm", ok=schemas.LLM_ROW)}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.check_llm(req.context.caller, name)
        row = store.get(name)
        if row is None:
            raise errors.LLM_NOT_FOUND(name=name)
        resp.media = self.system.read([row])[0]
