"""What the publisher changes in a backend's answer before it leaves this machine
(docs/protocol.md, Stream): the Llm's name in place of the backend's model id (with
llama.cpp, a model file's path), error bodies in the OpenAI envelope, and whether a stream
came to its end.
"""

from __future__ import annotations

import json
from typing import Any

from tether.errors import error_type

# The last event of a Responses API stream, which ends without `[DONE]`.
RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
MESSAGE_MAX = 2000  # characters of a backend's error text kept as the message


def _rename(answer: dict[str, Any], name: str) -> bool:
    """Put `name` where `answer` names its model: at the top (chat, completions, embeddings,
    a response), or in the `response` a Responses stream event carries. True if changed."""
    changed = False
    for holder in (answer, answer.get("response")):
        if isinstance(holder, dict) and "model" in holder and holder["model"] != name:
            holder["model"] = name
            changed = True
    return changed


def relabel_body(body: Any, name: str) -> Any:
    """A whole answer with the Llm's name as its model."""
    if isinstance(body, dict):
        _rename(body, name)
    return body


def relabel_chunk(data: str, name: str) -> tuple[str, bool]:
    """One streamed chunk with the Llm's name as its model, and whether it ends the answer
    (a choice with a `finish_reason`, or a Responses stream's last event)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return data, False
    if not isinstance(chunk, dict):
        return data, False
    final = chunk.get("type") in RESPONSE_ENDS or any(
        isinstance(choice, dict) and choice.get("finish_reason")
        for choice in chunk.get("choices") or ())
    # A chunk sent over several SSE `data:` lines holds newlines, which the hub refuses
    # in a chunk (each reaches its client as one `data:` field): JSON says it in one line.
    if _rename(chunk, name) or "\n" in data or "\r" in data:
        data = json.dumps(chunk, ensure_ascii=False)
    return data, final


def is_openai_error(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and \
        isinstance(body["error"].get("message"), str)


def openai_error(status: int, body: Any) -> Any:
    """An error body in the OpenAI envelope, so SDKs read its message: one already in it
    is kept; another (`{"detail": "Not Found"}`, Ollama's `{"error": "…"}`, text) becomes
    one, with the backend's text as the message."""
    if is_openai_error(body):
        return body
    if isinstance(body, str):
        text = body
    elif isinstance(body, dict) and len(body) == 1 and \
            isinstance(next(iter(body.values())), str):
        text = next(iter(body.values()))  # {"detail": "…"}, {"error": "…"}, {"message": …}
    elif body is None:
        text = f"the backend answered {status} without a body"
    else:
        text = json.dumps(body, ensure_ascii=False)
    return {"error": {"message": text[:MESSAGE_MAX], "type": error_type(status),
                      "code": None, "param": None}}
