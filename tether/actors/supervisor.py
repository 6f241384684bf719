"""Supervisor: starts, finds and retires the children; owns the directory.

Registration runs here so that registrations and retirements are serialized against each
other: a row cannot be deleted by the sweep while it is being re-taken.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pykka

from tether.actors import messages as m
from tether.actors.base import TetherActor, tell
from tether.actors.directory import Directory, SessionEntry
from tether.actors.llm import LlmActor
from tether.actors.session import SessionActor
from tether.config import Settings
from tether.store import llms as store
from tether.store.models import KIND_PUBLIC, Llm

log = logging.getLogger("tether.supervisor")


class Supervisor(TetherActor):
    def __init__(self, settings: Settings, publish: Callable[[Directory], None]) -> None:
        super().__init__()
        self._settings = settings
        self._publish = publish
        self._llms: dict[str, pykka.ActorRef] = {}
        self._owner: dict[str, str | None] = {}  # llm name -> session id
        self._sessions: dict[str, SessionEntry] = {}
        self._slots: dict[int, pykka.ActorRef] = {}
        self._next_slot = 1

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        return {
            m.Register: self._on_register,
            m.SessionStreamLost: self._on_stream_lost,
            m.RetireExpired: self._on_retire_expired,
        }

    def on_start(self) -> None:
        for row in store.list_all():
            self._adopt_row(row)
        self._publish_directory()

    def on_stop(self) -> None:
        # Reverse order of start: Llms first (they answer their waiters), then sessions.
        for ref in list(self._llms.values()):
            ref.stop(block=False)
        for entry in list(self._sessions.values()):
            entry.ref.stop(block=False)

    # --- children ------------------------------------------------------------------------

    def _session_entry(self, session_id: str) -> SessionEntry:
        entry = self._sessions.get(session_id)
        if entry is None:
            slot = self._next_slot
            self._next_slot += 1
            ref = SessionActor.start(self._settings, session_id, slot, self.actor_ref)
            entry = SessionEntry(ref, slot, frozenset())
            self._sessions[session_id] = entry
            self._slots[slot] = ref
        return entry

    def _set_names(self, session_id: str, names: frozenset[str]) -> None:
        entry = self._sessions[session_id]
        self._sessions[session_id] = SessionEntry(entry.ref, entry.slot, names)

    def _adopt_row(self, row: Llm) -> None:
        """Start or update the LlmActor of `row` and file it under its session."""
        state = m.LlmState(row.name, row.kind, row.provider_session_id, row.status)
        link = None
        if row.provider_session_id is not None:
            entry = self._session_entry(row.provider_session_id)
            link = m.SessionLink(row.provider_session_id, entry.slot, entry.ref)
        previous = self._owner.get(row.name)
        if previous is not None and previous != row.provider_session_id:
            self._set_names(previous, self._sessions[previous].names - {row.name})
        if link is not None:
            self._set_names(link.session_id, self._sessions[link.session_id].names | {row.name})
        self._owner[row.name] = row.provider_session_id
        ref = self._llms.get(row.name)
        if ref is None:
            public = self._settings.public_llm(row.name) if row.kind == KIND_PUBLIC else None
            self._llms[row.name] = LlmActor.start(self._settings, state, link, public)
        elif link is not None:
            tell(ref, m.Adopt(state, link))

    def _publish_directory(self) -> None:
        self._publish(
            Directory(
                llms=MappingProxyType(dict(self._llms)),
                sessions=MappingProxyType(dict(self._sessions)),
                slots=MappingProxyType(dict(self._slots)),
            )
        )

    # --- messages ------------------------------------------------------------------------

    def _on_register(self, msg: m.Register) -> tuple[str, list[Llm]]:
        session_id = msg.session_id or str(uuid.uuid4())
        rows = store.register(session_id, msg.providers)  # raises on conflict, applies nothing
        for row in rows:
            self._adopt_row(row)
        self._publish_directory()
        return session_id, rows

    def _on_stream_lost(self, msg: m.SessionStreamLost) -> None:
        entry = self._sessions.get(msg.session_id)
        if entry is None:
            return
        for name in entry.names:
            tell(self._llms.get(name), m.StreamLost(msg.session_id))

    def _on_retire_expired(self, msg: m.RetireExpired) -> None:
        doomed = store.delete_expired(msg.cutoff)
        for row in doomed:
            ref = self._llms.pop(row.name, None)
            if ref is not None:
                ref.stop(block=False)
            owner = self._owner.pop(row.name, None)
            if owner is not None and owner in self._sessions:
                self._set_names(owner, self._sessions[owner].names - {row.name})
        if doomed:
            log.info("retired %d inactive Llm(s): %s", len(doomed), [r.name for r in doomed])
            self._publish_directory()
