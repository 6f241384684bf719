"""POST /_faults/crash and /_faults/drop: fault injection for the reliability tests. The
routes exist only when the hub runs with `fault_injection` on (TETHER_FAULT_INJECTION=1);
never in production."""

from __future__ import annotations

import falcon

from tether.actors.system import ActorSystem
from tether.http.body import BodyLimits
from tether.http.operation import Operation, json_body

CRASH = {
    "type": "object",
    "required": ["kind", "key"],
    "properties": {"kind": {"enum": ["llm", "session", "supervisor", "sweeper"]},
                   "key": {"type": "string", "maxLength": 128}},
}


class Crash:
    role = "admin"
    limit = BodyLimits(4096)
    operations = {"POST": Operation("Crash an actor (fault injection)", request=CRASH,
                                    ok={"type": "object", "required": ["crashed"]})}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        resp.media = {"crashed": self.system.inject_crash(body["kind"], body["key"])}


DROP = {
    "type": "object",
    "required": ["kind"],
    "properties": {"kind": {"type": "string", "maxLength": 128},
                   "count": {"type": "integer", "minimum": 1, "maximum": 1000},
                   "heard": {"type": "boolean"}},
}


class Drop:
    """Lose the next `count` bus messages of `kind` this process sends (a message class such
    as "TaskEnded", a supervisor op such as "reload_llm", or "reply:<event>"); `heard`: the
    sender believes they went (lost in flight), else it is told nobody listened."""

    role = "admin"
    limit = BodyLimits(4096)
    operations = {"POST": Operation("Lose bus messages (fault injection)", request=DROP,
                                    ok={"type": "object", "required": ["dropping"]})}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, body: dict) -> None:
        resp.media = {"dropping": self.system.inject_drop(
            body["kind"], body.get("count", 1), body.get("heard", True))}
