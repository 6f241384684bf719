"""Burying a dead hub process (docs/protocol.md, Several hub processes): whichever survivor
removes it from the set of processes first marks the rows of the sessions homed there
`inactive` and tells their names' owners that those sessions' tasks are gone.

Which names a session published is a database read. While the database does not answer
(docs/protocol.md, Faults: a PostgreSQL outage) a session stays homed on the dead process,
which goes back in the set: a survivor's next tick buries the rest, once it answers. One
session's failure never skips the others."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from tether.cluster.bus import TICK_S, Bus
from tether.cluster.leases import Homes
from tether.common.runtime import spawn
from tether.store.db import is_outage

log = logging.getLogger("tether.router")


class Mourner(Protocol):
    def names_of_session(self, session_id: str) -> list[str]:
        """The names the session publishes (a database read: raises for an outage)."""

    def home_died(self, session_id: str, names: Sequence[str]) -> None:
        """The process that was the session's home died: its rows go inactive."""


class Burial:
    def __init__(self, bus: Bus, homes: Homes, board_key: Callable[[str], str],
                 mourner: Mourner) -> None:
        self._bus = bus
        self._homes = homes
        self._board_key = board_key  # a process's part of the shared board
        self._mourner = mourner
        self._cleaning: set[str] = set()
        self._unburied: set[str] = set()  # dead processes whose burial waits on the database

    def bury_dead(self, procs: Sequence[str], alive: set[str]) -> None:
        """Each of `procs` not `alive`, in a greenlet of its own (a tick must not wait)."""
        for process in procs:
            if process not in alive and process not in self._cleaning:
                self._cleaning.add(process)
                spawn(self._bury, process)

    def _bury(self, process: str) -> None:
        procs = self._bus.key("procs")
        try:
            if not self._bus.redis.srem(procs, process):
                return  # another survivor does it
            if process not in self._unburied:
                log.warning("bus: process %s is gone; its sessions' rows go inactive", process)
            self._bus.redis.delete(self._board_key(process))
            left = 0
            for session_id, home in self._homes.all().items():
                if home.process != process:
                    continue
                try:
                    names = self._mourner.names_of_session(session_id)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    left += 1
                    continue
                if self._homes.forget(session_id, process):
                    self._mourner.home_died(session_id, names)
            if left:
                self._bus.redis.sadd(procs, process)
                if process not in self._unburied:
                    self._unburied.add(process)
                    log.warning("bus: the database does not answer: %d session(s) of process "
                                "%s are buried once it does (retrying every %g s)", left,
                                process, TICK_S)
            elif process in self._unburied:
                self._unburied.discard(process)
                log.info("bus: process %s is buried, the database answering again", process)
        except Exception:  # noqa: BLE001 - its rows stay as they are; the sweep's heartbeat
            log.exception("bus: cleaning up after process %s failed", process)
        finally:
            self._cleaning.discard(process)
