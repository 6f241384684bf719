"""Retention: what the sweep retires, and how the supervisor settles names whose members
changed in the store (the sweep, a withdraw).

A session that has owned no row and had no stream for inactive_retention_s is forgotten
(its actor, directory entry and slot); it comes back by registering again. IdleSessions
keeps since when each session is idle; the Supervisor holds one and forgets what it names.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Container, Mapping

from tether.actors.directory import SessionEntry
from tether.observability import metrics
from tether.store import llms as store
from tether.store.models import Llm, LlmMember

log = logging.getLogger("tether.supervisor")

Adopt = Callable[[Llm, list[LlmMember]], None]


class IdleSessions:
    def __init__(self, retention_s: float) -> None:
        self._retention_s = retention_s
        # Sessions seen with no row and no stream, since when (time.monotonic()): each
        # register without an id makes one.
        self._since: dict[str, float] = {}

    def expired(self, sessions: Mapping[str, SessionEntry], live: Container[str],
                now: float) -> list[str]:
        """The sessions idle for retention_s by `now`; one with a name or a stream open is
        idle no longer."""
        doomed = []
        for session_id, entry in sessions.items():
            if entry.names or session_id in live:
                self._since.pop(session_id, None)
            elif now - self._since.setdefault(session_id, now) >= self._retention_s:
                doomed.append(session_id)
        return doomed

    def forget(self, session_id: str) -> None:
        self._since.pop(session_id, None)


def settle(changed: list[str], adopt: Adopt, gone: Callable[[str], None]) -> list[str]:
    """Each of the `changed` names still in the store is adopted again (a pool goes on
    without the member that left), the others are `gone`; returns those."""
    members = store.members_of(changed)
    went = []
    for name in changed:
        row = store.get(name)
        if row is not None:
            adopt(row, members[name])
        else:
            went.append(name)  # its last member went: so does the name
            gone(name)
    return went


def retire_expired(cutoff: dt.datetime, adopt: Adopt, retire: Callable[[str], None]) -> bool:
    """Delete the members inactive since before `cutoff` and settle their names; True if
    any changed."""
    changed = store.delete_expired(cutoff)
    gone = settle(changed, adopt, retire)
    metrics.swept("deleted", len(gone))
    if gone:
        log.info("retired %d inactive Llm(s): %s", len(gone), gone)
    return bool(changed)
