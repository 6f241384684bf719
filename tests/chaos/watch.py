"""What the backends run, sampled through a chaos run: when a backend first ran more tasks
at once than its publisher's `max_concurrency`, so the report can name the fault before it
(the backend's own high-water mark says that it happened, not when)."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.chaos.stack import Stack


@dataclass
class Excess:
    member: str
    at: float  # time.time() of the sample that first saw it
    most: int  # the backend's high-water mark then


@dataclass
class BackendWatch:
    stack: Stack
    limit: int
    interval_s: float = 0.2
    excesses: dict[str, Excess] = field(default_factory=dict)  # by member label

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BackendWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Excess]:
        self._stop.set()
        self._thread.join(10)
        return self.excesses

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for member in self.stack.members:
                if member.label in self.excesses:
                    continue
                with contextlib.suppress(Exception):  # a backend busy for a moment
                    most = member.backend.stats()["max_inflight"]
                    if most > self.limit:
                        self.excesses[member.label] = Excess(member.label, time.time(), most)
