"""Ollama requests as the OpenAI tasks every publisher already knows (pure functions).

`/api/chat` and `/api/generate` become chat completions (`raw` generate: a legacy
completion), `/api/embed` and `/api/embeddings` embeddings. Only fields with an OpenAI
meaning are carried over; the rest (`keep_alive`, `num_ctx`, `top_k`, `template`, …) are
ignored, as an OpenAI-compatible backend could not take them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAT = "chat/completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"

# What an Ollama request is, for the answer's shape (answers.py, render.py).
KIND_CHAT, KIND_GENERATE, KIND_RAW = "chat", "generate", "raw"
KIND_EMBED, KIND_EMBEDDINGS = "embed", "embeddings"


@dataclass(frozen=True)
class Task:
    """An Ollama request as the hub relays it: `request` (an OpenAI body, `model` the Llm
    name) to `endpoint`; `kind` says how to answer."""

    kind: str
    endpoint: str
    request: dict[str, Any]
    streaming: bool


@dataclass(frozen=True)
class Load:
    """A request with nothing to generate: Ollama loads (or, `keep_alive` 0, unloads) the
    model and answers at once. The hub answers it itself."""

    kind: str
    unload: bool


# Ollama options with an OpenAI field of the same name and meaning.
_SAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


def sampling(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ollama's `options` as OpenAI fields."""
    if not options:
        return {}
    out = {key: options[key] for key in _SAME if options.get(key) is not None}
    limit = options.get("num_predict")
    if isinstance(limit, int) and limit > 0:  # -1 (no limit), -2 (fill the context): none
        out["max_tokens"] = limit
    stop = options.get("stop")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return out


def response_format(fmt: Any) -> dict[str, Any] | None:
    """`format`: "json" is JSON mode; a JSON schema asks for output that fits it."""
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, Mapping) and fmt:
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    return None  # "" or absent: free text


_IMAGE_TYPES = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                ("UklGR", "image/webp"))


def image_part(image: str) -> dict[str, Any]:
    """One of Ollama's `images` (base64, no media type) as an OpenAI content part: a data
    URL, its type read from the first bytes."""
    if image.startswith("data:"):
        url = image
    else:
        kind = next((t for prefix, t in _IMAGE_TYPES if image.startswith(prefix)), "image/jpeg")
        url = f"data:{kind};base64,{image}"
    return {"type": "image_url", "image_url": {"url": url}}


def content(text: str, images: Sequence[str]) -> str | list[dict[str, Any]]:
    """A message's text and images: a plain string when there are no images, else parts."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [image_part(image) for image in images]


def _call_id(call: Mapping[str, Any], turn: int, index: int) -> str:
    given = call.get("id")
    return given if isinstance(given, str) and given else f"call_{turn}_{index}"


def _arguments(arguments: Any) -> str:
    """OpenAI carries a call's arguments as JSON text; Ollama as an object."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments or {})


def messages(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's. Tool calls get ids (OpenAI ties each tool result to
    its call; Ollama names the tool, or relies on order): a `tool` message answers the
    pending call of its `tool_name`, else the oldest pending one."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of calls not yet answered
    for turn, msg in enumerate(history):
        role = msg["role"]
        item: dict[str, Any] = {"role": role,
                                "content": content(msg.get("content") or "",
                                                   msg.get("images") or ())}
        calls = msg.get("tool_calls") or ()
        if calls:
            item["tool_calls"] = []
            pending = []
            for index, call in enumerate(calls):
                function = call.get("function") or {}
                name = function.get("name") or ""
                call_id = _call_id(call, turn, index)
                item["tool_calls"].append({"id": call_id, "type": "function", "function": {
                    "name": name, "arguments": _arguments(function.get("arguments"))}})
                pending.append((call_id, name))
        if role == "tool":
            item["tool_call_id"] = _answered(msg, pending, turn)
        out.append(item)
    return out


def _answered(msg: Mapping[str, Any], pending: list[tuple[str, str]], turn: int) -> str:
    given = msg.get("tool_call_id")
    if isinstance(given, str) and given:
        return given
    if not pending:
        return f"call_{turn}"  # a result for no call we know: an id the backend may refuse
    name = msg.get("tool_name")
    index = next((i for i, (_, called) in enumerate(pending) if called == name), 0)
    return pending.pop(index)[0]


def tools(given: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": tool.get("type") or "function", "function": tool.get("function") or {}}
            for tool in given]


def streamed(body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told not to."""
    return body.get("stream") is not False


def _common(body: Mapping[str, Any], streaming: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": body["model"], "stream": streaming}
    if streaming:  # the answer's last line carries the counts: ask for them
        out["stream_options"] = {"include_usage": True}
    out.update(sampling(body.get("options")))
    return out


def _unload(body: Mapping[str, Any]) -> bool:
    return body.get("keep_alive") in (0, "0", "0s", "0m")


def chat(body: Mapping[str, Any]) -> Task | Load:
    """POST /api/chat."""
    if not body.get("messages"):
        return Load(KIND_CHAT, _unload(body))
    streaming = streamed(body)
    out = {**_common(body, streaming), "messages": messages(body["messages"])}
    fmt = response_format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    if body.get("tools"):
        out["tools"] = tools(body["tools"])
    return Task(KIND_CHAT, CHAT, out, streaming)


def generate(body: Mapping[str, Any]) -> Task | Load:
    """POST /api/generate: `system` and `prompt` as a chat; `raw` (the prompt is already
    templated) as a legacy completion, with `suffix`."""
    images = body.get("images") or ()
    if not body.get("prompt") and not images:
        return Load(KIND_GENERATE, _unload(body))
    streaming = streamed(body)
    out = _common(body, streaming)
    if body.get("raw"):
        out["prompt"] = body.get("prompt") or ""
        if body.get("suffix"):
            out["suffix"] = body["suffix"]
        return Task(KIND_RAW, COMPLETIONS, out, streaming)
    history: list[dict[str, Any]] = []
    if body.get("system"):
        history.append({"role": "system", "content": body["system"]})
    history.append({"role": "user", "content": content(body.get("prompt") or "", images)})
    out["messages"] = history
    fmt = response_format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    return Task(KIND_GENERATE, CHAT, out, streaming)


def embed(body: Mapping[str, Any]) -> Task | Load:
    """POST /api/embed: `input`, one text or several."""
    given = body.get("input")
    if not given:
        return Load(KIND_EMBED, _unload(body))
    out: dict[str, Any] = {"model": body["model"], "input": given}
    if body.get("dimensions"):
        out["dimensions"] = body["dimensions"]
    return Task(KIND_EMBED, EMBEDDINGS, out, False)


def embeddings(body: Mapping[str, Any]) -> Task | Load:
    """POST /api/embeddings (the older route): one `prompt`."""
    if not body.get("prompt"):
        return Load(KIND_EMBEDDINGS, _unload(body))
    return Task(KIND_EMBEDDINGS, EMBEDDINGS, {"model": body["model"], "input": body["prompt"]},
                False)
