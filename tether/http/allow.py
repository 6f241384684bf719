"""The `Allow` header, said one way: falcon's default OPTIONS answer lists a route's methods
without OPTIONS, while its 405 lists them with it. Both now say what the route takes,
OPTIONS included (it is answered on every route, without a key)."""

from __future__ import annotations

from typing import Any


class AllowMiddleware:
    def process_response(self, req: Any, resp: Any, resource: Any, req_succeeded: bool) -> None:
        allow = resp.headers.get("allow")
        if req.method == "OPTIONS" and allow and "OPTIONS" not in allow.split(", "):
            resp.set_header("Allow", f"{allow}, OPTIONS")
