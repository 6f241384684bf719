"""The cluster a chaos run breaks: real processes, each reachable by the fault schedule.

- PostgreSQL: a database of the run's own on the machine's server, reached by every hub
  through a ChaosProxy (tests/support/chaos.py), so the schedule can take it down (the proxy
  closes: connections reset, new ones refused), or black-hole it (bytes dropped both ways,
  nothing closed).
- Redis: a redis-server of the run's own (tests/support/redisdb.Server), killed with -9 and
  restarted empty.
- Two `tether serve` processes on both (in the `workers_2` variant the second runs
  `--workers 2`, each worker a process of the cluster).
- Four demo backends (`tether demo-backend`, a real HTTP server answering OpenAI chat
  completions, streamed or not, deterministically from the request), each behind one
  `tether publish`: three publish the pool `pool`, one publishes `solo` alone. Every
  publisher lists both hub URLs, as the README tells a cluster's publishers to.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.support import postgres, redisdb
from tests.support.chaos import ChaosProxy
from tests.support.hub import Hub, wait_until
from tests.support.kill import kill_hub
from tests.support.procfs import children
from tests.support.procs import DemoBackend, Publish

POOL = "pool"
SOLO = "solo"
POOL_MEMBERS = 3
MAX_CONCURRENCY = 2  # per publisher: the pool has 6 slots, `solo` 2
LIVENESS_TTL_S = 5.0  # the hub's default, written out: the invariants' bounds use it
# Each request's own deadline, shorter than the defaults so a request left to its timer
# (instead of answered at the fault) shows as one: a healthy request takes under a second.
DEADLINES = {"infer_timeout_s": 20.0, "stream_idle_timeout_s": 20.0, "wake_timeout_s": 20.0}
HUB_SETTINGS = {"liveness_ttl_s": LIVENESS_TTL_S, **DEADLINES}


@dataclass
class Member:
    """One `tether publish` and the backend behind it."""

    name: str  # the Llm it publishes
    backend: DemoBackend
    publish: Publish
    label: str
    stopped: bool = False  # SIGSTOPped by the schedule

    def session_id(self) -> str | None:
        with contextlib.suppress(OSError):
            return self.publish.session_file.read_text().strip() or None
        return None

    def pid(self) -> int | None:
        proc = self.publish.proc
        return proc.pid if proc is not None and proc.poll() is None else None


@dataclass
class HubProc:
    """One `tether serve` (its master, and with --workers its workers)."""

    hub: Hub
    label: str
    workers: int
    up: bool = True  # false while the schedule has it down: the load sends it nothing
    expected_down: bool = False  # stopped by the schedule and (not yet) restarted
    restarts: list[str] = field(default_factory=list)  # restarts that failed, and why

    @property
    def url(self) -> str:
        return self.hub.url

    def alive(self) -> bool:
        return self.hub.proc is not None and self.hub.proc.poll() is None

    def worker_pids(self) -> list[int]:
        return children(self.hub.proc.pid) if self.alive() and self.hub.proc else []


class Stack:
    def __init__(self, tmp: Path, workers_2: bool = False) -> None:
        self.tmp = tmp
        self.workers_2 = workers_2
        self.db: postgres.Database | None = None
        self.proxy: ChaosProxy | None = None
        self.redis = redisdb.Server(tmp)
        self.hubs: list[HubProc] = []
        self.members: list[Member] = []
        self.extra: list[Publish] = []  # publishers the schedule started (pool_join)
        self.spare = DemoBackend(tmp)  # behind the publishers the schedule adds (pool_join)

    # --- bring-up ------------------------------------------------------------------------

    def start(self) -> Stack:
        self.db = postgres.create()
        server = urlsplit(self.db.url)
        self.proxy = ChaosProxy(server.port or 5432)
        proxied = urlunsplit(server._replace(
            netloc=f"{server.username or 'postgres'}@127.0.0.1:{self.proxy.port}"))
        self.redis.start()
        for i, workers in enumerate((1, 2 if self.workers_2 else 1)):
            settings: dict[str, Any] = {"database_url": proxied, "bus_url": self.redis.url,
                                        **HUB_SETTINGS}
            if workers > 1:
                settings["workers"] = workers
            # One at a time: the first process of a cluster prepares the schema.
            hub = Hub(self.tmp, **settings).start(timeout=60)
            self.hubs.append(HubProc(hub, f"hub{'ab'[i]}", workers))
        for proc in self.hubs:
            wait_until(lambda p=proc: len(p.worker_pids()) == p.workers, timeout=30)
        urls = [h.url for h in self.hubs]
        for i in range(POOL_MEMBERS + 1):
            name = POOL if i < POOL_MEMBERS else SOLO
            backend = DemoBackend(self.tmp).start()
            spec = {"name": name, "model": "demo-model", "base_url": backend.base_url,
                    "max_concurrency": MAX_CONCURRENCY, "pool": name == POOL}
            # Every publisher knows both processes; they list them in turn, so that
            # sessions are homed on both.
            publish = Publish(self.tmp, urls[i % 2:] + urls[:i % 2], [spec])
            self.members.append(Member(name, backend, publish.start(),
                                       f"{name}-{i}" if name == POOL else name))
        self.spare.start()
        self.wait_serving(timeout=60)
        return self

    def wait_serving(self, timeout: float) -> None:
        """Every member active with its stream open, as every hub process reads it."""
        def ready() -> bool:
            for proc in self.hubs:
                r = proc.hub.get("/api/v1/llms", timeout=5)
                if r.status_code != 200:
                    return False
                rows = {row["name"]: row for row in r.json()["llms"]}
                for name, count in ((POOL, POOL_MEMBERS), (SOLO, 1)):
                    members = rows.get(name, {}).get("members", [])
                    if sum(m["status"] == "active" for m in members) != count:
                        return False
                state = proc.hub.get("/status/state", timeout=5).json()
                if not all(row["streamOpen"] for row in state["llms"]
                           if row["name"] in (POOL, SOLO)) or len(state["llms"]) < 2:
                    return False
            return True

        wait_until(ready, timeout=timeout, interval=0.2)

    # --- what the schedule and the checks read ---------------------------------------------

    def live_urls(self) -> list[str]:
        return [h.url for h in self.hubs if h.up]

    def member_of_session(self, session_id: str) -> Member | None:
        return next((m for m in self.members if m.session_id() == session_id), None)

    def hub_logs(self) -> dict[str, str]:
        return {h.label: h.hub.logs() for h in self.hubs}

    # --- tear-down -----------------------------------------------------------------------

    def close(self) -> None:
        for member in self.members:
            pid = member.pid()
            if member.stopped and pid:  # a stopped process would not see SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            member.publish.stop()
        for publish in self.extra:
            publish.stop()
        for proc in self.hubs:
            if proc.alive():
                with contextlib.suppress(Exception):
                    kill_hub(proc.hub)
            Hub.live.discard(proc.hub)
        for backend in [m.backend for m in self.members] + [self.spare]:
            with contextlib.suppress(Exception):
                if backend.up():
                    backend.kill(signal.SIGKILL)
        self.redis.stop()
        if self.proxy is not None:
            self.proxy.close()
        if self.db is not None:
            self.db.drop()
