"""Telling the hub what this publisher serves: the register call (with names another session
holds left out and kept for a retry; at most 64 names a call), status reports and withdrawals
(docs/protocol.md, Register, Status, Withdraw).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import gevent

from tether.common.backend_client import Unreachable
from tether.publisher.config import BackendConfig
from tether.publisher.hub_client import HubClient

log = logging.getLogger("tether.publisher")

Status = Literal["active", "hibernating"]
# The hub takes at most this many names in one register, status report or withdraw.
MAX_NAMES = 64
# A withdraw the hub cannot take now is tried again after these pauses.
WITHDRAW_RETRIES_S = (0.0, 0.5, 1.0, 2.0, 4.0)


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


def provider_spec(backend: BackendConfig, status: Status,
                  extra_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    spec = {"name": backend.name, "type": backend.type, "model": backend.model,
            "tier": backend.tier, "description": backend.description,
            "initialStatus": status, "pool": backend.pool,
            # The hub sends no more than this at once (docs/protocol.md, Pools).
            "maxConcurrency": backend.max_concurrency}
    if extra_config:
        spec["extraConfig"] = dict(extra_config)
    return spec


def batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    """`items` in calls of at most MAX_NAMES."""
    return [items[i:i + MAX_NAMES] for i in range(0, len(items), MAX_NAMES)]


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

    def register_all(self, session_id: str | None, specs: list[dict[str, Any]]) -> \
            tuple[str, list[str]]:
        """Register `specs`, MAX_NAMES a call (the first gives the session id the others
        use): (the session id, the names the hub took)."""
        taken: list[str] = []
        for batch in batches(specs):
            try:
                session_id, names = self.register(session_id, list(batch))
            except Registration as exc:
                if session_id is None or exc.status is not None:
                    raise
                continue  # every name of this batch is held elsewhere: retried later
            taken += names
        if session_id is None:
            raise Registration("nothing to register")
        return session_id, taken

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


def report_status(hub: HubClient, session_id: str | None, names: Sequence[str],
                  status: Status) -> None:
    """Tell the hub a backend (serving `names`) fell asleep or woke by itself. Unreachable
    hub: nothing to do, the next register carries the status."""
    if session_id is None:
        return
    for batch in batches(list(names)):
        try:
            code, answer = hub.post("/api/v1/llms/_provider-status", {
                "providerSessionId": session_id,
                "llms": [{"name": name, "status": status} for name in batch]})
        except Unreachable:
            return
        if code != 200:
            log.warning("hub refused status %s for %s: %s", status, ", ".join(batch),
                        (answer or {}).get("error", {}).get("code"))


def withdraw(hub: HubClient, session_id: str, names: Sequence[str]) -> bool:
    """Tell the hub this publisher no longer serves `names`, retrying a hub that cannot
    answer now (unreachable, 5xx) for a few seconds; False if it could not be told (the
    next hello lists them again, and they are withdrawn then)."""
    done = True
    for batch in batches(sorted(names)):
        body = {"providerSessionId": session_id, "names": list(batch)}
        for delay in WITHDRAW_RETRIES_S:
            time.sleep(delay)  # cooperative: the publisher runs under gevent
            try:
                code, answer = hub.post("/api/v1/llms/_provider-withdraw", body)
            except Unreachable as exc:
                code, answer = 0, {"error": {"message": str(exc)}}
            if 0 < code < 500:
                break
        if code == 200:
            log.info("withdrew %s", ", ".join(batch))
        elif code == 403 and len(batch) > 1:
            # One name is no longer ours (we left its pool already): the hub applied
            # nothing, so each goes alone, and only that one is refused.
            done = all([withdraw(hub, session_id, [name]) for name in batch]) and done
        else:
            log.warning("hub refused to withdraw %s: %s", ", ".join(batch),
                        (answer or {}).get("error", {}).get("message"))
            done = done and 0 < code < 500
    return done


def heartbeat(hub: HubClient, session_id: Callable[[], str | None], interval: float,
              forgotten: Callable[[], None]) -> None:
    """Heartbeat every `interval` until the hub answers 404 (it forgot the session): then
    `forgotten()`, once."""
    while True:
        gevent.sleep(interval)
        try:
            status, _ = hub.post("/api/v1/llms/_provider-heartbeat",
                                 {"providerSessionId": session_id()}, timeout=10)
        except Unreachable as exc:
            log.warning("heartbeat failed: %s", exc)
            continue
        if status == 404:
            log.warning("the hub forgot this session; registering again")
            forgotten()
            return
