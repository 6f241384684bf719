"""The publisher control plane: register, stream, heartbeat, status, task result."""

from __future__ import annotations

import logging
import queue
import uuid

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import disconnect, schemas, streams
from tether.http.auth import Auth
from tether.http.body import BodyLimits, UploadCut, iter_ndjson, read_json
from tether.http.limits import RegisterRate, StreamCounter
from tether.http.operation import SSE, Operation, json_body

log = logging.getLogger("tether.http")

SESSION_HEADER = "X-Provider-Session-Id"
NDJSON = "application/x-ndjson"
STREAM_PARAMS = (
    {"name": SESSION_HEADER, "in": "header", "required": False, "schema": schemas.SESSION_ID,
     "description": "The session (or the query's providerSessionId): one of the two is "
                    "required, else 400; an id that breaks the pattern is 400"},
    {"name": "providerSessionId", "in": "query", "required": False,
     "schema": schemas.SESSION_ID, "description": f"Instead of {SESSION_HEADER}"},
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
)
RESULT_PARAMS = (
    {"name": SESSION_HEADER, "in": "header", "required": False, "schema": schemas.SESSION_ID,
     "description": "When given, the task's session: else 403"},
)


class _Resource:
    role = "publisher"

    def __init__(self, system: ActorSystem, auth: Auth) -> None:
        self.system = system
        self.auth = auth
        self.limit = BodyLimits.of(system.settings)


class Register(_Resource):
    operations = {"POST": Operation("Register providers", request=schemas.REGISTER,
                                    ok=schemas.REGISTERED)}

    def __init__(self, system: ActorSystem, auth: Auth) -> None:
        super().__init__(system, auth)
        self.rate = RegisterRate(system.settings)

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        self.rate.admit(req.context.caller, req.remote_addr or "")
        seen: set[str] = set()
        for i, spec in enumerate(body["providers"]):
            if spec["name"] in seen:
                raise errors.INVALID_REQUEST(
                    why=f"providers[{i}].name: {spec['name']!r} appears twice in one request",
                    param=f"providers[{i}].name",
                )
            seen.add(spec["name"])
            schemas.check_extra_config(spec, i, self.system.settings.max_extra_config_bytes)
        session_id = body.get("providerSessionId") or str(uuid.uuid4())
        self.auth.claim(session_id, req.context.caller)
        caller = req.context.caller
        session_id, done = self.system.register(
            session_id, body["providers"], caller.name if self.auth.enabled else None,
            caller.role == "admin")
        resp.media = {"providerSessionId": session_id,
                      "llms": self.system.read(done.rows, done.members)}


class Stream(_Resource):
    operations = {"GET": Operation(
        "The task stream (SSE); the session id in the header or the query, one of them",
        media=SSE, params=STREAM_PARAMS, limited=True,
        events=(("hello", schemas.HELLO), ("task", schemas.TASK)))}

    def __init__(self, system: ActorSystem, auth: Auth, streams_per_key: StreamCounter) -> None:
        super().__init__(system, auth)
        self.streams_per_key = streams_per_key

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session_id = schemas.check_session_id(
            req.get_header(SESSION_HEADER) or req.get_param("providerSessionId"), SESSION_HEADER)
        self.auth.check_owner(session_id, req.context.caller)
        # Opaque to the resource: the session replays only after an id its process sent.
        last_event_id = req.get_header("Last-Event-ID") or None
        outbox: queue.Queue = queue.Queue()
        release = self.streams_per_key.open(req.context.caller)
        try:
            token = self.system.open_stream(session_id, outbox, last_event_id)
        except BaseException:
            release()
            raise

        def lost() -> None:
            self.system.close_stream(session_id, token)

        stop_watch = disconnect.watch(req.env, lost)

        def on_end() -> None:
            stop_watch()
            lost()
            release()

        resp.content_type = "text/event-stream"
        resp.set_headers(streams.SSE_HEADERS)
        resp.stream = streams.publisher_stream(outbox, self.system.settings.keepalive_s, on_end)


class Heartbeat(_Resource):
    operations = {"POST": Operation("Heartbeat", request=schemas.HEARTBEAT,
                                    ok=schemas.HEARTBEAT_OK)}

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        self.auth.check_owner(body["providerSessionId"], req.context.caller)
        count = self.system.heartbeat(body["providerSessionId"])
        resp.media = {"ok": True, "llms": count}


class Status(_Resource):
    operations = {"POST": Operation("Report backend status", request=schemas.STATUS,
                                    ok=schemas.OK)}

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        self.auth.check_owner(body["providerSessionId"], req.context.caller)
        updates = [(item["name"], item["status"]) for item in body["llms"]]
        self.system.set_status(body["providerSessionId"], updates)
        resp.media = {"ok": True}


class Withdraw(_Resource):
    """Names the publisher no longer serves (docs/protocol.md, _provider-withdraw)."""

    operations = {"POST": Operation("Withdraw names the publisher no longer serves",
                                    request=schemas.WITHDRAW, ok=schemas.OK)}

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        self.auth.check_owner(body["providerSessionId"], req.context.caller)
        self.system.withdraw_names(body["providerSessionId"], body["names"])
        resp.media = {"ok": True}


class TaskResult(_Resource):
    # One result as JSON, or a stream of them as NDJSON, each validated as it arrives.
    operations = {"POST": Operation("Post a task result", request=schemas.TASK_RESULT,
                                    ok=schemas.OK, ndjson=True, params=RESULT_PARAMS)}

    def on_post(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        caller = req.context.caller
        claimed = req.get_header(SESSION_HEADER)

        def apply(body: object) -> None:
            self.system.submit_result(task_id, claimed, schemas.validate_result(body),
                                      lambda session_id: self.auth.owns(session_id, caller))

        try:
            if (req.content_type or "").startswith(NDJSON):
                # One request carries a whole stream: each line is applied as it arrives.
                for line in iter_ndjson(req, self.limit):
                    apply(line)
            else:
                apply(read_json(req, self.limit))
        except UploadCut as exc:
            # A publisher stops the upload of a task that was cancelled (its client left),
            # or died part-way: routine, not a fault. What arrived was applied; the task
            # ends by its cancel, or by the result a publisher that lost us posts again.
            log.info("task %s: its result upload was cut (%s)", task_id, exc)
            resp.status = 499  # nobody reads it
            return
        resp.media = {"ok": True}
