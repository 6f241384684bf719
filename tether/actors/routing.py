"""Pool routing policy (docs/protocol.md, Pools): which member takes a request, whom to wake.

Pure functions over member snapshots plus a bounded memory of served prefixes; the LlmActor
holds one RoutingPolicy and is the only caller, so nothing here locks. Kept apart from the actor so
it can be tested (and swapped, as SGLang's router swaps policies) without actors.

Affinity follows SGLang's cache-aware router: route a conversation to the member whose cache
holds its longest prefix, unless that member is clearly busier than the least loaded one.
SGLang uses an absolute and a relative balance threshold on queue lengths; our loads are
already relative (in-flight / capacity), so one threshold does: the affinity member is taken
while its load is at most the least load + BALANCE_THRESHOLD (half a member's capacity).

The hub setting `pool_routing = "round_robin"` turns affinity off: each request goes to the
next member (in join order) after the last one chosen that can take it. That suits backends
without a prefix cache, where spreading evenly is all that matters, and it is the baseline
the pools benchmark measures affinity against.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ACTIVE = "active"
AFFINITY = "affinity"
ROUND_ROBIN = "round_robin"
POLICIES = (AFFINITY, ROUND_ROBIN)
HIBERNATING = "hibernating"
BALANCE_THRESHOLD = 0.5
UNSET_CAPACITY = 64  # a member that did not say its maxConcurrency counts as 64 for load
LRU_SIZE = 4096  # prefix hashes remembered per member


@dataclass(frozen=True)
class MemberView:
    """What the policy needs of one member, as the LlmActor sees it now."""

    key: str  # the member's providerSessionId
    status: str
    live: bool  # its stream is open: a member without one gets no work
    in_flight: int
    max_concurrency: int | None

    @property
    def load(self) -> float:
        return self.in_flight / (self.max_concurrency or UNSET_CAPACITY)

    @property
    def has_slot(self) -> bool:
        return self.max_concurrency is None or self.in_flight < self.max_concurrency

    @property
    def takes_work(self) -> bool:
        return self.status == ACTIVE and self.live and self.has_slot


@dataclass(frozen=True)
class Choice:
    key: str
    reason: str  # "affinity", "least_loaded" or "round_robin"


def _digest(previous: bytes, item: Any) -> bytes:
    text = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(previous + text.encode(), digest_size=8).digest()


def chain(messages: Sequence[Any]) -> tuple[bytes, ...]:
    """One hash per message boundary: element i identifies messages[: i + 1]."""
    out: list[bytes] = []
    h = b""
    for message in messages:
        h = _digest(h, message)
        out.append(h)
    return tuple(out)


@dataclass(frozen=True)
class Affinity:
    """A request's routing keys: `lookup` (longest first is tried first) and `served` (what
    the member that serves it will hold in its cache afterwards)."""

    lookup: tuple[bytes, ...]
    served: tuple[bytes, ...]


NO_AFFINITY = Affinity((), ())


def affinity_of(request: dict[str, Any], header: str | None = None) -> Affinity:
    """The prefix of a chat request is its `messages` without the last one; the
    `X-Tether-Affinity` header, when given, decides instead."""
    if header:
        key = (_digest(b"header", header),)
        return Affinity(key, key)
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return Affinity((), ())
    full = chain(messages)
    return Affinity(full[:-1], full)


class RoutingPolicy:
    def __init__(self, rng: random.Random | None = None, lru_size: int = LRU_SIZE,
                 policy: str = AFFINITY) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown pool routing policy {policy!r}")
        # The module's shared generator by default: a test that seeds it (hypothesis does,
        # per example) replays the same tie-breaks.
        self._rng: Any = rng if rng is not None else random
        self._lru_size = lru_size
        self._served: dict[str, OrderedDict[bytes, None]] = {}
        self.policy = policy
        self._last: str | None = None  # round robin: the member chosen last

    @property
    def uses_affinity(self) -> bool:
        """Whether requests' prefixes matter (worth hashing, worth remembering)."""
        return self.policy == AFFINITY

    def choose(self, members: Iterable[MemberView], affinity: Affinity,
               exclude: frozenset[str] = frozenset()) -> Choice | None:
        """The member to send a request to, or None when none can take it now."""
        members = list(members)
        candidates = [m for m in members if m.takes_work and m.key not in exclude]
        if not candidates:
            return None
        if self.policy == ROUND_ROBIN:
            return self._next_in_turn(members, {m.key for m in candidates})
        least = min(m.load for m in candidates)
        for h in reversed(affinity.lookup):
            holders = [m for m in candidates if h in self._served.get(m.key, ())]
            if holders:
                best = min(holders, key=lambda m: m.load)
                if best.load <= least + BALANCE_THRESHOLD:
                    return Choice(best.key, "affinity")
                break  # the conversation's member is too busy: spread instead
        lightest = [m for m in candidates if m.load == least]
        return Choice(self._rng.choice(lightest).key, "least_loaded")

    def _next_in_turn(self, members: list[MemberView], ready: set[str]) -> Choice:
        """The first member that can take work after the last one chosen, in join order
        (wrapping); when that one has left, the turn starts again at the oldest member."""
        order = [m.key for m in members]
        start = order.index(self._last) + 1 if self._last in order else 0
        key = next(k for k in order[start:] + order[:start] if k in ready)
        self._last = key
        return Choice(key, ROUND_ROBIN)

    def record(self, key: str, affinity: Affinity) -> None:
        """`key` served this request: remember its prefixes (bounded, least recent out)."""
        if not affinity.served or not self.uses_affinity:
            return
        lru = self._served.setdefault(key, OrderedDict())
        for h in affinity.served:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self._lru_size:
            lru.popitem(last=False)

    def forget(self, key: str) -> None:
        self._served.pop(key, None)

    def remembered(self, key: str) -> int:
        return len(self._served.get(key, ()))


def choose_wake(members: Sequence[MemberView], failed: Iterable[str]) -> str | None:
    """The next member to wake: a hibernating one with a live stream whose wake has not
    failed in this round, oldest member first (members come in join order)."""
    skip = set(failed)
    for m in members:
        if m.status == HIBERNATING and m.live and m.key not in skip:
            return m.key
    return None


def may_free_a_slot(members: Sequence[MemberView]) -> bool:
    """Some active member with a live stream exists: waiting requests may still be served."""
    return any(m.status == ACTIVE and m.live for m in members)
