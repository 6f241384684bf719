from __future__ import annotations

import falcon


class Health:
    role = None  # no key needed

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}
