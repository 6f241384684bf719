"""POST /_faults/crash: fault injection for the reliability tests. The route exists only
when the hub runs with `fault_injection` on (TETHER_FAULT_INJECTION=1); never in production."""

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
