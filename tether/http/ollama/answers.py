"""OpenAI answers in Ollama's shapes (pure functions): a whole answer at once, or a stream
folded chunk by chunk into Ollama's lines.

`finish_reason` becomes `done_reason`; `usage` becomes `prompt_eval_count` / `eval_count`
(0 when the backend reported none); a tool call's arguments, JSON text in OpenAI's answers,
become the object Ollama's clients read. Durations are the hub's own measure, in
nanoseconds (Timing).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.http.ollama.translate import (
    KIND_CHAT,
    KIND_EMBED,
    KIND_EMBEDDINGS,
    KIND_GENERATE,
    KIND_RAW,
)
from tether.http.openai_render import error_envelope


def created_at(now: dt.datetime | None = None) -> str:
    """Ollama's timestamps: RFC 3339 with microseconds, UTC."""
    now = now or dt.datetime.now(dt.UTC)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def done_reason(finish: Any) -> str:
    """Ollama says `stop` (tool calls included) or `length`; another reason is kept."""
    if finish in (None, "stop", "tool_calls", "function_call"):
        return "stop"
    return str(finish)


def counts(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, Mapping) else {}
    return {"prompt_eval_count": _count(usage.get("prompt_tokens")),
            "eval_count": _count(usage.get("completion_tokens"))}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class Timing:
    """Nanoseconds, measured at the hub: `total` from the request's arrival, `prompt_eval`
    until the first chunk, `eval` from then on (the whole time for an answer that came at
    once). No load is seen from here: `load_duration` is 0."""

    total: int
    prompt_eval: int
    eval: int

    def fields(self) -> dict[str, int]:
        return {"total_duration": self.total, "load_duration": 0,
                "prompt_eval_duration": self.prompt_eval, "eval_duration": self.eval}


