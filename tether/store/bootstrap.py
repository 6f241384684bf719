"""Readying the database for a hub process: connect, migrate, and bring the rows in line with
a process that has no stream yet and with the config's public Llms."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tether.store import db, migrations
from tether.store import llms as store

log = logging.getLogger("tether.system")


def open_store(database_url: str, public_llms: Sequence[Any],
               live_sessions: Callable[[], set[str]] | None = None,
               aliases: Sequence[str] = ()) -> None:
    """Connect to `database_url` and ready its rows; `db.close()` undoes it.
    `live_sessions()` (several hub processes) names the sessions whose stream is live on
    another process: their rows stay as they are. A virtual row under one of the
    `aliases`' names is deleted: aliases are config (a register of it gets 409)."""
    db.init(database_url)
    migrations.migrate()
    if live_sessions is None:
        store.deactivate_all_virtual()  # no stream can be live yet
    else:
        store.deactivate_virtual_except(live_sessions())
    for name in store.delete_virtual(aliases):
        log.warning("deleted the virtual Llm %r: the name is an alias of this hub's config",
                    name)
    created, removed = store.sync_public(public_llms)
    if created or removed:
        log.info("public Llms from config: %d declared, %d removed", created, removed)
