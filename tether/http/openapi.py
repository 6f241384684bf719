"""GET /openapi.json: the OpenAPI 3.1 document, built from the very schema dicts the hub
validates with (tether/http/schemas.py), so it cannot drift from what the hub accepts."""

from __future__ import annotations

from typing import Any

import falcon

from tether import __version__
from tether.http import schemas as s

JSON = "application/json"
SSE = "text/event-stream"
ANY: dict[str, Any] = {}

# (path, method, role, summary, request schema, 200 schema, 200 is relayed/streamed)
ROUTES: list[tuple[str, str, str | None, str, dict | None, dict | None, bool]] = [
    ("/healthz", "get", None, "Liveness", None, s.HEALTH, False),
    ("/openapi.json", "get", None, "This document", None, {"type": "object"}, False),
    ("/metrics", "get", "admin", "Prometheus metrics", None, None, False),
    ("/api/v1/llms", "get", "client", "List Llms", None, s.LLM_LIST, False),
    ("/api/v1/llms/{name}", "get", "client", "One Llm", None, s.LLM_ROW, False),
    ("/api/v1/llms/{name}/infer", "post", "client", "Chat completion on an Llm",
     s.CHAT_REQUEST, ANY, True),
    ("/api/v1/llms/_provider-register", "post", "publisher", "Register providers",
     s.REGISTER, s.REGISTERED, False),
    ("/api/v1/llms/_provider-stream", "get", "publisher", "The task stream (SSE)",
     None, None, True),
    ("/api/v1/llms/_provider-heartbeat", "post", "publisher", "Heartbeat", s.HEARTBEAT,
     s.HEARTBEAT_OK, False),
    ("/api/v1/llms/_provider-status", "post", "publisher", "Report backend status",
     s.STATUS, s.OK, False),
    ("/api/v1/llms/_provider-task/{taskId}/result", "post", "publisher", "Post a task result",
     s.TASK_RESULT, s.OK, False),
    ("/v1/chat/completions", "post", "client", "OpenAI chat completions", s.V1_CHAT, ANY, True),
    ("/v1/completions", "post", "client", "OpenAI completions", s.V1_COMPLETION, ANY, True),
    ("/v1/embeddings", "post", "client", "OpenAI embeddings", s.V1_EMBEDDING, ANY, True),
    ("/v1/responses", "post", "client", "OpenAI Responses API", s.V1_RESPONSES, ANY, True),
    ("/v1/models", "get", "client", "OpenAI model list", None, s.MODEL_LIST, False),
    ("/v1/models/{name}", "get", "client", "One model", None, s.MODEL_OBJECT, False),
    ("/status", "get", None, "The status page (HTML)", None, None, False),
    ("/status/state", "get", "client", "The hub's live state", None, {"type": "object"},
     False),
    ("/status/events", "get", "client", "The live state as SSE", None, None, True),
]

_PARAMS = {
    "name": {"name": "name", "in": "path", "required": True, "schema": s.LLM_NAME},
    "taskId": {"name": "taskId", "in": "path", "required": True,
               "schema": {"type": "string", "maxLength": 200}},
}
_STREAM_PARAMS = [
    {"name": "X-Provider-Session-Id", "in": "header", "required": False,
     "schema": s.SESSION_ID},
    {"name": "providerSessionId", "in": "query", "required": False, "schema": s.SESSION_ID},
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
]


def _operation(path: str, role: str | None, summary: str, request: dict | None,
               ok: dict | None, relayed: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "x-tether-role": role or "none"}
    params = [_PARAMS[p] for p in _PARAMS if "{" + p + "}" in path]
    if path.endswith("_provider-stream"):
        params += _STREAM_PARAMS
    if params:
        op["parameters"] = params
    if request is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": request}}}
    if path == "/status":
        content = {"text/html": {"schema": {"type": "string"}}}
    elif ok is None:  # the SSE stream, or Prometheus text
        content = {SSE: {"schema": {"type": "string"}}} if relayed else {
            "text/plain": {"schema": {"type": "string"}}}
    else:
        content = {JSON: {"schema": ok}}
        if relayed and request is not None and "stream" in request.get("properties", {}):
            content[SSE] = {"schema": {"type": "string"}}
    # Relayed routes pass a publisher's or upstream's status and body on unchanged.
    error = {JSON: {"schema": ANY if relayed else s.ERROR}}
    op["responses"] = {
        "200": {"description": "OK", "content": content},
        "default": {"description": "An error (the OpenAI error envelope)", "content": error},
    }
    if role is not None:
        op["security"] = [{"bearer": []}]
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for path, method, role, summary, request, ok, relayed in ROUTES:
        paths.setdefault(path, {})[method] = _operation(path, role, summary, request, ok,
                                                        relayed)
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

    def __init__(self) -> None:
        self._doc = document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._doc
