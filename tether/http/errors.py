"""The one place that turns errors into the OpenAI error envelope of docs/protocol.md (or,
on the Ollama routes, into Ollama's shape: tether/http/ollama/errors.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon
import redis

from tether import errors
from tether.errors import TetherError
from tether.http.body import UploadCut
from tether.http.ollama import errors as ollama
from tether.store import db

log = logging.getLogger("tether.http")


def render(req: falcon.Request, resp: falcon.Response, error: TetherError) -> None:
    resp.status = error.status
    resp.media = ollama.body(error) if ollama.is_ollama_path(req.path) else error.envelope()
    for name, value in error.headers.items():
        resp.set_header(name, value)
    if error.status == 413:
        # Do not let the server drain a huge unread body to keep the connection alive.
        resp.set_header("Connection", "close")


def _on_tether_error(req: falcon.Request, resp: falcon.Response, ex: TetherError, _p: Any) -> None:
    # A refusal is a normal event: one line, no traceback. A relayed request's outcome is
    # already logged once by its reply channel (tether.requests).
    if not getattr(req.context, "outcome_logged", False):
        # A schema error's message can quote the body (prompt text): name the field only.
        detail = f"field {ex.param}" if ex.code == "invalid_request" else ex.message
        log.log(_level(ex.status), "%s %s -> %d %s: %s",
                req.method, req.path, ex.status, ex.code, detail)
    render(req, resp, ex)


def _level(status: int) -> int:
    """5xx: the hub could not serve. Refused keys, conflicts, limits: worth an operator's
    eye. The rest (a read of an unknown name, a late result, a bad body) is a routine
    answer to the caller: DEBUG, or polling clients would fill the log."""
    if status >= 500:
        return logging.WARNING
    if status in (401, 403, 409, 413, 429):
        return logging.INFO
    return logging.DEBUG


class AnswersAreNotFaults(logging.Filter):
    """For the `pykka` logger: an actor that answers an ask with a TetherError (a 409, a 404
    for a late result) is giving an answer, which the HTTP layer logs in one line. pykka
    would log each with a full traceback ("Exception returned from … to caller"); drop
    those records, and keep the ones for any other exception (a real fault)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # An engine's outage answered to the caller is logged once by the HTTP layer too.
        return not (isinstance(exc, TetherError) or (exc is not None and db.is_outage(exc)))


def _on_http_error(
    req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, _p: Any
) -> None:
    # falcon refuses by itself only with these: no route, wrong method, and the 400s and
    # 415 of its request parsing (bodies over the limit are tether/http/body.py's 413).
    status = ex.status_code
    if status == 404:
        error = errors.NOT_FOUND(method=req.method, path=req.path)
    elif status == 405:
        error = errors.METHOD_NOT_ALLOWED(method=req.method, path=req.path)
    else:
        error = errors.INVALID_REQUEST.at(
            status, why=ex.description or ex.title or "request refused")
    render(req, resp, error)
    headers = ex.headers or {}  # falcon allows a mapping or a list of pairs
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        resp.set_header(name, value)


def _on_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, _p: Any) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path)
    render(req, resp, errors.INTERNAL_ERROR())


def _on_bus_unreachable(req: falcon.Request, resp: falcon.Response, ex: Exception,
                        _p: Any) -> None:
    # Redis (the bus, shared limits) not answering, or out of connections: the request may
    # well be served on a retry, and the outage itself is logged once by whoever uses Redis
    # (tether.cluster.redis_client.Outage). A Redis *answer* that is an error is a fault: 500 above.
    error = errors.HUB_BUSY()
    error.headers = {"Retry-After": "1"}  # a publisher's result, say, is posted again
    log.warning("%s %s -> %d %s: Redis did not answer (%s: %s)", req.method, req.path,
                error.status, error.code, type(ex).__name__, ex)
    render(req, resp, error)


def _on_database_outage(req: falcon.Request, resp: falcon.Response, ex: Exception,
                        _p: Any) -> None:
    # The database down, restarting or cut off: a request that needs it now is answered
    # 503 and may be retried; the outage is no fault of the hub's (one line, no traceback).
    error = errors.DATABASE_UNAVAILABLE()
    log.warning("%s %s -> %d %s: %s: %s", req.method, req.path, error.status, error.code,
                type(ex).__name__, " ".join(str(ex).split()))
    render(req, resp, error)


def _on_upload_cut(req: falcon.Request, resp: falcon.Response, ex: Exception,
                   _p: Any) -> None:
    # The sender went away part-way through its body: nobody reads an answer; one line.
    log.info("%s %s: the request body was cut (%s)", req.method, req.path, ex)
    resp.status = 499


def install(app: falcon.App) -> None:
    if not any(isinstance(f, AnswersAreNotFaults) for f in logging.getLogger("pykka").filters):
        logging.getLogger("pykka").addFilter(AnswersAreNotFaults())
    # falcon picks the most specific handler for an exception's type.
    app.add_error_handler(Exception, _on_unexpected)
    app.add_error_handler(falcon.HTTPError, _on_http_error)
    app.add_error_handler(TetherError, _on_tether_error)
    for unreachable in (redis.ConnectionError, redis.TimeoutError):
        app.add_error_handler(unreachable, _on_bus_unreachable)
    for outage in db.OUTAGE:
        app.add_error_handler(outage, _on_database_outage)
    app.add_error_handler(UploadCut, _on_upload_cut)
