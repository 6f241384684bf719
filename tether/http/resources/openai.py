"""The OpenAI model list: GET /v1/models and /v1/models/{name} (the /v1 infer routes are
tether/http/resources/infer.py)."""

from __future__ import annotations

import calendar

import falcon

from tether import errors
from tether.http import schemas
from tether.http.operation import Operation
from tether.store import llms as store
from tether.store.models import INACTIVE, Llm


def listed() -> list[Llm]:
    """The Llms the model lists show (here, and Ollama's /api/tags and /api/ps)."""
    return [row for row in store.list_all() if row.status != INACTIVE]


def find(name: str) -> Llm:
    """One Llm of the lists, by name, or 404 (here, and Ollama's /api/show)."""
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

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"object": "list", "data": [_model(row) for row in listed()]}


class Model:
    role = "client"
    operations = {"GET": Operation("One model", ok=schemas.MODEL_OBJECT)}

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = _model(find(name))
