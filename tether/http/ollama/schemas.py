"""The Ollama routes' bodies as JSON Schema, validated by the same machinery as every other
route (tether.http.schemas.validate, through operation.json_body) and published in
/openapi.json.

As Ollama does, a field the hub does not know is accepted and ignored; a known field of the
wrong type is a 400 naming it. Optional fields may be null (clients send them so).
"""

from __future__ import annotations

from typing import Any

from tether.http.schemas import MODEL

TEXT = {"type": ["string", "null"], "maxLength": 4194304}
NUMBER = {"type": ["number", "null"]}
INTEGER = {"type": ["integer", "null"]}
FLAG = {"type": ["boolean", "null"]}
KEEP_ALIVE = {"type": ["number", "string", "null"]}  # "5m", 300, 0 (ignored: see docs)
IMAGES = {"type": ["array", "null"], "maxItems": 64, "items": {"type": "string"}}

OPTIONS = {
    "type": ["object", "null"],
    "properties": {  # those the hub carries over to the OpenAI request (translate.sampling)
        "temperature": NUMBER, "top_p": NUMBER, "seed": INTEGER, "num_predict": INTEGER,
        "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
        "stop": {"anyOf": [{"type": ["string", "null"]},
                           {"type": "array", "maxItems": 64, "items": {"type": "string"}}]},
    },
}
# "json", or a JSON schema the answer must fit; "" (or null) for free text.
FORMAT = {"anyOf": [{"enum": ["", "json", None]}, {"type": "object"}]}

TOOL_CALL = {
    "type": "object",
    "properties": {"function": {"type": "object", "properties": {
        "name": {"type": "string"}, "arguments": {"type": ["object", "string", "null"]}}}},
}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "minLength": 1, "maxLength": 64},
        "content": TEXT,
        "images": IMAGES,
        "tool_calls": {"type": ["array", "null"], "maxItems": 128, "items": TOOL_CALL},
        "tool_name": {"type": ["string", "null"]},
    },
}
TOOLS = {"type": ["array", "null"], "maxItems": 512, "items": {
    "type": "object", "properties": {"type": {"type": "string"}, "function": {"type": "object"}}}}

_GENERATION = {"model": MODEL, "stream": FLAG, "format": FORMAT, "options": OPTIONS,
               "keep_alive": KEEP_ALIVE, "think": {"type": ["boolean", "string", "null"]}}

CHAT = {
    "type": "object",
    "required": ["model"],
    "properties": {**_GENERATION, "tools": TOOLS,
                   "messages": {"type": ["array", "null"], "maxItems": 2048, "items": MESSAGE}},
}
GENERATE = {
    "type": "object",
    "required": ["model"],
    "properties": {**_GENERATION, "prompt": TEXT, "suffix": TEXT, "system": TEXT,
                   "template": TEXT, "raw": FLAG, "images": IMAGES,
                   "context": {"type": ["array", "null"], "items": {"type": "integer"}}},
}
EMBED = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": MODEL, "options": OPTIONS, "keep_alive": KEEP_ALIVE, "truncate": FLAG,
        "dimensions": {"type": ["integer", "null"], "minimum": 1},
        "input": {"anyOf": [TEXT, {"type": "array", "maxItems": 2048,
                                   "items": {"type": "string"}}]},
    },
}
EMBEDDINGS = {
    "type": "object",
    "required": ["model"],
    "properties": {"model": MODEL, "prompt": TEXT, "options": OPTIONS,
                   "keep_alive": KEEP_ALIVE},
}
SHOW = {"type": "object", "required": ["model"],
        "properties": {"model": MODEL, "verbose": FLAG}}

# --- answers (for /openapi.json) -----------------------------------------------------------

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
STRING = {"type": "string"}
DETAILS = {
    "type": "object",
    "properties": {"parent_model": STRING, "format": STRING, "family": STRING,
                   "families": {"type": ["array", "null"], "items": STRING},
                   "parameter_size": STRING, "quantization_level": STRING},
}
TAG: dict[str, Any] = {
    "type": "object",
    "required": ["name", "model", "modified_at", "size", "digest", "details"],
    "properties": {"name": STRING, "model": STRING, "modified_at": STRING,
                   "size": {"type": "integer"}, "digest": STRING, "details": DETAILS},
}
TAGS = {"type": "object", "required": ["models"],
        "properties": {"models": {"type": "array", "items": TAG}}}
RUNNING = {"type": "object", "required": [*TAG["required"], "expires_at", "size_vram"],
           "properties": {**TAG["properties"], "expires_at": STRING,
                          "size_vram": {"type": "integer"}}}
PS = {"type": "object", "required": ["models"],
      "properties": {"models": {"type": "array", "items": RUNNING}}}
SHOWN = {
    "type": "object",
    "required": ["details", "model_info", "capabilities", "modified_at"],
    "properties": {"details": DETAILS, "model_info": {"type": "object"},
                   "capabilities": {"type": "array", "items": STRING},
                   "modified_at": STRING, "modelfile": STRING, "template": STRING,
                   "parameters": STRING, "license": STRING},
}
VERSION = {"type": "object", "required": ["version"], "properties": {"version": STRING}}

_LINE = {"model": STRING, "created_at": STRING, "done": {"type": "boolean"},
         "done_reason": STRING, "prompt_eval_count": {"type": "integer"},
         "eval_count": {"type": "integer"}}
CHAT_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["model", "created_at", "message", "done"],
    "properties": {**_LINE, "message": {"type": "object", "required": ["role", "content"]}},
}
GENERATE_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["model", "created_at", "response", "done"],
    "properties": {**_LINE, "response": STRING},
}
EMBED_ANSWER = {"type": "object", "required": ["model", "embeddings"],
                "properties": {"model": STRING, "embeddings": {"type": "array"}}}
EMBEDDINGS_ANSWER = {"type": "object", "required": ["embedding"],
                     "properties": {"embedding": {"type": "array"}}}
