"""GET /openapi.json: the OpenAPI 3.1 document of the routes app.py mounts, built from what
each resource declares (its `role`, and its `operations`: tether/http/operation.py). The
request schemas are the very dicts the hub validates with (tether/http/schemas.py), so the
document cannot drift from what the hub accepts.

What OpenAPI 3.1 has no word for is given the way OpenAPI 3.2 does, under an `x-` name:
an SSE answer's events as `x-itemSchema` (each item `{event, data, id}`, its `data` JSON of
the schema in `contentSchema`), as 3.2's `itemSchema` for sequential media types. Roles
are the bearer requirement's role list (3.1 allows role names there for non-OAuth
schemes), with `x-tether-role` naming the one role besides admin; with auth off the
document requires no key anywhere, as the hub does not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import falcon

from tether import __version__
from tether.http import schemas
from tether.http.operation import JSON, NDJSON, SSE, Operation

# A path's {fields}, as the document names them (camelCase, as everything on the wire).
PATH_PARAMS: dict[str, tuple[str, dict[str, Any]]] = {
    "name": ("name", schemas.LLM_NAME),
    "task_id": ("taskId", {"type": "string", "maxLength": 200}),
}
_FIELD = re.compile(r"{(\w+)}")

_STRING = {"type": "string"}
REQUEST_ID = {"X-Request-Id": {
    "description": "This request's id: the client's own X-Request-Id when it is a plain "
                   "token (^[A-Za-z0-9._:-]{1,64}$), else one the hub made; on every log "
                   "line of the request.",
    "schema": _STRING}}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again "
                                              "(429 rate_limited)",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
REQUEST_ID_PARAM = {"name": "X-Request-Id", "in": "header", "required": False,
                    "description": "An id for this request, echoed back when a plain token",
                    "schema": _STRING}

# The register's answer names what later calls take (for client generators and fuzzers'
# stateful phases): its session for the session's routes, its first Llm for the Llm's.
_SESSION = "$response.body#/providerSessionId"
_FIRST_LLM = "$response.body#/llms/0/name"
REGISTER_LINKS = {  # name: (method, path as app.py mounts it, what it takes)
    "Heartbeat": ("POST", "/api/v1/llms/_provider-heartbeat",
                  {"requestBody": {"providerSessionId": _SESSION}}),
    "ReadLlm": ("GET", "/api/v1/llms/{name}", {"parameters": {"name": _FIRST_LLM}}),
    "Infer": ("POST", "/api/v1/llms/{name}/infer", {"parameters": {"name": _FIRST_LLM}}),
}


def _path(path: str) -> str:
    return _FIELD.sub(lambda f: "{" + PATH_PARAMS[f.group(1)][0] + "}", path)


def operation_id(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", f"{method} {_path(path)}".lower()).strip("_")


def sse_items(events: Sequence[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    """An SSE answer's events as OpenAPI 3.2's itemSchema says them: one object per event."""
    items = []
    for name, data in events:
        data_schema = _STRING if data is None else {
            "type": "string", "contentMediaType": JSON, "contentSchema": data}
        item: dict[str, Any] = {"type": "object", "required": ["data"],
                                "properties": {"data": data_schema, "id": _STRING}}
        if name == "message":  # an event without an `event:` field
            item["not"] = {"required": ["event"]}
        else:
            item["required"] = ["event", "data"]
            item["properties"]["event"] = {"const": name}
        items.append(item)
    return {"oneOf": items}


def _content(op: Operation) -> dict[str, Any]:
    if op.ok is None:
        content: dict[str, Any] = {op.media: {"schema": _STRING}}
        if op.media == SSE and op.events:
            content[SSE]["x-itemSchema"] = sse_items(op.events)
        return content
    content = {JSON: {"schema": op.ok}}
    streams = op.streams or (SSE if op.relayed else None)
    if streams and op.request is not None and "stream" in op.request.get("properties", {}):
        content[streams] = {"schema": _STRING}
        if streams == SSE and op.events:
            content[streams]["x-itemSchema"] = sse_items(op.events)
    return content


def _error(schema: dict[str, Any], description: str,
           headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}},
                              "headers": {**REQUEST_ID, **(headers or {})}}
    return answer


def _operation(path: str, method: str, role: str | None, op: Operation,
               auth: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": operation_id(method, path), "summary": op.summary,
                           "x-tether-role": role or "none"}
    params = [{"name": PATH_PARAMS[field][0], "in": "path", "required": True,
               "schema": PATH_PARAMS[field][1]} for field in _FIELD.findall(path)]
    params += [*op.params, REQUEST_ID_PARAM]
    doc["parameters"] = params
    if op.request is not None:
        content = {JSON: {"schema": op.request}}
        if op.ndjson:
            content[NDJSON] = {"schema": _STRING, "x-itemSchema": op.request}
        doc["requestBody"] = {"required": True, "content": content}
    # Relayed routes pass a publisher's or upstream's status and body on unchanged.
    own = op.errors if op.errors is not None else schemas.ERROR
    error = {} if op.relayed else own
    shape = "the OpenAI error envelope" if op.errors is None else "this route's own shape"
    if op.relayed:
        shape += ", or the backend's own error, relayed as it is"
    responses: dict[str, Any] = {"200": {
        "description": "OK" + (" (or the backend's own status, relayed)" if op.relayed else ""),
        "content": _content(op), "headers": dict(REQUEST_ID)}}
    if op.request is not None or op.params or "{" in path:
        responses["400"] = _error(error, f"A body, parameter or path that breaks its schema "
                                         f"or a documented bound ({shape})")
    if role is not None and auth:
        responses["401"] = _error(error, f"No key, or an unknown or revoked one ({shape})")
        who = "an admin key" if role == "admin" else f"a {role} or admin key"
        responses["403"] = _error(error, f"A key of another role: this needs {who}, or one "
                                         f"acting on what is not its own ({shape})")
    if op.limited:
        responses["429"] = _error(error, f"Over a per-key or per-Llm limit ({shape}); "
                                         "rate_limited carries Retry-After", RETRY_AFTER)
    responses["default"] = _error(error, f"An error ({shape})")
    doc["responses"] = responses
    if role is not None and auth:
        doc["security"] = [{"bearer": [role]}] + ([] if role == "admin"
                                                  else [{"bearer": ["admin"]}])
    return doc


def document(routes: Sequence[tuple[str, Any]], auth: bool = True) -> dict[str, Any]:
    """The document of `routes`: (path, resource) as app.py mounts them; `auth`: whether
    the hub asks for keys."""
    paths: dict[str, dict[str, Any]] = {}
    for path, resource in routes:
        for method, op in resource.operations.items():
            paths.setdefault(_path(path), {})[method.lower()] = _operation(
                path, method, resource.role, op, auth)
    register = paths.get("/api/v1/llms/_provider-register", {}).get("post")
    if register is not None:
        register["responses"]["200"]["links"] = {
            name: {"operationId": operation_id(method, path), **takes}
            for name, (method, path, takes) in REGISTER_LINKS.items()
            if method.lower() in paths.get(_path(path), {})}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Tether hub", "version": __version__,
                 "description": "One OpenAI-compatible endpoint for self-hosted LLMs. Every "
                                "path also answers OPTIONS, without a key: 200 with `Allow` "
                                "(its methods and OPTIONS, as a 405 lists them), or a CORS "
                                "preflight's answer where cors_origins allows the origin."},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
    }
    if auth:
        doc["components"] = {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A key of `tether keys create`; each operation names the roles "
                           "it takes (publisher, client, admin)."}}}
    return doc


class OpenApi:
    role = None  # no key needed
    operations = {"GET": Operation("This document", ok={"type": "object"})}

    def __init__(self, auth: bool = True) -> None:
        self._doc: dict[str, Any] = {}
        self._auth = auth

    def describe(self, routes: Sequence[tuple[str, Any]]) -> None:
        self._doc = document(routes, self._auth)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._doc