def first_choice(body: Any) -> Mapping[str, Any]:
    choices = body.get("choices") if isinstance(body, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return {}


def _text(value: Any) -> str:
    """Message content: text, or a list of parts whose text is joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text") or "" for p in value if isinstance(p, Mapping))
    return ""


def _thinking(source: Mapping[str, Any]) -> str:
    """Reasoning text, as backends name it (llama.cpp and vLLM: `reasoning_content`;
    Ollama's own OpenAI routes: `reasoning`)."""
    for key in ("reasoning_content", "reasoning"):
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def arguments(text: Any) -> Any:
    """A call's arguments as an object. Text that is not a JSON object is passed on as it
    is: the model's mistake is the client's to see, not the hub's to guess at."""
    if not isinstance(text, str):
        return text if isinstance(text, Mapping) else {}
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            out.append({"function": {"name": function.get("name") or "",
                                     "arguments": arguments(function.get("arguments"))}})
    return out


def message(msg: Any) -> dict[str, Any]:
    """An OpenAI assistant message (a whole answer's) as Ollama's."""
    msg = msg if isinstance(msg, Mapping) else {}
    out: dict[str, Any] = {"role": "assistant", "content": _text(msg.get("content"))}
    thinking = _thinking(msg)
    if thinking:
        out["thinking"] = thinking
    calls = tool_calls(msg.get("tool_calls"))
    if calls:
        out["tool_calls"] = calls
    return out


def line(kind: str, model: str, piece: Any, done: bool = False) -> dict[str, Any]:
    """One line of an answer: `piece` is a chat's message, or a generate's response text."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    out["message" if kind == KIND_CHAT else "response"] = piece
    out["done"] = done
    return out


def _empty(kind: str) -> Any:
    return {"role": "assistant", "content": ""} if kind == KIND_CHAT else ""


def final(kind: str, model: str, finish: Any, usage: Any, timing: Timing,
          piece: Any = None) -> dict[str, Any]:
    """An answer's last line (`done: true`), with its reason, counts and durations."""
    out = line(kind, model, _empty(kind) if piece is None else piece, done=True)
    out["done_reason"] = done_reason(finish)
    out.update(timing.fields())
    out.update(counts(usage))
    return out


def whole(kind: str, model: str, body: Any, timing: Timing) -> dict[str, Any]:
    """A whole OpenAI answer (chat completion, completion, embeddings) as Ollama's."""
    if kind == KIND_EMBED:
        return {"model": model, "embeddings": vectors(body), "total_duration": timing.total,
                "load_duration": 0,
                "prompt_eval_count": counts(_usage(body))["prompt_eval_count"]}
    if kind == KIND_EMBEDDINGS:
        found = vectors(body)
        return {"embedding": found[0] if found else []}
    choice = first_choice(body)
    if kind == KIND_CHAT:
        piece: Any = message(choice.get("message"))
    elif kind == KIND_RAW:
        piece = choice.get("text") if isinstance(choice.get("text"), str) else ""
    else:
        piece = message(choice.get("message"))["content"]
    return final(kind, model, choice.get("finish_reason"), _usage(body), timing, piece)


def _usage(body: Any) -> Any:
    return body.get("usage") if isinstance(body, Mapping) else None


def vectors(body: Any) -> list[Any]:
    """The embeddings of an OpenAI embeddings answer, in input order."""
    data = body.get("data") if isinstance(body, Mapping) else None
    items = [d for d in data if isinstance(d, Mapping)] if isinstance(data, list) else []
    items.sort(key=lambda d: _index(d.get("index")))
    return [d.get("embedding") for d in items]


def _index(value: Any) -> int:
    return value if isinstance(value, int) else 0


def loaded(kind: str, model: str, unload: bool) -> dict[str, Any]:
    """The answer to a request with nothing to generate (Ollama loads the model)."""
    if kind == KIND_EMBED:
        return {"model": model, "embeddings": []}
    if kind == KIND_EMBEDDINGS:
        return {"embedding": []}
    out = line(kind, model, _empty(kind), done=True)
    out["done_reason"] = "unload" if unload else "load"
    return out


def error_message(status: int, body: Any) -> str:
    """What a publisher's non-2xx answer says, as one message (the same words the OpenAI
    routes' `event: error` would carry)."""
    return str(error_envelope(status, body)["error"]["message"])


@dataclass
class Fold:
    """What an OpenAI stream said so far: each chunk's new text is a line at once; the
    finish reason, the usage and the tool calls (which OpenAI streams in fragments) wait
    for the last line."""

    kind: str
    finish: Any = None
    usage: Any = None
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def piece(self, chunk: Any) -> Any:
        """The part of a line `chunk` shows the client (a message, or response text), or
        None when it shows nothing yet."""
        if not isinstance(chunk, Mapping):
            return None
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choice = first_choice(chunk)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        if self.kind == KIND_RAW:
            text = choice.get("text")
            return text if isinstance(text, str) and text else None
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        self._add_calls(delta.get("tool_calls"))
        text, thinking = _text(delta.get("content")), _thinking(delta)
        if self.kind == KIND_GENERATE:
            return text or None
        if not text and not thinking:
            return None
        out: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            out["thinking"] = thinking
        return out

    def _add_calls(self, fragments: Any) -> None:
        for fragment in fragments if isinstance(fragments, Sequence) else ():
            if not isinstance(fragment, Mapping):
                continue
            call = self.calls.setdefault(_index(fragment.get("index")),
                                         {"name": "", "arguments": ""})
            function = fragment.get("function")
            if isinstance(function, Mapping):
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""

    def called(self) -> dict[str, Any] | None:
        """The tool calls streamed so far, as one chat message (once), or None."""
        if not self.calls or self.kind != KIND_CHAT:
            return None
        calls = [{"function": {"name": c["name"], "arguments": arguments(c["arguments"])}}
                 for _, c in sorted(self.calls.items())]
        self.calls = {}
        return {"role": "assistant", "content": "", "tool_calls": calls}
