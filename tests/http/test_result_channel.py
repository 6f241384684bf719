"""The result channel's bookkeeping as a plain class (tether/http/result_channel.py): each
line handled once per channel, refusals for good listed, a 503 or an unreadable line
stopping with what was confirmed, and a bounded number of channels remembered."""

from __future__ import annotations

from typing import Any

import pytest

from tether import errors
from tether.http.result_channel import Channel, Channels, Stopped


def line(seq: Any, task: str = "t", **result: Any) -> dict:
    return {"seq": seq, "taskId": task, **(result or {"status": 200, "body": seq})}


class Tasks:
    """What submit_result would do: apply, or refuse with the error a task gives."""

    def __init__(self, refuse: dict[str, Exception] | None = None) -> None:
        self.applied: list[tuple[str, Any]] = []
        self.refuse = refuse or {}

    def __call__(self, task_id: str, result: dict) -> None:
        if task_id in self.refuse:
            raise self.refuse[task_id]
        self.applied.append((task_id, result.get("body")))


def test_each_line_is_applied_once_across_uploads():
    channel, tasks = Channel(), Tasks()
    first = channel.take([line(1, "a"), line(2, "b")], tasks)
    assert (first.applied, first.duplicates) == (2, 0)
    again = channel.take([line(1, "a"), line(2, "b"), line(3, "c")], tasks)
    assert (again.applied, again.duplicates, again.refused) == (3, 2, [])
    assert tasks.applied == [("a", 1), ("b", 2), ("c", 3)]


def test_refusals_for_good_are_listed_and_count_as_handled():
    channel = Channel()
    tasks = Tasks({"gone": errors.TASK_NOT_FOUND(task_id="gone"),
                   "theirs": errors.FORBIDDEN(why="another session's")})
    out = channel.take([line(1, "gone"), line(2, "theirs"), line(3, "t", chunk={"data": "x"}),
                        line(4, "ok")], tasks)
    assert out.applied == 4
    assert [(x["seq"], x["code"]) for x in out.refused] == [
        (1, "task_not_found"), (2, "forbidden"), (3, "invalid_request")]
    assert tasks.applied == [("ok", 4)]
    assert channel.take([line(4, "ok")], tasks).duplicates == 1


def test_a_503_stops_the_upload_with_what_was_confirmed():
    channel = Channel()
    tasks = Tasks({"far": errors.HUB_BUSY()})
    with pytest.raises(Stopped) as stop:
        channel.take([line(1, "a"), line(2, "far"), line(3, "b")], tasks)
    assert stop.value.applied == 1 and stop.value.error.code == "hub_busy"
    assert tasks.applied == [("a", 1)]  # seq 3 was never read
    tasks.refuse.clear()
    assert channel.take([line(2, "far"), line(3, "b")], tasks).applied == 3
    assert tasks.applied == [("a", 1), ("far", 2), ("b", 3)]


@pytest.mark.parametrize("bad", [{"taskId": "t", "status": 200}, line(0), line(True),
                                 line(1.5), line("1"), {"seq": 1, "status": 200},
                                 {"seq": 1, "taskId": "", "status": 200}, [1]])
def test_a_line_that_cannot_be_numbered_or_routed_stops_the_upload(bad):
    channel, tasks = Channel(), Tasks()
    with pytest.raises(Stopped) as stop:
        channel.take([line(1, "a"), bad, line(3, "b")], tasks)
    assert stop.value.applied == 1 and stop.value.error.status == 400
    assert tasks.applied == [("a", 1)]


def test_an_integral_float_is_a_number():
    channel, tasks = Channel(), Tasks()
    assert channel.take([line(2.0, "a")], tasks).applied == 2


def test_channels_are_kept_apart_and_bounded():
    channels = Channels(infer_timeout_s=600, limit=2)
    a = channels.get("s", "a")
    a.applied = 5
    assert channels.get("s", "a") is a
    assert channels.get("other", "a") is not a  # per session and channel id
    channels.get("s", "b")  # over the limit: the least recently used goes
    assert len(channels) == 2
    assert channels.get("s", "a").applied == 0
