"""The request id of every HTTP request (tether.common.logs puts it on the request's lines)."""

from __future__ import annotations

import random
from typing import Any

from tether.common import logs
from tether.observability import metrics


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-Id when it is a plain token),
    echoed in the response's X-Request-Id header and put on every line logged meanwhile."""

    def process_request(self, req: Any, resp: Any) -> None:
        given = req.get_header("X-Request-Id") or ""
        # 64 random bits, as uuid4's first 16 hex digits were, at a twentieth of the cost
        # (random reseeds in every forked worker).
        rid = given if logs.CLIENT_ID.match(given) else f"{random.getrandbits(64):016x}"
        req.context.request_id = rid
        # Not reset after the response: a streamed body is produced later in this same
        # greenlet and its lines belong to this request; the next request sets its own.
        logs.set_request_id(rid)
        resp.set_header("X-Request-Id", rid)

    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:

        metrics.http_response(req.uri_template, req.method, str(resp.status_code))
