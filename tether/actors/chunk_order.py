"""Which chunks of a streamed result are new to their task (docs/protocol.md, the per-task
route's `index`): each task counts the chunks it applied, so a copy of a body sent again
(the result channel after a cut, a POST whose answer was lost, a line that reached another
process) shows its text once, and a body past a lost one ends the task instead of leaving
a hole in the client's answer. Plain functions on the task the session actor holds: the
actor takes every result of its tasks in order, so the count needs no lock.
"""

from __future__ import annotations

from typing import Any, cast

from tether.actors.open_tasks import OpenTask
from tether.common import task_wire


class Hole(Exception):
    """A body that starts beyond what its task applied: the chunks between were lost."""

    def __init__(self, applied: int, index: int) -> None:
        super().__init__(f"the stream lost chunks {applied} to {index - 1} on their way "
                         f"to the hub")


def take(task: OpenTask, result: task_wire.Result) -> tuple[tuple[str, ...], bool]:
    """The data of the chunks of `result` (a `chunk` or `chunks` body) that `task` has not
    applied, now counted (and `chunks_seen` when there is any), and whether they end the
    stream; raises Hole. A body without `index` is new whole (the per-task route's older
    form: its own upload is one ordered stream)."""
    body = cast(dict[str, Any], result)  # a chunk or a batch: checked at the door
    chunks: list[task_wire.Chunk] = [body["chunk"]] if "chunk" in body else body["chunks"]
    index = body.get("index")
    if index is None:
        skip = 0
    elif index > task.chunks_applied:
        raise Hole(task.chunks_applied, index)
    else:
        skip = task.chunks_applied - index
    fresh = chunks[skip:]
    task.chunks_applied += len(fresh)
    data = tuple(c["data"] for c in fresh if c.get("data") is not None)
    if data:
        task.chunks_seen = True
    return data, any(c.get("done") for c in fresh)
