"""The database handle: a DatabaseProxy initialised from `database_url`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import peewee
from playhouse import db_url

database = peewee.DatabaseProxy()

_SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1}


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
        kwargs["pragmas"] = _SQLITE_PRAGMAS
        kwargs["check_same_thread"] = False
    elif scheme.startswith("postgres"):
        _make_psycopg_green()
    return db_url.connect(f"{scheme}://{rest}", **kwargs)


def _make_psycopg_green() -> None:
    """psycopg2 blocks the gevent loop unless psycogreen patches it (when installed)."""
    try:
        from gevent import monkey
        from psycogreen.gevent import patch_psycopg
    except ImportError:
        return
    if monkey.is_module_patched("socket"):
        patch_psycopg()


def init(url: str) -> peewee.Database:
    db = connect(url)
    database.initialize(db)
    return db


@contextmanager
def connection() -> Iterator[peewee.Database]:
    """Borrow a connection for a unit of work; nested uses share it."""
    with database.connection_context():
        yield database


def close() -> None:
    """Close every pooled connection (at shutdown, and between tests)."""
    if database.obj is not None:
        database.close_all()
