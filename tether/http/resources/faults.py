"""POST /_faults/crash: fault injection for the reliability tests. The route exists only
when the hub runs with `fault_injection` on (TETHER_FAULT_INJECTION=1); never in production."""

from __future__ import annotations

import falcon

from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.body import read_json

CRASH = {
    "type": "object",
    "required": ["kind", "key"],
    "properties": {"kind": {"enum": ["llm", "session", "supervisor", "sweeper"]},
                   "key": {"type": "string", "maxLength": 128}},
}


class Crash:
    role = "admin"

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = schemas.validate(CRASH, read_json(req, 4096))
        resp.media = {"crashed": self.system.inject_crash(body["kind"], body["key"])}
