"""Client reads: GET /api/v1/llms and /api/v1/llms/{name} (infer is
tether/http/resources/infer.py)."""

from __future__ import annotations

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import auth, schemas
from tether.http.alias_rows import alias_wire
from tether.http.operation import Operation
from tether.store import llms as store


class LlmCollection:
    role = "client"
    operations = {"GET": Operation("List Llms", ok=schemas.LLM_LIST)}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = req.context.caller
        rows = store.list_all()
        wires = self.system.read([row for row in rows if auth.allow_llm(caller, row.name)])
        aliases = {name: targets for name, targets in self.system.settings.alias_targets()
                   .items() if auth.allow_llm(caller, name)}
        if aliases:  # docs/protocol.md, Aliases: a row each, among the Llms by name
            by_name = {row.name: row for row in rows}
            wires = sorted(wires + [alias_wire(name, targets, by_name)
                                    for name, targets in aliases.items()],
                           key=lambda wire: wire["name"])
        resp.media = {"llms": wires}


class LlmItem:
    role = "client"
    operations = {"GET": Operation("One Llm", ok=schemas.LLM_ROW)}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.check_llm(req.context.caller, name)
        targets = self.system.alias_targets(name)
        if targets is not None:
            rows = [store.get(target) for target in targets]
            resp.media = alias_wire(name, targets, {x.name: x for x in rows if x is not None})
            return
        row = store.get(name)
        if row is None:
            raise errors.LLM_NOT_FOUND(name=name)
        resp.media = self.system.read([row])[0]
