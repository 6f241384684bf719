"""The OpenAI model list: GET /v1/models and /v1/models/{name} (the /v1 infer routes are
tether/http/resources/infer.py)."""

from __future__ import annotations

import calendar

import falcon

from tether import errors
from tether.http import auth, schemas
from tether.http.alias_rows import Aliases, alias_row, with_aliases
from tether.http.operation import Operation
from tether.store import llms as store
from tether.store.models import INACTIVE, Llm


def listed(req: falcon.Request, aliases: Aliases | None = None) -> list[Llm]:
    """The Llms the model lists show the caller (here, and Ollama's /api/tags and /api/ps),
    aliases among them (the hub's `aliases`): those not inactive, of the names its key may
    use (an alias it may use lists even where its targets are not the key's)."""
    caller = req.context.caller
    rows = with_aliases([row for row in store.list_all() if row.status != INACTIVE],
                        aliases or {})
    return [row for row in rows if auth.allow_llm(caller, row.name)]


def find(req: falcon.Request, name: str, aliases: Aliases | None = None) -> Llm:
    """One Llm (or alias) of the lists, by name: 403 when the caller's key may not use it,
    404 when the lists do not show it (here, and Ollama's /api/show)."""
    auth.check_llm(req.context.caller, name)
    targets = (aliases or {}).get(name)
    if targets is not None:
        rows = [store.get(target) for target in targets]
        row = alias_row(name, targets, {x.name: x for x in rows if x is not None})
    else:
        row = store.get(name)
    if row is None or row.status == INACTIVE:
        raise errors.LLM_NOT_FOUND(name=name)
    return row


def _model(row: Llm) -> dict:
    return {"id": row.name, "object": "model",
            "created": calendar.timegm(row.created_at.timetuple()), "owned_by": "tether"}


class Models:
    role = "client"
    operations = {"GET": Operation("OpenAI model list", ok=schemas.MODEL_LIST)}

    def __init__(self, aliases: Aliases | None = None) -> None:
        self.aliases = aliases

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list",
                      "data": [_model(row) for row in listed(req, self.aliases)]}


class Model:
    role = "client"
    operations = {"GET": Operation("One model", ok=schemas.MODEL_OBJECT)}

    def __init__(self, aliases: Aliases | None = None) -> None:
        self.aliases = aliases

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = _model(find(req, name, self.aliases))
