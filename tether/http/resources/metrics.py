"""GET /metrics: Prometheus text format from prometheus_client (admin key)."""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_LATEST

from tether.http.operation import Operation
from tether.observability import metrics


class Metrics:
    role = "admin"
    operations = {"GET": Operation("Prometheus metrics", media="text/plain")}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = metrics.exposition()
