"""The supervisor's directory of live actors, published as immutable snapshots.

Only the supervisor builds snapshots; resources and the sweeper read the current one without
a message hop (an infer looks up its LlmActor on every request). Every lookup goes through
here, so routing can later become remote without touching resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pykka


@dataclass(frozen=True)
class SessionEntry:
    session_id: str
    ref: pykka.ActorRef = field(compare=False)
    slot: int
    names: frozenset[str]


@dataclass(frozen=True)
class Directory:
    llms: Mapping[str, pykka.ActorRef] = field(default_factory=dict)
    sessions: Mapping[str, SessionEntry] = field(default_factory=dict)
    slots: Mapping[int, str] = field(default_factory=dict)  # task-id slot -> session id

    def llm(self, name: str) -> pykka.ActorRef | None:
        return self.llms.get(name)

    def session(self, session_id: str) -> SessionEntry | None:
        return self.sessions.get(session_id)

    def session_by_slot(self, slot: int) -> SessionEntry | None:
        session_id = self.slots.get(slot)
        return self.sessions.get(session_id) if session_id is not None else None
