"""Who owns each Llm name, as this process looks it up (the leases themselves: leases.py).

A lookup asks Redis (the lease decides); when Redis does not answer, nobody can be reached
and the name has no owner for now (logged once per outage). An owner looked up within
OWNER_CACHE_S is used again without asking: under load, neither a request's lookup
(BusRouter.llm_ref, once per request: the proxy it returns carries the owner it found) nor
a session's reports to a name's LlmActor cost a Redis round trip (docs/performance.md, the
bus hop). Safe: a lease changes hands only when its holder is gone (a send there finds no
listener, and the owner is looked up again; a holder found dead is forgotten at the next
tick) or let it go alive (it passes on what it gets: BusRouter._on_tell).
"""

from __future__ import annotations

import time

from tether.cluster.bus import Bus
from tether.cluster.leases import Leases

OWNER_CACHE_S = 1.0


class Owners:
    def __init__(self, bus: Bus, leases: Leases) -> None:
        self._process = bus.process
        self._leases = leases
        self._known: dict[str, tuple[str, float]] = {}  # name -> (owner, looked up at)
        # Looked up per request and per tick: logged once per Redis outage, not each time.
        self._lookups = bus.outage("owner lookups",
                                   "requests for names owned elsewhere get 503 until it does")

    def owner(self, name: str, take: bool = False) -> str | None:
        """The live owner of `name`, from Redis; with `take`, this process if there was none."""
        try:
            owner = self._leases.owner(name, take)
        except Exception as exc:  # noqa: BLE001 - Redis down: nobody can be reached
            self._lookups.failed(exc)
            return None
        self._lookups.answered()
        self._remember(name, owner)
        return owner

    def owners(self, names: list[str], take: bool = False) -> dict[str, str | None]:
        """`owner` for many names, in one round trip."""
        try:
            found = self._leases.owners(names, take)
        except Exception as exc:  # noqa: BLE001 - Redis down: nobody can be reached
            self._lookups.failed(exc)
            return dict.fromkeys(names)
        self._lookups.answered()
        for name, owner in found.items():
            self._remember(name, owner)
        return found

    def recent(self, name: str, take: bool = False) -> tuple[str | None, bool]:
        """The owner of `name` as looked up within OWNER_CACHE_S (and True: it may have
        moved since), else `owner` (and False)."""
        known = self._known.get(name)
        if known is not None and time.monotonic() - known[1] < OWNER_CACHE_S:
            return known[0], True
        return self.owner(name, take), False

    def forget(self, name: str) -> None:
        """The owner remembered for `name` did not hear a send: ask Redis next time."""
        self._known.pop(name, None)

    def prune(self, alive: set[str]) -> None:
        """Each tick: forget owners that are dead, or looked up too long ago."""
        now = time.monotonic()
        self._known = {name: known for name, known in self._known.items()
                       if known[0] in alive and now - known[1] < OWNER_CACHE_S}

    def _remember(self, name: str, owner: str | None) -> None:
        if owner is None or owner == self._process:  # here, the directory says it
            self._known.pop(name, None)
        else:
            self._known[name] = (owner, time.monotonic())
