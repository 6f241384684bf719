"""The supervisor's directory of live actors, published as immutable snapshots.

Only the supervisor changes the directory; resources and the sweeper read the current
snapshot without a message hop (an infer looks up its LlmActor on every request). Every
lookup goes through here, so routing can later become remote without touching resources.

The maps are persistent (a hash array mapped trie, `immutables.Map`): a change makes a new
map that shares all but O(log n) of the old one, so publishing a snapshot after each
registration costs the same with 10 or 10,000 sessions (copying dicts made opening 10,000
sessions quadratic). A reader holding a snapshot never sees it change under it, under gevent
or plain threads, and needs no lock. Lookups cost what a dict lookup does (it is C).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import immutables
import pykka

K = TypeVar("K")
V = TypeVar("V")


class Index(MutableMapping[K, V], Generic[K, V]):
    """What the supervisor keeps: a dict to it, an O(1) `snapshot()` for readers."""

    __slots__ = ("_map",)

    def __init__(self, items: Mapping[K, V] | None = None) -> None:
        self._map: immutables.Map = immutables.Map(items or {})

    def __getitem__(self, key: K) -> V:
        return self._map[key]

    def __setitem__(self, key: K, value: V) -> None:
        self._map = self._map.set(key, value)

    def __delitem__(self, key: K) -> None:
        self._map = self._map.delete(key)

    def __iter__(self) -> Iterator[K]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def get(self, key: K, default: Any = None) -> Any:  # skips MutableMapping's try/except
        return self._map.get(key, default)

    def snapshot(self) -> Mapping[K, V]:
        """The current contents, frozen: later changes here never show in it."""
        return self._map


@dataclass(frozen=True)
class SessionEntry:
    session_id: str
    ref: pykka.ActorRef = field(compare=False)
    slot: int
    names: frozenset[str]


@dataclass(frozen=True)
class Directory:
    llms: Mapping[str, pykka.ActorRef] = field(default_factory=immutables.Map)
    sessions: Mapping[str, SessionEntry] = field(default_factory=immutables.Map)
    slots: Mapping[int, str] = field(default_factory=immutables.Map)  # task-id slot -> session

    def llm(self, name: str) -> pykka.ActorRef | None:
        return self.llms.get(name)

    def session(self, session_id: str) -> SessionEntry | None:
        return self.sessions.get(session_id)

    def session_by_slot(self, slot: int) -> SessionEntry | None:
        session_id = self.slots.get(slot)
        return self.sessions.get(session_id) if session_id is not None else None
