"""Ollama's model routes: GET /api/tags, GET /api/ps, POST /api/show, GET /api/version, and
the root (`GET /`, `HEAD /`), which Ollama's own Go client probes to see a server is up.

The models are the Llms `/v1/models` lists (resources/openai.listed). What Ollama knows of a
model file and the hub does not (size, digest) is 0 or ""; its `details` come from the row's
`extraConfig.ollama.details`, where a publisher put what its Ollama backend said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import falcon

from tether.actors.system import ActorSystem
from tether.http.alias_rows import Aliases
from tether.http.body import BodyLimits
from tether.http.ollama import schemas
from tether.http.operation import Operation, json_body
from tether.http.resources import openai
from tether.store.models import ACTIVE, Llm, iso

# The Ollama release whose API these routes follow (apps gate features on it).
VERSION = "0.12.0"
# /api/ps: when a model unloads. The hub unloads nothing (a publisher may put its backend
# to sleep when idle, which the hub learns only then): never, as far as it knows.
NEVER = "9999-12-31T23:59:59Z"
UNKNOWN_DETAILS: dict[str, Any] = {"parent_model": "", "format": "", "family": "",
                                   "families": None, "parameter_size": "",
                                   "quantization_level": ""}


def _ollama(row: Llm) -> Mapping[str, Any]:
    """What the row's publisher said of it in Ollama's terms (`extraConfig.ollama`)."""
    extra = row.extra_config if isinstance(row.extra_config, Mapping) else {}
    given = extra.get("ollama")
    return given if isinstance(given, Mapping) else {}


def details(row: Llm) -> dict[str, Any]:
    """Ollama's `details`, each field the publisher's where it gave one of the right type."""
    given = _ollama(row).get("details")
    out = dict(UNKNOWN_DETAILS)
    if isinstance(given, Mapping):
        for key in out:
            value = given.get(key)
            if key == "families":
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    out[key] = value
            elif isinstance(value, str):
                out[key] = value
    return out


def tag(row: Llm) -> dict[str, Any]:
    return {"name": row.name, "model": row.name, "modified_at": iso(row.updated_at),
            "size": 0, "digest": "", "details": details(row)}


class Tags:
    role = "client"
    operations = {"GET": Operation("Ollama model list (the same names as /v1/models)",
                                   ok=schemas.TAGS, errors=schemas.ERROR)}

    def __init__(self, aliases: Aliases | None = None) -> None:
        self.aliases = aliases

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"models": [tag(row) for row in openai.listed(req, self.aliases)]}


class Running:
    role = "client"
    operations = {"GET": Operation("Ollama running models (the Llms awake now)", ok=schemas.PS,
                                   errors=schemas.ERROR)}

    def __init__(self, aliases: Aliases | None = None) -> None:
        self.aliases = aliases

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"models": [{**tag(row), "expires_at": NEVER, "size_vram": 0}
                                 for row in openai.listed(req, self.aliases)
                                 if row.status == ACTIVE]}


class Show:
    role = "client"
    operations = {"POST": Operation("Ollama model details", request=schemas.SHOW,
                                    ok=schemas.SHOWN, errors=schemas.ERROR)}

    def __init__(self, system: ActorSystem) -> None:
        self.limit = BodyLimits.of(system.settings)
        self.aliases = system.settings.alias_targets()

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        row = openai.find(req, body["model"], self.aliases)
        said = _ollama(row)
        info = said.get("model_info")
        capabilities = said.get("capabilities")
        if not (isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities)):
            capabilities = ["completion"]
        resp.media = {"modelfile": "", "parameters": "", "template": "", "license": "",
                      "details": details(row), "capabilities": capabilities,
                      "model_info": dict(info) if isinstance(info, Mapping) else {},
                      "modified_at": iso(row.updated_at)}


class Version:
    role = None  # no key: a constant, which apps read before anything else
    operations = {"GET": Operation("The Ollama API version these routes follow",
                                   ok=schemas.VERSION, errors=schemas.ERROR)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"version": VERSION}


RUNNING_TEXT = "Ollama is running"  # what Ollama answers here; its client reads the status


class Root:
    role = None  # no key, like /healthz: Ollama's clients probe it before sending one
    operations = {method: Operation("Ollama's liveness probe", media="text/plain")
                  for method in ("GET", "HEAD")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = RUNNING_TEXT

    def on_head(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
