"""GET /api/v1/usage: requests and tokens per client key and Llm (docs/protocol.md, Usage),
as the hub processes last flushed them (tether.actors.usage). Admin only."""

from __future__ import annotations

import re

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
# `since`: an ISO time, or (beyond PROTOCOL.md) a number of hours ago; the document says
# both, and the check refuses a number the document leaves out.
HOURS = r"^[0-9]{1,5}(\.[0-9]{1,3})?$"
SINCE = {"name": "since", "in": "query", "required": False,
         "schema": {"anyOf": [{"type": "string", "format": "date-time"},
                              {"type": "string", "pattern": HOURS}]},
         "description": "an ISO-8601 time (UTC unless it has an offset) or a number of hours "
                        "ago; counted from the start of its hour"}


class Usage:
    role = "admin"
    operations = {"GET": Operation("Tokens and requests per client key and Llm", ok=USAGE,
                                   params=(SINCE,))}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_param("since")
        since = None
        if given is not None:
            try:
                if given[:1].isdigit() and "-" not in given and not re.match(HOURS, given):
                    raise ValueError(f"{given!r} is not a number of hours (at most 99999.999)")
                since = store.parse_since(given, utcnow())
            except ValueError as exc:
                raise errors.INVALID_REQUEST(why=f"since: {exc}", param="since") from None
        resp.media = {"usage": store.totals(since)}
