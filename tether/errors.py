"""The error catalogue: every code the hub makes, with its HTTP status, its OpenAI error type
(which follows the status) and its message template. Code raises by name:

    raise errors.LLM_NOT_FOUND(name=name)

docs/protocol.md's Errors table is checked against this list (tests/test_error_codes.py),
and nothing outside this module builds a TetherError by hand. The HTTP layer turns them
into the OpenAI error envelope in exactly one place (tether/http/errors.py).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class TetherError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers: dict[str, str] = {}  # extra response headers (Retry-After)

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "code": self.code,
                "param": self.param,
            }
        }

    def __repr__(self) -> str:
        return f"TetherError({self.status}, {self.code!r}, {self.message!r})"


@dataclass(frozen=True)
class Code:
    """One row of the catalogue. Calling it makes the error: `template` filled with the
    keyword arguments (`str.format`, so `{name!r}` and `{seconds:g}` work)."""

    status: int
    code: str
    template: str

    @property
    def type(self) -> str:
        return error_type(self.status)

    @property
    def fields(self) -> frozenset[str]:
        """The names the template needs."""
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.template) if f)

    def __call__(self, *, param: str | None = None, **fields: Any) -> TetherError:
        return TetherError(self.status, self.code, self.template.format(**fields), param)

    def at(self, status: int, **fields: Any) -> TetherError:
        """With another status than the catalogue's: a backend's refusal relayed with its
        own status, or one of falcon's 4xx refusals."""
        error = self(**fields)
        error.status = status
        return error


# `why` is a message written where the error is made, for codes whose cause varies (a
# schema error names the field; a refused key says what was wrong with it).
INVALID_REQUEST = Code(400, "invalid_request", "{why}")
UNAUTHORIZED = Code(401, "unauthorized", "{why}")
FORBIDDEN = Code(403, "forbidden", "{why}")
LLM_NOT_ALLOWED = Code(403, "llm_not_allowed", "this key may not use {name!r}")
NOT_FOUND = Code(404, "not_found", "no route for {method} {path}")
LLM_NOT_FOUND = Code(404, "llm_not_found", "no Llm named {name!r}")
SESSION_NOT_FOUND = Code(404, "session_not_found",
                         "provider session {session_id!r} owns no Llm; register first")
TASK_NOT_FOUND = Code(404, "task_not_found", "task {task_id!r} is unknown or already finished")
METHOD_NOT_ALLOWED = Code(405, "method_not_allowed", "{method} is not allowed on {path}")
PUBLIC_LLM_CONFLICT = Code(409, "public_llm_conflict", "{name!r} is a public Llm of this hub")
ALIAS_CONFLICT = Code(409, "alias_conflict", "{name!r} is an alias of this hub")
LLM_OWNED_BY_OTHER_SESSION = Code(409, "llm_owned_by_other_session",
                                  "{name!r} is {state} under {owner}")
TOO_MANY_LLMS = Code(409, "too_many_llms",
                     "publisher key {key!r} would hold more than {limit} Llms; withdraw some "
                     "or let inactive ones expire")
NOT_STREAMING = Code(409, "not_streaming", "task {task_id!r} is not a streaming task")
BODY_TOO_LARGE = Code(413, "body_too_large", "request body is larger than {limit} bytes")
RATE_LIMITED = Code(429, "rate_limited", "{why}")
QUEUE_FULL = Code(429, "queue_full", "{why}; retry later")
INTERNAL_ERROR = Code(500, "internal_error", "the hub failed to handle this request")
PUBLISHER_ERROR = Code(502, "publisher_error", "{why}")
UPSTREAM_UNREACHABLE = Code(502, "upstream_unreachable",
                            "the upstream of {name!r} is unreachable: {why}")
UPSTREAM_ERROR = Code(502, "upstream_error",
                      "relaying to the upstream of {name!r} failed (task {task_id})")
PUBLISHER_OFFLINE = Code(503, "publisher_offline", "the publisher of {name!r} is offline")
PUBLISHER_DISCONNECTED = Code(503, "publisher_disconnected",
                              "the task of {name!r} was lost before its answer was complete "
                              "(its publisher or its hub process went away); retry")
WAKE_FAILED = Code(503, "wake_failed", "could not wake {name!r}: {why}")
SHUTTING_DOWN = Code(503, "shutting_down", "the hub is shutting down; retry shortly")
UNHEALTHY = Code(503, "unhealthy", "{why}")
HUB_BUSY = Code(503, "hub_busy", "the hub did not answer in time; retry")
DATABASE_UNAVAILABLE = Code(503, "database_unavailable",
                            "the hub's database does not answer; retry shortly")
ACTOR_RESTARTED = Code(503, "actor_restarted", "the {actor} {why}; retry")
WAKE_TIMEOUT = Code(504, "wake_timeout", "{name!r} did not wake within {seconds:g} s")
INFER_TIMEOUT = Code(504, "infer_timeout", "no result from {source} within {seconds:g} s")
STREAM_IDLE_TIMEOUT = Code(504, "stream_idle_timeout",
                           "no chunk from {name!r} for {seconds:g} s")

CATALOGUE: dict[str, Code] = {
    name: value for name, value in list(globals().items()) if isinstance(value, Code)
}


def from_publisher(status: int, code: str | None, message: str | None) -> TetherError:
    """A publisher's error result, relayed as it said it: its own code (which the hub does
    not make, so the catalogue does not list it), else `publisher_error`."""
    message = message or "the publisher reported an error"
    if not code:
        return PUBLISHER_ERROR.at(status, why=message)
    return TetherError(status, code, message)
