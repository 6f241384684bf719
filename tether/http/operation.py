"""What each route does, declared on its resource: `operations` maps a method to an
`Operation` (summary, request schema, answers), next to `role` (who may call it, enforced by
tether/http/auth.py). app.py is the one place that names paths; /openapi.json is built
from the mounted resources (tether/http/openapi.py), and `json_body` validates a request
with the very schema its Operation documents, so the document cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import falcon

from tether.http import schemas
from tether.http.body import read_json

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
# Routes that relay to an Llm: a pool's member is picked by this key when it is given.
AFFINITY = {"name": "X-Tether-Affinity", "in": "header", "required": False,
            "description": "Routes a pool's requests with the same value to the same member "
                           "(instead of the conversation's prefix)",
            "schema": {"type": "string", "maxLength": 256}}
# A relayed stream's events: each chunk as the backend sent it, then [DONE]; a failure
# after the stream began is an `error` event with the error envelope.
RELAYED_EVENTS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("message", None), ("error", schemas.ERROR))


@dataclass(frozen=True)
class Operation:
    summary: str
    request: dict[str, Any] | None = None  # the JSON body
    ok: dict[str, Any] | None = None  # the 200 answer's JSON schema; None: `media`
    media: str = JSON  # the 200 answer's media type when it is not JSON (SSE, text)
    # The status and body (errors too) are the publisher's or upstream's, passed on as
    # they are; the answer is SSE when the request asks to `stream`.
    relayed: bool = False
    params: tuple[dict[str, Any], ...] = ()  # header and query parameters
    # The media type of the answer when the body asks to `stream` (SSE for relayed routes).
    streams: str | None = None
    errors: dict[str, Any] | None = None  # the error body's schema, when not OpenAI's envelope
    # The SSE answer's events: (event name, the JSON schema of its data, or None when the
    # data is not the hub's JSON), as /openapi.json gives them (an x-itemSchema).
    events: tuple[tuple[str, dict[str, Any] | None], ...] = ()
    ndjson: bool = False  # the body may also be NDJSON, one `request` per line
    limited: bool = False  # a per-key or per-Llm limit may refuse it: 429


def json_body(req: falcon.Request, resp: falcon.Response, resource: Any,
              params: dict[str, Any]) -> None:
    """For `@falcon.before`: the request's JSON body, read within the resource's `limit`
    and validated with its operation's `request` schema, is the responder's `body`."""
    schema = resource.operations[req.method].request
    params["body"] = schemas.validate(schema, read_json(req, resource.limit))
