"""GET /api/v1/usage: requests and tokens per client key and Llm (docs/protocol.md, Usage),
as the hub processes last flushed them (tether.actors.usage). Admin only."""

from __future__ import annotations

import falcon

from tether import errors
from tether.http.operation import Operation
from tether.store import usage as store
from tether.store.models import utcnow

_COUNT = {"type": "integer", "minimum": 0}
USAGE = {
    "type": "object",
    "required": ["usage"],
    "properties": {"usage": {"type": "array", "items": {
        "type": "object",
        "required": ["key", "llm", "alias", "requests", "promptTokens", "completionTokens"],
        "properties": {
            "key": {"type": ["string", "null"]}, "llm": {"type": "string"},
            "alias": {"type": ["string", "null"]}, "requests": _COUNT,
            "promptTokens": _COUNT, "completionTokens": _COUNT,
        },
    }}},
}
SINCE = {"name": "since", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "an ISO-8601 time or a number of hours ago; counted from the start "
                        "of its hour"}


class Usage:
    role = "admin"
    operations = {"GET": Operation("Tokens and requests per client key and Llm", ok=USAGE,
                                   params=(SINCE,))}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_param("since")
        since = None
        if given is not None:
            try:
                since = store.parse_since(given, utcnow())
            except ValueError as exc:
                raise errors.INVALID_REQUEST(why=f"since: {exc}", param="since") from None
        resp.media = {"usage": store.totals(since)}
