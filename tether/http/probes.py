"""Whether this process reaches its database and its bus, for /healthz.

Each probe is one round trip (`SELECT 1` through the process's own connection pool, `PING`
on its Redis client), waited for at most TIMEOUT_S, so a server that hangs makes /healthz
answer 503 in a second rather than hang the load balancer's check. Under gevent a probe runs
in a greenlet of its own that is left to finish, never interrupted: psycopg2, interrupted
mid-query, drains the query's answer with blocking calls that would stop every greenlet of
the process. One probe per service at a time; a hung one is waited for again, not repeated.
Answers are reused for CACHE_S: /healthz needs no key, and a flood of it must not become a
flood of queries.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from tether.cluster import redis_client
from tether.common.runtime import gevent_active
from tether.config import Settings
from tether.store import db

log = logging.getLogger("tether.health")

TIMEOUT_S = 1.0
CACHE_S = 1.0

OK = "ok"
OFF = "off"  # not configured (no bus_url)
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Report:
    database: str
    bus: str
    problems: tuple[str, ...]  # one sentence per unreachable service

    def fields(self) -> dict[str, str]:
        return {"database": self.database, "bus": self.bus}


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def database_problem(url: str) -> str | None:
    """None when `SELECT 1` answers through the pool; else why not (one line)."""
    try:
        db.database.connect(reuse_if_open=True)
        try:
            db.database.execute_sql("SELECT 1")
        except BaseException:
            # A connection that failed mid-query is not given back to the pool for a
            # request to trip over.
            with contextlib.suppress(Exception):
                db.database.manual_close()
            raise
        db.database.close()
    except Exception as exc:  # noqa: BLE001 - whatever the driver raised, it did not answer
        return f"cannot reach the database {db.redact(url)}: {_reason(exc)}"
    return None


def bus_problem(url: str) -> str | None:
    try:
        redis_client.client(url).ping()
    except (redis.RedisError, OSError) as exc:
        return f"cannot reach the bus {db.redact(url)}: {_reason(exc)}"
    return None


class Probes:
    def __init__(self, settings: Settings) -> None:
        self.database_url = settings.database_url
        self.bus_url = settings.bus_url
        self._last: tuple[float, Report] | None = None
        self._running: dict[str, Any] = {}  # service -> its probe's greenlet

    def _bounded(self, service: str, probe: Callable[[str], str | None], url: str) -> str | None:
        if not gevent_active():
            return probe(url)  # tests and tools: the clients' own timeouts bound it
        import gevent

        task = self._running.get(service)
        if task is None or task.ready():
            task = self._running[service] = gevent.spawn(probe, url)
        task.join(TIMEOUT_S)
        if not task.ready():
            return f"cannot reach the {service} {db.redact(url)}: no answer within {TIMEOUT_S:g} s"
        return task.value if task.successful() else f"{service} check failed: {task.exception}"

    def report(self) -> Report:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < CACHE_S:
            return self._last[1]
        database = self._bounded("database", database_problem, self.database_url)
        bus = self._bounded("bus", bus_problem, self.bus_url) if self.bus_url else None
        report = Report(
            database=UNREACHABLE if database else OK,
            bus=OFF if self.bus_url is None else UNREACHABLE if bus else OK,
            problems=tuple(p for p in (database, bus) if p))
        if report.problems and (self._last is None or not self._last[1].problems):
            log.warning("healthz: %s", "; ".join(report.problems))
        self._last = (time.monotonic(), report)
        return report
