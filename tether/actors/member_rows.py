"""An Llm actor's writes of its members' rows, none of which may fail the actor: the
actor's memory routes requests, the rows report it. Status and heartbeat writes go through
the write-behind (tether/store/write_behind.py); the sweep's conditional write is skipped
while the database does not answer (the next sweep checks again)."""

from __future__ import annotations

import datetime as dt

from tether.store import llms as store
from tether.store.db import is_outage
from tether.store.write_behind import WRITES


def set_status(name: str, session_id: str, status: str) -> None:
    """Guarded by membership: a write racing a newer registration changes nothing."""
    WRITES.write((name, session_id, "status"),
                 lambda: store.set_status(name, session_id, status))


def beat(name: str, session_id: str) -> bool:
    """Always behind: a name's infers never wait on its heartbeat's write. True: taken."""
    WRITES.write((name, session_id, "heartbeat"),
                 lambda: store.bump_heartbeat(name, session_id), now=False)
    return True


def expire_if_stale(name: str, session_id: str, cutoff: dt.datetime) -> bool:
    """The sweep's write: whether the member was stale and is now inactive (not if a newer
    heartbeat waits to be written, nor while the database does not answer)."""
    if WRITES.waiting((name, session_id, "heartbeat")):
        return False
    try:
        return store.mark_inactive_if_stale(name, session_id, cutoff)
    except Exception as exc:
        if not is_outage(exc):
            raise
        return False
