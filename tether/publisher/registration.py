"""Telling the hub what this publisher serves: the register call (with names another session
holds left out and kept for a retry) and status reports (docs/protocol.md, Register, Status).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from tether.common.backend_client import Unreachable
from tether.publisher.config import BackendConfig
from tether.publisher.hub_client import HubClient

log = logging.getLogger("tether.publisher")

Status = Literal["active", "hibernating"]


class Registration(Exception):
    """The hub refused to register us (e.g. a name owned by another publisher), or to open
    the stream; `status` is its HTTP answer, if there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def hub_failing(self) -> bool:
        """A 5xx (503 `shutting_down` above all): that hub cannot serve us now; another may.
        A 4xx (a bad key, every name held elsewhere) would be the same answer anywhere."""
        return self.status is not None and self.status >= 500


def provider_spec(backend: BackendConfig, status: Status) -> dict[str, Any]:
    return {"name": backend.name, "type": backend.type, "model": backend.model,
            "tier": backend.tier, "description": backend.description,
            "initialStatus": status, "pool": backend.pool,
            # The hub sends no more than this at once (docs/protocol.md, Pools).
            "maxConcurrency": backend.max_concurrency}


def held_name(status: int, body: Any, specs: list[dict[str, Any]]) -> str | None:
    """The provider a 409 `llm_owned_by_other_session` names in `param`, if any."""
    error = (body or {}).get("error") if isinstance(body, dict) else None
    if status != 409 or not isinstance(error, dict) or \
            error.get("code") != "llm_owned_by_other_session":
        return None
    match = re.fullmatch(r"providers\[(\d+)\]\.name", str(error.get("param")))
    if match is None or int(match.group(1)) >= len(specs):
        return None
    return specs[int(match.group(1))]["name"]


class Registrar:
    """Registers the backends. A name the hub says another session holds (409 with `param`
    naming it) is left out and remembered in `held`, so one conflict never keeps the other
    backends offline; the caller retries while `held` is not empty."""

    def __init__(self, hub: HubClient, probe_interval_s: float) -> None:
        self.hub = hub
        self.probe_interval_s = probe_interval_s
        self.held: set[str] = set()

    def register(self, session_id: str | None, specs: list[dict[str, Any]]) -> \
            tuple[str, list[str]]:
        """Register `specs`: (the session id the hub gave, the names it took)."""
        while True:
            status, body = self.hub.post("/api/v1/llms/_provider-register",
                                         {"providerSessionId": session_id,
                                          "providers": specs})
            held = held_name(status, body, specs)
            if held is None:
                break
            if held not in self.held:
                self.held.add(held)
                log.warning("%s is published by another session on the hub: registering the "
                            "rest without it, and retrying it every %g s", held,
                            self.probe_interval_s)
            specs = [spec for spec in specs if spec["name"] != held]
            if not specs:
                raise Registration("every name is published by another session")
        if status != 200:
            message = (body or {}).get("error", {}).get("message", body)
            raise Registration(f"register answered {status}: {message}", status)
        taken = [row["name"] for row in body["llms"]]
        for name in sorted(self.held & set(taken)):
            log.info("%s is registered again: the other session let it go", name)
        self.held -= set(taken)
        return body["providerSessionId"], taken


def report_status(hub: HubClient, session_id: str | None, name: str, status: Status) -> None:
    """Tell the hub a backend fell asleep or woke by itself. Unreachable hub: nothing to do,
    the next register carries the status."""
    if session_id is None:
        return
    try:
        code, answer = hub.post("/api/v1/llms/_provider-status", {
            "providerSessionId": session_id, "llms": [{"name": name, "status": status}]})
    except Unreachable:
        return
    if code != 200:
        log.warning("hub refused status %s for %s: %s", status, name,
                    (answer or {}).get("error", {}).get("code"))
