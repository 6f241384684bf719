"""Each chunk of a stream applied once by its task (tether/actors/chunk_order.py): what a
body carries past the task's count is new, what it repeats is skipped, and a body that
starts past the count (a chunk lost before it) is a hole, never applied."""

from __future__ import annotations

import pytest

from tether.actors import chunk_order
from tether.actors.open_tasks import OpenTask
from tether.common import task_wire


def task() -> OpenTask:
    return OpenTask(task_wire.infer_task("1.0-t", "m1", {}, True), llm=None)


def body(index: int | None, *texts: str, done: bool = False) -> dict:
    result: dict = {"chunks": [{"data": t} for t in texts] + ([{"done": True}] if done else [])}
    if index is not None:
        result["index"] = index
    return result


def test_copies_are_skipped_and_overlaps_apply_their_new_end():
    t = task()
    assert chunk_order.take(t, body(0, "a", "b")) == (("a", "b"), False)
    assert chunk_order.take(t, body(0, "a", "b")) == ((), False)  # a copy
    assert chunk_order.take(t, body(1, "b", "c")) == (("c",), False)
    assert chunk_order.take(t, {"index": 3, "chunk": {"data": "d"}}) == (("d",), False)
    assert chunk_order.take(t, body(3, "d", done=True)) == ((), True)
    assert t.chunks_applied == 5 and t.chunks_seen


def test_a_body_past_the_count_is_a_hole_and_changes_nothing():
    t = task()
    chunk_order.take(t, body(0, "a"))
    with pytest.raises(chunk_order.Hole, match="lost chunks 1 to 2"):
        chunk_order.take(t, body(3, "d"))
    assert t.chunks_applied == 1


def test_a_body_without_index_is_new_whole_and_counted():
    t = task()
    assert chunk_order.take(t, body(None, "a")) == (("a",), False)
    assert chunk_order.take(t, body(None, "a")) == (("a",), False)  # as they come
    assert chunk_order.take(t, body(1, "x", "b")) == (("b",), False)
    assert not task().chunks_seen and chunk_order.take(task(), body(0, done=True)) == ((), True)
