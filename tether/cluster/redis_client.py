"""Redis clients for what hub processes count and announce to each other besides routing:
per-key limits, key revocations, /healthz (tether.http.shared_limits, .revocations, .health).

Every key and channel, the bus's too, starts with a prefix derived from the bus URL,
database number included (prefix_of).

redis-py is pure Python: under gunicorn's gevent worker its sockets are gevent's, so a
Redis call waits on the event loop like any other I/O.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis

from tether.store.db import redact

# A Redis that stops answering must cost a request at most this long before the caller
# falls back (limits count in-process, /healthz says unreachable).
TIMEOUT_S = 1.0
MAX_CONNECTIONS = 100  # per pool, as redis-py's default


def prefix_of(url: str) -> str:
    """`tether:<db>`: keys live in the URL's database already; channels need the number."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or parse_qs(parts.query).get("db", ["0"])[0] or "0"
    return f"tether:{int(db)}"


@functools.cache
def client(url: str) -> redis.Redis:
    """This process's client for `url` (a pool of connections, made on first use: after
    gunicorn forked the worker, never inherited from the master)."""
    return pooled(url, TIMEOUT_S, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                  health_check_interval=10)


def pooled(url: str, wait_s: float, **options: Any) -> redis.Redis:
    """A client whose pool makes a burst of callers wait (at most `wait_s`) for one of its
    MAX_CONNECTIONS connections, as gevent's queue lets them. redis-py's default pool
    refuses a command past its 100th connection ("Too many connections"), and under gevent
    every request waiting on Redis holds one."""
    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=wait_s, **options))


def subscriber(url: str) -> redis.Redis:
    """A client for one long-lived subscription: no read timeout (a quiet channel is not an
    error); the subscriber pings to notice a Redis that went away."""
    return redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_keepalive=True)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says Redis does not answer (refused, reset, timed out, still loading),
    as opposed to an error Redis answered with or a bug of ours."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))


def reason(exc: BaseException) -> str:
    """`ConnectionError: Error 111 connecting to …`: redis-py's repr() names only the type."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Outage:
    """What one task that uses Redis again and again (the bus's liveness renewal, the
    router's tick, owner lookups) logs when it fails:

    - Redis does not answer: one WARNING when the task first fails, naming it, the URL and
      the error; nothing while it keeps failing (once a second per task would bury the log
      of the operator looking into the outage); one INFO line when it succeeds again, with
      how long it failed.
    - anything else is a bug, or an error Redis answered with: its traceback, once per
      distinct error (its type and the line that raised it); the same error again is only
      counted, and its traceback repeated at most every REPEAT_S, with the count.
    """

    REPEAT_S = 600.0

    def __init__(self, logger: logging.Logger, area: str, url: str, task: str,
                 retry: str) -> None:
        self._log = logger
        self._area = area  # the prefix of the module's lines: "bus", "board"…
        self._url = redact(url)
        self._task = task  # "the liveness renewal": what Redis does not answer to
        self._retry = retry  # how it goes on: "retrying every 1 s"
        self._since: float | None = None  # when the outage began, for this task
        self._bugs: dict[tuple[str, str, int], tuple[float, int]] = {}  # -> logged at, times since

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        if unreachable(exc):
            if self._since is None:
                self._since = time.monotonic()
                self._log.warning("%s: Redis at %s does not answer (%s) to %s; %s",
                                  self._area, self._url, reason(exc), self._task, self._retry)
            return
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
        signature = (type(exc).__qualname__, *where)
        now = time.monotonic()
        logged = self._bugs.get(signature)
        if logged is None:
            self._bugs[signature] = (now, 0)
            self._log.error("%s: %s failed (%s)", self._area, self._task, reason(exc),
                            exc_info=exc)
        elif now - logged[0] >= self.REPEAT_S:
            self._bugs[signature] = (now, 0)
            self._log.error("%s: %s failed (%s), %d times since its traceback was last "
                            "logged", self._area, self._task, reason(exc), logged[1] + 1,
                            exc_info=exc)
        else:
            self._bugs[signature] = (logged[0], logged[1] + 1)

    def answered(self) -> None:
        if self._since is not None:
            self._log.info("%s: Redis at %s answers %s again, after %.1f s", self._area,
                           self._url, self._task, time.monotonic() - self._since)
            self._since = None
