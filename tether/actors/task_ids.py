"""Where task ids and SSE frame ids are made (and read back).

A task id carries its session's slot, so a result POST finds its session in one lookup
(`slot_of`); frame ids number the frames of every session's stream for the life of the
process."""

from __future__ import annotations

import itertools
import uuid


class FrameIds:
    """SSE frame ids: one counter for the life of a hub process, shared by its sessions
    (a restarted session actor goes on from it). `first` is the process's first id: a
    Last-Event-ID below it was sent by another process.

    With a bus (several hub processes) an id on the wire is `<process>.<n>`: `parse` turns
    an id this process sent back into its number and any other (another process's, garbage)
    into None, so it replays nothing (docs/protocol.md, Several hub processes: Frame ids)."""

    __slots__ = ("first", "_count", "process")

    def __init__(self, first: int = 1, process: str | None = None) -> None:
        self.first = first
        self.process = process
        self._count = itertools.count(first)

    def __next__(self) -> int:
        return next(self._count)

    def render(self, n: int) -> str:
        return str(n) if self.process is None else f"{self.process}.{n}"

    def parse(self, text: str | None) -> int | None:
        if not text:
            return None
        if self.process is not None:
            process, dot, text = text.partition(".")
            if not dot or process != self.process:
                return None
        try:
            return int(text)
        except ValueError:
            return None


def new_task_id(slot: int, home: str | None = None) -> str:
    """Task ids carry the session's slot, so a result POST finds its session in one lookup;
    with a bus also the id of the session's home process (`<slot>.<home>-<uuid>`), so a
    result POST on any process goes straight to the process that holds the task."""
    if home is None:
        return f"{slot:x}-{uuid.uuid4().hex}"
    return f"{slot:x}.{home}-{uuid.uuid4().hex}"


def slot_of(task_id: str) -> int | None:
    """The slot `new_task_id` put in `task_id`; None for an id it did not make."""
    head, sep, _ = task_id.partition("-")
    if not sep:
        return None
    try:
        return int(head.partition(".")[0], 16)
    except ValueError:
        return None


def home_of(task_id: str) -> str | None:
    """The home process named in a task id, or None (no bus, or not a session's task)."""
    head, sep, _ = task_id.partition("-")
    if not sep:
        return None
    _, dot, home = head.partition(".")
    return home or None
