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
    Last-Event-ID below it was sent by another process."""

    __slots__ = ("first", "_count")

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self._count = itertools.count(first)

    def __next__(self) -> int:
        return next(self._count)


def new_task_id(slot: int) -> str:
    """Task ids carry the session's slot, so a result POST finds its session in one lookup."""
    return f"{slot:x}-{uuid.uuid4().hex}"


def slot_of(task_id: str) -> int | None:
    """The slot `new_task_id` put in `task_id`; None for an id it did not make."""
    head, sep, _ = task_id.partition("-")
    if not sep:
        return None
    try:
        return int(head, 16)
    except ValueError:
        return None
