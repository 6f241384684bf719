"""Logging for the hub and the publisher: `log_format = "text" | "json"`, and a request id
on a request's lines (hub).

The request id lives in a context variable set by RequestIdMiddleware. Under gevent each
greenlet runs in its own context (greenlet >= 1.0), so the id of one request never leaks
onto another's lines. Lines logged by actors on a request's behalf (its outcome) carry the
id explicitly: the request's reply channel captured it (tether.actors.reply).

Privacy: nothing here logs a request or response body; fields are ids, names, statuses,
codes and durations only.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tether_request_id", default=None)

# The structured fields a line may carry (as `extra=`), in the order the JSON shows them.
FIELDS = ("request_id", "task_id", "llm", "session", "endpoint", "status", "code",
          "duration_ms")
# The settings `log_level` and `log_format`, hub and publisher alike (tether.common.config_schema).
LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_LEVEL_SCHEMA = {"enum": list(LEVELS), "x-message": f"must be one of {', '.join(LEVELS)}"}
LOG_FORMAT_SCHEMA = {"enum": ["text", "json"], "x-message": "must be text or json"}
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # an X-Request-Id we are willing to echo


def request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token:
    return _request_id.set(value)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, then the fields present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [req {rid}]" if rid else line


def setup(level: str, fmt: str) -> None:
    """Configure the root logger (and gunicorn's) once per process."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No format here names a thread or process, and under gevent looking the thread up
    # creates a DummyThread for each request's greenlet that logs (issue 13).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in ("gunicorn.error", "gunicorn.access"):
        # gunicorn's own lines go through the same handler, so a JSON log stays JSON.
        gl = logging.getLogger(name)
        for old in list(gl.handlers):
            gl.removeHandler(old)
        gl.propagate = True


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict` for log_format = "json": its master's lines as JSON."""
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    logger = {"level": level.upper(), "handlers": ["console"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tether.common.logs.JsonFormatter"}},
        "handlers": {"console": handler},
        # A logconfig_dict turns gunicorn's access log on; conf/gunicorn.conf.py keeps it off
        # (the hub logs one line per request itself).
        "loggers": {"gunicorn.error": logger,
                    "gunicorn.access": {"level": "CRITICAL", "propagate": False}},
        "root": {"level": level.upper(), "handlers": ["console"]},
    }
