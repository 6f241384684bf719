"""GET /healthz: whether this process serves, and reaches its database and its bus."""

from __future__ import annotations

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.operation import Operation
from tether.http.probes import Probes


class Health:
    role = None  # no key needed
    operations = {"GET": Operation("Liveness", ok=schemas.HEALTH)}

    def __init__(self, system: ActorSystem, probes: Probes) -> None:
        self.system = system
        self.probes = probes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # 503 while the actor tree is not whole (a root actor down or not answering), so a
        # load balancer or an operator sees what /healthz used to hide behind a 200.
        if not self.system.healthy(timeout=1.0):
            raise errors.UNHEALTHY(why="the hub's supervisor or sweeper is not answering; it "
                                   "is being restarted")
        report = self.probes.report()
        if report.problems:
            # 503 while a configured service is unreachable: a load balancer sends requests
            # to the processes that can serve them. The error envelope, plus the fields.
            error = errors.UNHEALTHY(why="this hub process " + "; ".join(report.problems))
            resp.status = falcon.HTTP_503
            resp.media = {**error.envelope(), "status": "unavailable", **report.fields()}
            return
        resp.media = {"status": "ok", **report.fields()}
