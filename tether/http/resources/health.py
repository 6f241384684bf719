from __future__ import annotations

import falcon

from tether import errors
from tether.actors.system import ActorSystem
from tether.http import schemas
from tether.http.operation import Operation


class Health:
    role = None  # no key needed
    operations = {"GET": Operation("Liveness", ok=schemas.HEALTH)}

    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # 503 while the actor tree is not whole (a root actor down or not answering), so a
        # load balancer or an operator sees what /healthz used to hide behind a 200.
        if not self.system.healthy(timeout=1.0):
            raise errors.UNHEALTHY()
        resp.media = {"status": "ok"}
