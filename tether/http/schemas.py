"""Every request body the hub accepts, as JSON Schema (2020-12). Validation uses these dicts
and nothing else, so the OpenAPI document built from them cannot drift from the code.

Each body is checked first by jsonschema-rs (compiled, ~0.2 µs a body): a valid body, by
far the common case, goes no further. jsonschema's own validator, ~100x slower on every
body (it was 6-10 % of the hub's CPU per relayed request, issue 13), then judges only the
bodies the fast check refused: it words the 400, and where the two disagree (Python's `$`
also matches before a final newline) its verdict stands, so what is accepted is unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from tether import errors
from tether.common.names import LLM_NAME_PATTERN, SESSION_ID_PATTERN

LIVE_STATUS = {"type": "string", "enum": ["active", "hibernating"]}

LLM_NAME = {"type": "string", "pattern": LLM_NAME_PATTERN}
SESSION_ID = {"type": "string", "pattern": SESSION_ID_PATTERN}

PROVIDER_SPEC = {
    "type": "object",
    "required": ["name", "type", "model"],
    "properties": {
        "name": LLM_NAME,
        "type": {"type": "string", "minLength": 1, "maxLength": 64},
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "tier": {"type": "string", "minLength": 1, "maxLength": 64},
        "description": {"type": "string", "maxLength": 4096},
        "extraConfig": {"type": "object"},
        "initialStatus": LIVE_STATUS,
        "pool": {"type": "boolean"},  # join a pool of publishers (docs/protocol.md, Pools)
        "maxConcurrency": {"type": "integer", "minimum": 1, "maximum": 4096},
    },
}

REGISTER = {
    "type": "object",
    "required": ["providers"],
    "properties": {
        "providerSessionId": {"anyOf": [SESSION_ID, {"type": "null"}]},
        "providers": {"type": "array", "minItems": 1, "maxItems": 64, "items": PROVIDER_SPEC,
                      "description": "Names differ within one request (400 naming the "
                                     "second); each extraConfig is at most "
                                     "max_extra_config_bytes (16 KiB) as compact JSON (400)."},
    },
}

HEARTBEAT = {
    "type": "object",
    "required": ["providerSessionId"],
    "properties": {"providerSessionId": SESSION_ID},
}

STATUS = {
    "type": "object",
    "required": ["providerSessionId", "llms"],
    "properties": {
        "providerSessionId": SESSION_ID,
        "llms": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {
                "type": "object",
                "required": ["name", "status"],
                "properties": {"name": LLM_NAME, "status": LIVE_STATUS},
            },
        },
    },
}

# The names a publisher no longer serves (docs/protocol.md, Withdraw).
WITHDRAW = {
    "type": "object",
    "required": ["providerSessionId", "names"],
    "properties": {
        "providerSessionId": SESSION_ID,
        "names": {"type": "array", "minItems": 1, "maxItems": 64, "items": LLM_NAME},
    },
}

CHUNK = {
    "type": "object",
    "minProperties": 1,
    # One SSE `data:` field for the client: a raw CR or LF would end it and let the rest of
    # the data forge fields of its own (`event: error`, `data: …`). JSON escapes both.
    "properties": {"data": {"type": "string", "not": {"pattern": "[\r\n]"}},
                   "done": {"type": "boolean"}},
}

# A final status is a final HTTP answer: 1xx are interim (a client would wait on), and
# 200-599 are the statuses that carry the body a client is given.
FINAL_STATUS = {"type": "integer", "minimum": 200, "maximum": 599}
RESULT_FINAL = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": FINAL_STATUS, "body": {}},
}
# The place of a body's first chunk in its task's stream: applied once (docs/protocol.md).
CHUNK_INDEX = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
RESULT_CHUNK = {"type": "object", "required": ["chunk"],
                "properties": {"chunk": CHUNK, "index": CHUNK_INDEX}}
RESULT_CHUNKS = {
    "type": "object",
    "required": ["chunks"],
    "properties": {"chunks": {"type": "array", "minItems": 1, "maxItems": 4096, "items": CHUNK},
                   "index": CHUNK_INDEX},
}
RESULT_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "maxLength": 65536},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "code": {"type": "string", "maxLength": 64},
                "retryable": {"type": "boolean"},  # nothing ran: another member may try
            },
        }
    },
}
# A result body is exactly one of these, picked by its distinguishing key: a body with two
# of the keys is none of them (400), so the document's oneOf has one answer for any body.
_KINDS = (("chunks", RESULT_CHUNKS), ("chunk", RESULT_CHUNK), ("error", RESULT_ERROR),
          ("status", RESULT_FINAL))
RESULT_KINDS = tuple(
    (key, {**schema, "not": {"anyOf": [{"required": [other]} for other, _ in _KINDS
                                       if other != key]}})
    for key, schema in _KINDS)
TASK_RESULT = {"oneOf": [schema for _, schema in RESULT_KINDS]}

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "model": {"type": "string", "maxLength": 256},
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2048,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {"role": {"type": "string", "minLength": 1, "maxLength": 64}},
            },
        },
        "stream": {"type": "boolean"},
    },
}

MODEL = {"type": "string", "minLength": 1, "maxLength": 256}

# The OpenAI-compatible routes name the Llm in `model`.
V1_CHAT = {**CHAT_REQUEST, "required": ["model", "messages"],
           "properties": {**CHAT_REQUEST["properties"], "model": MODEL}}
TEXT_OR_LIST = {"anyOf": [  # a prompt or an embedding input: one text, or a batch
    {"type": "string", "maxLength": 4194304},
    {"type": "array", "minItems": 1, "maxItems": 2048},
]}
V1_COMPLETION = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {"model": MODEL, "prompt": TEXT_OR_LIST, "stream": {"type": "boolean"}},
}
V1_EMBEDDING = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {"model": MODEL, "input": TEXT_OR_LIST},
}

V1_RESPONSES = {  # the Responses API: `input` is one text or a list of input items
    "type": "object",
    "required": ["model"],
    "properties": {"model": MODEL, "input": TEXT_OR_LIST, "stream": {"type": "boolean"}},
}

# --- responses (for /openapi.json) -------------------------------------------------------

# The task stream's frames (docs/protocol.md, Stream; tether/common/task_wire.py builds them).
HELLO = {"type": "object", "required": ["providerSessionId", "heartbeatIntervalS"],
         "properties": {"providerSessionId": {"type": "string"},
                        "heartbeatIntervalS": {"type": "number"},
                        "llms": {"type": "array", "items": {"type": "string"}},
                        "chunksOnChannel": {"type": "boolean"}}}
TASK = {"oneOf": [
    {"type": "object", "required": ["kind", "taskId", "llmName", "request", "streaming"],
     "properties": {"kind": {"const": "infer"}, "taskId": {"type": "string"},
                    "llmName": {"type": "string"}, "request": {"type": "object"},
                    "streaming": {"type": "boolean"},
                    "endpoint": {"enum": ["chat/completions", "completions", "embeddings",
                                          "responses"]}}},
    {"type": "object", "required": ["kind", "taskId", "llmName"],
     "properties": {"kind": {"const": "wake"}, "taskId": {"type": "string"},
                    "llmName": {"type": "string"}}},
    {"type": "object", "required": ["kind", "taskId"],
     "properties": {"kind": {"const": "cancel"}, "taskId": {"type": "string"}}},
]}
_COUNT = {"type": "integer", "minimum": 0}
# GET /status/state and each `state` frame of /status/events (tether/observability/board.py).
STATE = {
    "type": "object",
    "required": ["at", "llms", "errors", "totals"],
    "properties": {
        "at": {"type": "number"},
        "llms": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "kind", "status", "session", "streamOpen", "inFlight",
                         "queued", "lastHeartbeatAt", "lastWakeAt", "lastWakeSeconds",
                         "lastWakeOutcome"],
            "properties": {
                "name": {"type": "string"}, "kind": {"enum": ["virtual", "public"]},
                "status": {"type": "string"}, "session": {"type": ["string", "null"]},
                "streamOpen": {"type": "boolean"}, "inFlight": _COUNT, "queued": _COUNT,
                "lastHeartbeatAt": {"type": ["number", "null"]},
                "lastWakeAt": {"type": ["number", "null"]},
                "lastWakeSeconds": {"type": ["number", "null"]},
                "lastWakeOutcome": {"type": ["string", "null"]},
            }}},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["at", "llm", "status", "code"],
            "properties": {"at": {"type": "number"}, "llm": {"type": ["string", "null"]},
                           "status": {"type": "integer"}, "code": {"type": "string"}}}},
        "totals": {"type": "object",
                   "required": ["llms", "byStatus", "sessions", "streamsOpen", "inFlight",
                                "queued", "requests", "errors", "feeds"],
                   "properties": {"byStatus": {"type": "object",
                                               "additionalProperties": _COUNT},
                                  **{k: _COUNT for k in ("llms", "sessions", "streamsOpen",
                                                         "inFlight", "queued", "requests",
                                                         "errors", "feeds")}}},
    },
}

TIMESTAMP = {"type": ["string", "null"]}
LLM_ROW: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "type", "model", "tier", "description", "extraConfig", "kind",
                 "providerSessionId", "status", "lastHeartbeatAt", "inactiveSince",
                 "createdAt", "updatedAt"],
    "properties": {
        "id": {"type": "string"}, "name": LLM_NAME, "type": {"type": "string"},
        "model": {"type": "string"}, "tier": {"type": "string"},
        "description": {"type": "string"}, "extraConfig": {"type": "object"},
        "kind": {"enum": ["virtual", "public", "alias"]},
        "targets": {"type": "array", "items": LLM_NAME},  # an alias's, first choice first
        "providerSessionId": {"type": ["string", "null"]},
        "status": {"enum": ["active", "hibernating", "inactive"]},
        "lastHeartbeatAt": TIMESTAMP, "inactiveSince": TIMESTAMP,
        "createdAt": {"type": "string"}, "updatedAt": {"type": "string"},
    },
}
MEMBER = {
    "type": "object",
    "required": ["providerSessionId", "model", "status", "lastHeartbeatAt", "inactiveSince",
                 "maxConcurrency", "inFlight"],
    "properties": {
        "providerSessionId": {"type": "string"}, "model": {"type": "string"},
        "status": {"enum": ["active", "hibernating", "inactive"]},
        "lastHeartbeatAt": TIMESTAMP, "inactiveSince": TIMESTAMP,
        "maxConcurrency": {"type": ["integer", "null"]}, "inFlight": {"type": "integer"},
    },
}
# Every virtual row carries its members (docs/protocol.md, Llms); a public row has none.
LLM_ROW["properties"]["members"] = {"type": "array", "items": MEMBER}
LLM_LIST = {"type": "object", "required": ["llms"],
            "properties": {"llms": {"type": "array", "items": LLM_ROW}}}
REGISTERED = {"type": "object", "required": ["providerSessionId", "llms"],
              "properties": {"providerSessionId": {"type": "string"},
                             "llms": {"type": "array", "items": LLM_ROW}}}
OK = {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}
HEARTBEAT_OK = {"type": "object", "required": ["ok", "llms"],
                "properties": {"ok": {"const": True}, "llms": {"type": "integer"}}}
# database: this process's SELECT 1 answered; bus: its Redis PING answered ("off": no bus_url).
HEALTH = {"type": "object", "required": ["status", "database", "bus"], "properties": {
    "status": {"const": "ok"}, "database": {"const": "ok"}, "bus": {"enum": ["ok", "off"]}}}
MODEL_OBJECT = {"type": "object", "required": ["id", "object", "created", "owned_by"],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                               "created": {"type": "integer"}, "owned_by": {"type": "string"}}}
MODEL_LIST = {"type": "object", "required": ["object", "data"],
              "properties": {"object": {"const": "list"},
                             "data": {"type": "array", "items": MODEL_OBJECT}}}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "code", "param"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "code": {"type": "string"}, "param": {"type": ["string", "null"]}},
    }},
}

MESSAGE_CHARS = 500  # of a schema error's message, which quotes the offending value
_SESSION_ID = re.compile(SESSION_ID_PATTERN.replace("$", r"\Z"))

_VALIDATORS: dict[int, tuple[Draft202012Validator, jsonschema_rs.Draft202012Validator]] = {}


def _validators(schema: dict[str, Any]) -> tuple[Draft202012Validator,
                                                jsonschema_rs.Draft202012Validator]:
    key = id(schema)
    if key not in _VALIDATORS:
        Draft202012Validator.check_schema(schema)
        _VALIDATORS[key] = (Draft202012Validator(schema),
                            jsonschema_rs.Draft202012Validator(schema))
    return _VALIDATORS[key]


def _fits(fast: jsonschema_rs.Draft202012Validator, body: Any) -> bool:
    try:
        return fast.is_valid(body)
    except Exception:  # noqa: BLE001 - a value it cannot take (a huge int): the slow path
        return False


def _field(error: ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        path = f"{path}.{missing}" if path else missing
    return path or "body"


def validate(schema: dict[str, Any], body: Any) -> dict[str, Any]:
    """Return `body` if it fits `schema`, else raise a 400 naming the offending field."""
    reference, fast = _validators(schema)
    if _fits(fast, body):
        return body
    error = best_match(reference.iter_errors(body))
    if error is None:
        return body
    field = _field(error)
    message = error.message
    if len(message) > MESSAGE_CHARS:  # it quotes the value: a 4 MiB one is not sent back
        message = message[:MESSAGE_CHARS] + "…"
    raise errors.INVALID_REQUEST(why=f"{field}: {message}", param=field)


def check_session_id(value: str | None, field: str,
                     what: str = "a provider session id") -> str:
    """An id outside a body (a header, the query: a session's, a result channel's) is
    required and fits the session id's pattern, else 400 naming `field`."""
    if not value:
        raise errors.INVALID_REQUEST(why=f"{field}: {what} is required", param=field)
    if not _SESSION_ID.match(value):
        raise errors.INVALID_REQUEST(why=f"{field}: {what} matches {SESSION_ID_PATTERN}",
                                     param=field)
    return value


def check_extra_config(spec: dict[str, Any], i: int, limit: int) -> None:
    """A provider's extraConfig is served on every read of the list: at most `limit` bytes
    as compact JSON (what the hub stores and serves), else a 400 naming it."""
    size = len(json.dumps(spec.get("extraConfig", {}), separators=(",", ":"),
                          ensure_ascii=False).encode())
    if size > limit:
        field = f"providers[{i}].extraConfig"
        raise errors.INVALID_REQUEST(
            why=f"{field}: {size} bytes as JSON, over {limit} (setting max_extra_config_bytes)",
            param=field)


def validate_result(body: Any) -> dict[str, Any]:
    if isinstance(body, dict):
        for key, schema in RESULT_KINDS:
            if key in body:
                return validate(schema, body)
    raise errors.INVALID_REQUEST(
        why="body: a task result needs one of 'status', 'chunk', 'chunks' or 'error'",
        param="body",
    )
