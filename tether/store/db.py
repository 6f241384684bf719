"""The database handle: a DatabaseProxy initialised from `database_url`."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url

database = peewee.DatabaseProxy()

_SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1}


# How long a PostgreSQL socket may stay silent while the hub waits on it (connecting, or
# for a statement's answer) before the connection is given up. Under gevent libpq's own
# connect_timeout is not applied (the connect is driven by the wait callback below), and
# a network that drops packets without a reset would hold a query until the kernel's TCP
# timeout (many minutes): the write, the actor making it and that name's infers with it.
# A checkout may wait twice (peewee's pool checks a pooled connection, then opens a new
# one): 2 × SILENCE_S stays under the actors' ask timeout (10 s), so a request that needs
# the database is answered 503 database_unavailable rather than hub_busy.
SILENCE_S = 3.0
# Once a connection was given up for its silence, and until one answers again, the next
# are given up sooner: peewee's pool opens connections one at a time (under its lock), so
# requests that need the database would otherwise queue behind each other's SILENCE_S.
SILENT_AGAIN_S = 1.0
_silent = False


class DatabaseUnavailable(Exception):
    """The database cannot be opened; the message is one line naming it (no password)."""


# What an engine that is down, restarting or cut off raises (peewee wraps the driver's
# errors in these): an outage to wait out, not a bug. IntegrityError and friends are not.
OUTAGE: tuple[type[Exception], ...] = (peewee.OperationalError, peewee.InterfaceError)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or did not answer."""
    if isinstance(exc, OUTAGE):
        return True
    try:
        import psycopg2
    except ImportError:  # SQLite only
        return False
    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)


def connect(url: str) -> peewee.Database:
    """Open `url` (sqlite:///path, postgresql://…) with a small connection pool.

    Under gevent every greenlet is a "thread" to peewee, so a pool keeps connections from
    being opened per request or per actor.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"database_url {url!r} is not a URL (e.g. sqlite:///tether.db)")
    kwargs: dict[str, object] = {"max_connections": 32, "stale_timeout": 300, "timeout": 10}
    if scheme in ("sqlite", "postgres", "postgresql"):
        scheme = f"{scheme}+pool"
    if scheme.startswith("sqlite"):
        if not rest.startswith("/"):
            raise ValueError("SQLite URLs take three slashes: sqlite:///relative/path.db, "
                             "sqlite:////absolute/path.db")
        kwargs["pragmas"] = _SQLITE_PRAGMAS
        kwargs["check_same_thread"] = False
        # Every transaction of the store writes: take SQLite's write lock at BEGIN, waiting
        # for it (`timeout`), rather than fail at once ("database is locked") when a read
        # turns into a write after another writer committed (the write-behind's, say).
        kwargs["lock_type"] = "IMMEDIATE"
    elif scheme.startswith("postgres"):
        kwargs["connect_timeout"] = 10  # an unreachable server fails, not hangs
        _make_psycopg_green()
    db = db_url.connect(f"{scheme}://{rest}", **kwargs)
    _per_greenlet(db)
    return db


def _per_greenlet(db: peewee.Database) -> None:
    """Give each greenlet its own connection state.

    peewee keeps "the current connection" in a threading.local subclass made when peewee is
    imported. Imported before gevent patched threading (`tether serve` opens the database
    once in gunicorn's master, which then forks the worker), that local is one state for
    every greenlet, and two greenlets whose queries interleave (psycopg2 yields to the loop
    while it waits) would share one connection: "Connection already opened".
    """
    from gevent import monkey

    # `_state` is peewee's private connection state, absent from its type stubs.
    state = db._state  # type: ignore[attr-defined]
    if monkey.is_module_patched("threading") and isinstance(state, peewee._ConnectionLocal):
        db._state = _greenlet_state()()  # type: ignore[attr-defined]


@functools.cache
def _greenlet_state() -> type:
    # Built after patching, so `threading.local` is gevent's greenlet-local.
    return type("GreenletConnectionState", (peewee._ConnectionState, threading.local), {})


def _gevent_wait(conn: Any, timeout: float | None = None) -> None:
    """psycopg2's wait callback: wait for the socket on the gevent loop, not in libpq."""
    import psycopg2
    from gevent.socket import wait_read, wait_write
    from psycopg2 import extensions

    global _silent
    limit = (SILENCE_S if not _silent else SILENT_AGAIN_S) if timeout is None else timeout
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            _silent = False
            return
        try:
            if state == extensions.POLL_READ:
                wait_read(conn.fileno(), timeout=limit)
            elif state == extensions.POLL_WRITE:
                wait_write(conn.fileno(), timeout=limit)
            else:
                raise psycopg2.OperationalError(f"unexpected state from poll(): {state}")
        except TimeoutError:
            _silent = True
            _sever(conn.fileno())
            _forget_idle()
            raise psycopg2.OperationalError(
                f"the database did not answer for {limit:g} s") from None


def _forget_idle() -> None:
    """Close the pool's idle connections: they go through the same silent network, and the
    pool would check each in turn (SILENCE_S apiece) before opening a new one."""
    pool = database.obj
    if pool is not None and hasattr(pool, "close_idle"):
        with contextlib.suppress(Exception):
            pool.close_idle()


def _sever(fd: int) -> None:
    """Shut the silent connection's socket down: psycopg2 closes a connection whose wait
    callback raised, and anything libpq still sends or reads on it fails at once instead
    of blocking the process on a network that says nothing."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def _make_psycopg_green() -> None:
    """Under gevent, libpq's blocking socket waits would stop every greenlet (actors, SSE)
    for the length of a query. The wait callback makes psycopg2 yield to the loop instead.
    It is psycogreen's ten lines, kept here rather than depending on that package (last
    released 2020) for them."""
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        from psycopg2 import extensions

        extensions.set_wait_callback(_gevent_wait)


def redact(url: str) -> str:
    """`url` without its password, fit for a message or a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check(url: str) -> None:
    """Open `url` once and run a query; DatabaseUnavailable says why it could not."""
    try:
        db = connect(url)
        try:
            db.connect()
            db.execute_sql("SELECT 1")
        finally:
            db.close_all() if hasattr(db, "close_all") else db.close()
    except (peewee.PeeweeException, peewee.ImproperlyConfigured, ValueError, RuntimeError,
            OSError) as exc:
        raise unavailable("open", url, exc) from exc


def unavailable(what: str, url: str, exc: BaseException) -> DatabaseUnavailable:
    """One line: what could not be done with which database (no password), and why."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, peewee.ImproperlyConfigured | RuntimeError):
        reason += " (Tether supports sqlite:///path and postgresql://user@host/db)"
    return DatabaseUnavailable(f"cannot {what} the database {redact(url)}: {reason}")


def init(url: str) -> peewee.Database:
    db = connect(url)
    database.initialize(db)
    return db


@contextmanager
def connection() -> Iterator[peewee.DatabaseProxy]:
    """Borrow a connection for a unit of work; nested uses share it."""
    with database.connection_context():
        yield database


def close() -> None:
    """Close every pooled connection (at shutdown, and between tests)."""
    if database.obj is not None:
        database.close_all()
