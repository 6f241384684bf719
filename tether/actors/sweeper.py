"""Sweeper: every gc_interval_s, stale rows go inactive and long-inactive rows are deleted.

It only finds candidates; each change goes through the actor that owns the row, so the
in-memory state and the store never disagree.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pykka

from tether.actors import messages as m
from tether.actors.directory import Directory
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import Timer, call_later
from tether.config import Settings
from tether.store import llms as store
from tether.store.db import is_outage
from tether.store.models import utcnow

log = logging.getLogger("tether.sweeper")


class Sweeper(TetherActor):
    def __init__(
        self,
        settings: Settings,
        supervisor: Parent,
        directory: Callable[[], Directory],
        report: Callable[[pykka.ActorRef], None] | None = None,
    ) -> None:
        super().__init__()
        self._report = report
        self._settings = settings
        self._supervisor = supervisor
        self._directory = directory
        self._timer: Timer | None = None

    def receive(self, message: m.SweeperMessage) -> None:
        self._on_sweep(message)  # its only message

    def on_start(self) -> None:
        self._schedule()

    def report_crash(self) -> None:
        if self._report is not None:
            self._report(self.actor_ref)  # the ActorSystem restarts us

    def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        self._timer = call_later(self._settings.gc_interval_s, tell, self.actor_ref, m.Sweep())

    def _on_sweep(self, _msg: m.Sweep) -> None:
        try:
            now = utcnow()
            cutoff = now - dt.timedelta(seconds=self._settings.heartbeat_timeout_s)
            directory = self._directory()
            try:
                stale = store.stale_names(cutoff)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                # The database does not answer: this sweep is skipped, not crashed on (the
                # supervisor's restarts would give up and take the worker down for it).
                log.warning("the sweep waits for the database (%s)",
                            " ".join(str(exc).split()) or type(exc).__name__)
                stale = []
            for name in stale:
                tell(directory.llm(name), m.ExpireHeartbeat(cutoff))
            retention = now - dt.timedelta(seconds=self._settings.inactive_retention_s)
            tell(self._supervisor.ref, m.RetireExpired(retention))
        finally:
            self._schedule()
