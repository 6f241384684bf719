"""The hub worker's schedule for CPython's cyclic garbage collector (setting `python_gc`).

CPython 3.11 runs a full collection whenever the objects that outlived the young
generations have grown by a quarter of what the last full collection kept, and each one
scans everything tracked. A hub keeps ~135 tracked objects per idle publisher session, so
opening 10,000 sessions cost 14 full collections over up to 1.4 million objects: 5.6 s of a
32 s run, each a pause of 0.4 s that stretched to seconds on a loaded machine, long enough
for a cluster to miss a process's liveness key (docs/performance.md).

With "freeze", what survives a full collection is frozen (`gc.freeze()`), so the next full
collection scans only what came after it. A frozen object that dies by its reference count
is freed as always; only garbage *cycles* among frozen objects wait. So once the frozen set
has doubled since everything was last scanned, one full collection scans it all again
(`gc.unfreeze()` first) and reclaims them. Each object is then scanned a bounded number of
times however many sessions are open, and garbage cycles never hold more than the live set.
"""

from __future__ import annotations

import gc
from typing import Any

FREEZE = "freeze"
DEFAULT = "default"  # CPython's own schedule


class FreezeSurvivors:
    """A gc callback: freeze each full collection's survivors; thaw at each doubling.

    The frozen set is counted here, not with gc.get_freeze_count(): that walks the whole
    set, and full collections come often once most objects are frozen (each after a
    quarter more of the few left unfrozen), so walking it each time cost more the more
    sessions there were."""

    def __init__(self) -> None:
        gc.freeze()  # what booting made: modules, the app, the actor system
        self.frozen = gc.get_freeze_count()  # (cycles freed among them: learnt at a thaw)
        self.thaw_at = 2 * self.frozen
        self.thawed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        # A full collection has just ended: the young generations are empty and the oldest
        # holds its survivors, all of them if it followed a thaw, else the new ones only.
        survivors = len(gc.get_objects(generation=2))
        gc.freeze()
        if self.thawed:  # this one scanned everything: the new baseline
            self.thawed = False
            self.frozen = survivors
            self.thaw_at = 2 * survivors
            return
        self.frozen += survivors
        if self.frozen >= self.thaw_at:
            gc.unfreeze()  # the next full collection (soon: the oldest holds all) scans it all
            self.thawed = True


def install(schedule: str) -> FreezeSurvivors | None:
    """Apply `schedule` to this process; call once, after booting."""
    if schedule != FREEZE:
        return None
    policy = FreezeSurvivors()
    gc.callbacks.append(policy)
    return policy
