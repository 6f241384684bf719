"""Whether another hub process is known dead (docs/protocol.md, Faults the hub survives): a
result posted here for a task homed on a process that was killed is answered 404, so the
publisher frees its slot, rather than 503 for as long as it retries."""

from __future__ import annotations

import time

from tether.cluster.bus import TICK_S, Bus

MISSING_MAX = 256  # processes remembered missing at once: ids come from publishers


class DeadHomes:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._missing: dict[str, float] = {}  # process -> when its liveness key was first missed

    def gone(self, process: str) -> bool:
        """Whether `process` is known dead: its liveness key missed at looks at least two
        ticks apart (one look may fall in the gap after Redis restarted empty, before each
        live process wrote its key again). Redis unreachable: not known (False)."""
        try:
            alive = bool(self._bus.alive([process]))
        except Exception:  # noqa: BLE001 - Redis away: nothing is known dead
            return False
        if alive:
            self._missing.pop(process, None)
            return False
        if len(self._missing) > MISSING_MAX:
            self._missing.clear()
        first = self._missing.setdefault(process, time.monotonic())
        return time.monotonic() - first >= 2 * TICK_S
