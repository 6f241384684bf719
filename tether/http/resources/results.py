"""The result channel, `POST /api/v1/llms/_provider-results` (docs/protocol.md): one NDJSON
upload carries the final and error results of every task of a session, each line numbered
and naming its task, so a result costs a line read instead of an HTTP request. Each line's
result goes to the very method the per-task result route uses (ActorSystem.submit_result:
in a cluster it reaches a task homed on another process over the bus, as a result does),
and tether.http.result_channel keeps each line applied once."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import falcon

from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.auth import Auth
from tether.http.body import BodyLimits, UploadCut, iter_ndjson, read_json
from tether.http.operation import Operation
from tether.http.resources.provider import NDJSON, SESSION_HEADER
from tether.http.result_channel import Channels, Stopped

log = logging.getLogger("tether.http")

CHANNEL_HEADER = "X-Result-Channel"

LINE = {
    "type": "object",
    "description": "One result of the per-task route (final or error) with `seq` (an "
                   "integer >= 1, increasing per channel) and `taskId`",
    "required": ["seq", "taskId"],
    "properties": {"seq": {"type": "integer", "minimum": 1},
                   "taskId": {"type": "string", "minLength": 1, "maxLength": 256}},
}
ANSWER = {
    "type": "object",
    "required": ["ok", "applied"],
    "properties": {
        "ok": {"const": True},
        "applied": {"type": "integer", "description": "the highest seq handled: confirmed"},
        "duplicates": {"type": "integer"},
        "refused": {"type": "array", "items": {
            "type": "object", "properties": {"seq": {"type": "integer"},
                                             "taskId": {"type": "string"},
                                             "code": {"type": "string"}}}},
    },
}
PARAMS = (
    {"name": SESSION_HEADER, "in": "header", "required": True, "schema": schemas.SESSION_ID,
     "description": "The session whose tasks the lines answer"},
    {"name": CHANNEL_HEADER, "in": "header", "required": True, "schema": schemas.SESSION_ID,
     "description": "The channel, the publisher's pick (fresh at each start)"},
)


class ResultChannel:
    role = "publisher"
    operations = {"POST": Operation(
        "The result channel: a session's final and error results as numbered NDJSON lines",
        request=LINE, ok=ANSWER, ndjson=True, params=PARAMS)}

    def __init__(self, system: ActorSystem, auth: Auth) -> None:
        self.system = system
        self.auth = auth
        self.limit = BodyLimits.of(system.settings)
        self.channels = Channels(system.settings.infer_timeout_s)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        session_id = schemas.check_session_id(req.get_header(SESSION_HEADER), SESSION_HEADER)
        channel_id = schemas.check_session_id(req.get_header(CHANNEL_HEADER), CHANNEL_HEADER,
                                              "a result channel id")
        caller = req.context.caller
        self.auth.check_owner(session_id, caller)
        channel = self.channels.get(session_id, channel_id)
        system = self.system

        def apply(task_id: str, result: dict) -> None:
            # The session is the channel's: a task of another session is 403, as with
            # X-Provider-Session-Id on the per-task route.
            system.submit_result(task_id, session_id, result)

        def one_line() -> Iterator[object]:  # a plain JSON body: one line (curl)
            yield read_json(req, self.limit)

        lines = iter_ndjson(req, self.limit) if (req.content_type or "").startswith(NDJSON) \
            else one_line()
        try:
            outcome = channel.take(lines, apply)
        except Stopped as stop:
            # The rest of the body is read and dropped by the server: the publisher gets
            # this answer once its upload ends, and sends again what `applied` leaves out.
            error = stop.error
            log.log(logging.WARNING if error.status >= 500 else logging.INFO,
                    "result channel of session %s stopped at seq %d: %d %s", session_id,
                    stop.applied + 1, error.status, error.code)
            resp.status = error.status
            resp.media = {**error.envelope(), "applied": stop.applied}
            for name, value in error.headers.items():
                resp.set_header(name, value)
            if error.status == 413:
                resp.set_header("Connection", "close")  # no drain of a huge unread body
            return
        except UploadCut as exc:
            # The publisher went away or broke off: what arrived was applied, and it sends
            # the unconfirmed lines again (the channel skips those already handled).
            log.info("result channel of session %s was cut (%s)", session_id, exc)
            resp.status = 499  # nobody reads it
            return
        if outcome.refused:
            log.debug("result channel of session %s: %d line(s) refused", session_id,
                      len(outcome.refused))
        resp.media = outcome.answer()
