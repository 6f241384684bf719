"""GET /openapi.json: the OpenAPI 3.1 document of the routes app.py mounts, built from what
each resource declares (its `role`, and its `operations`: tether/http/operation.py). The
request schemas are the very dicts the hub validates with (tether/http/schemas.py), so the
document cannot drift from what the hub accepts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import falcon

from tether import __version__
from tether.http import schemas
from tether.http.operation import JSON, SSE, Operation

# A path's {fields}, as the document names them (camelCase, as everything on the wire).
PATH_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "name": ("name", schemas.LLM_NAME),
    "task_id": ("taskId", {"type": "string", "maxLength": 200}),
}
_FIELD = re.compile(r"{(\w+)}")


def _path(path: str) -> str:
    return _FIELD.sub(lambda f: "{" + PATH_PARAMS[f.group(1)][0] + "}", path)


def _operation(path: str, role: str | None, op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "x-tether-role": role or "none"}
    params = [{"name": PATH_PARAMS[field][0], "in": "path", "required": True,
               "schema": PATH_PARAMS[field][1]} for field in _FIELD.findall(path)]
    params += op.params
    if params:
        doc["parameters"] = params
    if op.request is not None:
        doc["requestBody"] = {"required": True, "content": {JSON: {"schema": op.request}}}
    if op.ok is None:
        content = {op.media: {"schema": {"type": "string"}}}
    else:
        content = {JSON: {"schema": op.ok}}
        streams = op.streams or (SSE if op.relayed else None)
        if streams and op.request is not None \
                and "stream" in op.request.get("properties", {}):
            content[streams] = {"schema": {"type": "string"}}
    # Relayed routes pass a publisher's or upstream's status and body on unchanged.
    error = {JSON: {"schema": op.errors if op.errors is not None
                    else {} if op.relayed else schemas.ERROR}}
    shape = "the OpenAI error envelope" if op.errors is None else "this route's own shape"
    doc["responses"] = {
        "200": {"description": "OK", "content": content},
        "default": {"description": f"An error ({shape})", "content": error},
    }
    if role is not None:
        doc["security"] = [{"bearer": []}]
    return doc


def document(routes: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The document of `routes`: (path, resource) as app.py mounts them."""
    paths: dict[str, dict[str, Any]] = {}
    for path, resource in routes:
        for method, op in resource.operations.items():
            paths.setdefault(_path(path), {})[method.lower()] = _operation(
                path, resource.role, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tether hub", "version": __version__,
                 "description": "One OpenAI-compatible endpoint for self-hosted LLMs."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


class OpenApi:
    role = None  # no key needed
    operations = {"GET": Operation("This document", ok={"type": "object"})}

    def __init__(self) -> None:
        self._doc: dict[str, Any] = {}

    def describe(self, routes: Sequence[tuple[str, Any]]) -> None:
        self._doc = document(routes)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._doc
