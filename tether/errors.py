"""Domain errors. Each carries the HTTP status and machine code of PROTOCOL.md; the HTTP layer
turns them into the OpenAI error envelope in exactly one place (tether/http/errors.py)."""

from __future__ import annotations

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


def invalid_request(message: str, param: str | None = None) -> TetherError:
    return TetherError(400, "invalid_request", message, param)


def llm_not_found(name: str) -> TetherError:
    return TetherError(404, "llm_not_found", f"no Llm named {name!r}")


def session_not_found(session_id: str) -> TetherError:
    return TetherError(
        404, "session_not_found", f"provider session {session_id!r} owns no Llm; register first"
    )


def task_not_found(task_id: str) -> TetherError:
    return TetherError(404, "task_not_found", f"task {task_id!r} is unknown or already finished")


def publisher_offline(name: str) -> TetherError:
    return TetherError(503, "publisher_offline", f"the publisher of {name!r} is offline")


def publisher_disconnected(name: str) -> TetherError:
    return TetherError(
        503, "publisher_disconnected", f"the publisher of {name!r} disconnected before answering"
    )


def forbidden(message: str) -> TetherError:
    return TetherError(403, "forbidden", message)


def shutting_down() -> TetherError:
    return TetherError(503, "shutting_down", "the hub is shutting down; retry shortly")


def actor_restarted(what: str) -> TetherError:
    return TetherError(503, "actor_restarted", f"{what} failed and is being restarted; retry")
