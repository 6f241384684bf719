"""The bus's wire form of actor messages: JSON, never pickle (docs/architecture.md,
Several processes).

Redis is not a trust boundary for code execution: whoever can publish on a channel must not
be able to run code in a hub. So a message is rebuilt only as one of an allow-list of
dataclasses (by name), from plain data. The live parts of a message get plain-data forms:

- an actor ref:      ["session", process, session_id] / ["llm", process, name]
- a reply channel:   ["reply", process, request_id]
- a TetherError:     status, code, message, param

A reply channel is a field the message declares a ReplyChannel; an actor ref, any object
with `tell` and an `actor_urn`. Which address each has, and which object it becomes on
arrival (a local actor, a proxy that sends on the bus), is addresses.py's business: it
passes the four hooks below. Fields that only mean something in their own process (a
public Llm's cancel closure) are dropped on the way out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import typing
from collections.abc import Callable
from typing import Any

from tether import errors
from tether.actors import messages as m
from tether.errors import TetherError

Address = tuple[str, str, str]  # (kind, process, key)

# Every message that may cross the bus. Anything else is refused on the way in and out.
ALLOWED: dict[str, type] = {cls.__name__: cls for cls in (
    m.LlmState, m.SessionLink, m.MemberInfo, m.AliasRoute,
    m.Infer, m.Withdraw, m.RecordHeartbeat, m.SetStatus, m.StreamLost, m.StreamOpened,
    m.WakeSucceeded, m.WakeFailed, m.WakeTimedOut, m.TaskEnded, m.TasksInFlight,
    m.TaskReturned, m.TasksOffered, m.TasksReleased, m.TaskMoved,
    m.SendInfer, m.ReleaseTasks, m.SendWake, m.AdoptTasks, m.SubmitResult, m.CancelTask,
    m.LlmRestarted, m.CountTasks,
    m.Dispatched, m.Routed, m.WakePending, m.Queued, m.Completed, m.Chunks, m.StreamDone, m.Failed,
)}

# Fields that stay home: dropped on encode, their default on decode.
LOCAL_ONLY: dict[str, frozenset[str]] = {"Dispatched": frozenset({"cancel"})}


class CodecError(ValueError):
    """A payload that is not a message this hub sends (a bug, or a foreign publisher)."""


@dataclasses.dataclass(frozen=True)
class Hooks:
    """How live objects map to plain addresses and back, in this process."""

    ref_address: Callable[[Any], Address]  # an actor ref (local or proxy) -> its address
    reply_address: Callable[[Any], Address]  # a reply channel -> its address
    ref: Callable[[Address], Any]  # an address -> a ref to tell
    reply: Callable[[Address], Any]  # an address -> a channel to put on


def dumps(obj: Any, hooks: Hooks) -> str:
    return json.dumps(encode(obj, hooks), separators=(",", ":"))


def loads(text: str | bytes, hooks: Hooks) -> Any:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CodecError(f"not JSON: {exc}") from None
    return decode(data, hooks)


def encode(obj: Any, hooks: Hooks) -> Any:
    """Plain JSON data for `obj`. Tagged forms are objects with a "$" key; a plain dict that
    has one itself (a client's request body may) is escaped as ["$dict", items]."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [encode(x, hooks) for x in obj]
    if isinstance(obj, tuple):
        return {"$": "tuple", "v": [encode(x, hooks) for x in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "$" not in obj:
            return {k: encode(v, hooks) for k, v in obj.items()}
        return {"$": "dict", "v": [[encode(k, hooks), encode(v, hooks)] for k, v in obj.items()]}
    if isinstance(obj, TetherError):
        return {"$": "error", "status": obj.status, "code": obj.code, "message": obj.message,
                "param": obj.param}
    if isinstance(obj, dt.datetime):
        return {"$": "datetime", "v": obj.isoformat()}
    if isinstance(obj, (frozenset, set)):
        return {"$": "frozenset", "v": [encode(x, hooks) for x in obj]}
    name = type(obj).__name__
    if dataclasses.is_dataclass(obj) and ALLOWED.get(name) is type(obj):
        skip = LOCAL_ONLY.get(name, frozenset())
        replies = _reply_fields(name)
        return {"$": "msg", "t": name, "f": {
            f.name: _encode_field(getattr(obj, f.name), hooks, f.name in replies)
            for f in dataclasses.fields(obj) if f.name not in skip}}
    raise CodecError(f"{name} does not cross the bus")


def _encode_field(value: Any, hooks: Hooks, reply: bool) -> Any:
    """A message field: live refs and reply channels become addresses here."""
    if reply:
        return {"$": "reply", "a": list(hooks.reply_address(value))}
    if _is_ref(value):
        return {"$": "ref", "a": list(hooks.ref_address(value))}
    return encode(value, hooks)


@functools.cache
def _reply_fields(message: str) -> frozenset[str]:
    """The fields of an allowed message that it declares reply channels (m.ReplyChannel)."""
    return frozenset(name for name, hint in typing.get_type_hints(ALLOWED[message]).items()
                     if hint is m.ReplyChannel)


def _is_ref(value: Any) -> bool:
    return hasattr(value, "tell") and hasattr(value, "actor_urn")


def decode(data: Any, hooks: Hooks) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(x, hooks) for x in data]
    if not isinstance(data, dict):
        raise CodecError(f"unexpected {type(data).__name__}")
    tag = data.get("$")
    if tag is None:
        return {k: decode(v, hooks) for k, v in data.items()}
    try:
        if tag == "tuple":
            return tuple(decode(x, hooks) for x in data["v"])
        if tag == "dict":
            return {decode(k, hooks): decode(v, hooks) for k, v in data["v"]}
        if tag == "frozenset":
            return frozenset(decode(x, hooks) for x in data["v"])
        if tag == "error":  # made (from the catalogue) by another process: as it was sent
            error = errors.from_publisher(int(data["status"]), str(data["code"]),
                                          str(data["message"]))
            error.param = data.get("param")
            return error
        if tag == "datetime":
            return dt.datetime.fromisoformat(data["v"])
        if tag == "ref":
            return hooks.ref(_address(data["a"]))
        if tag == "reply":
            return hooks.reply(_address(data["a"]))
        if tag == "msg":
            cls = ALLOWED.get(data["t"])
            if cls is None:
                raise CodecError(f"{data['t']!r} is not a message that crosses the bus")
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: decode(v, hooks) for k, v in data["f"].items()}
            unknown = set(values) - fields
            if unknown:
                raise CodecError(f"{data['t']} has no field(s) {sorted(unknown)}")
            return cls(**values)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"malformed {tag!r}: {exc!r}") from None
    raise CodecError(f"unknown tag {tag!r}")


def _address(value: Any) -> Address:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, str) for x in value)):
        raise CodecError(f"bad address {value!r}")
    return (value[0], value[1], value[2])
