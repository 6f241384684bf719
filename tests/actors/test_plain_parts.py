"""The plain classes the actors hold, on their own (no actors): a session's open tasks and
their replay frames (tether/actors/open_tasks.py), a pool's members and tasks
(tether/actors/pool.py) and its waiting queue (tether/actors/waiting.py)."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

from tether.actors import messages as m
from tether.actors.open_tasks import OpenTask, OpenTasks, TaskBoard
from tether.actors.pool import Pool, Request
from tether.actors.task_ids import FrameIds
from tether.actors.waiting import Waiting
from tether.common import task_wire


def infer(task_id: str, request: dict[str, Any] | None = None) -> OpenTask:
    payload = task_wire.infer_task(task_id, "a", request or {"n": task_id}, True, "completions")
    return OpenTask(payload, llm=None, reply=queue.Queue())  # type: ignore[arg-type]


def wake(task_id: str) -> OpenTask:
    return OpenTask(task_wire.wake_task(task_id, "a"), llm=None)  # type: ignore[arg-type]


def test_frames_number_on_from_the_process_counter_and_a_resend_gets_a_new_id() -> None:
    tasks = OpenTasks(FrameIds(first=100))
    one, two = infer("t1"), wake("t2")
    first = tasks.send(one)
    tasks.send(two)
    assert first.startswith("id: 100\nevent: task\n") and '"taskId":"t1"' in first
    assert '"endpoint":"completions"' in first and one.endpoint == "completions"
    assert tasks.cancel_frame("t1").startswith("id: 102\n") and tasks.seq == 102
    tasks.send(one)  # sent again (a publisher that remembers nothing)
    assert one.frame_id == 103
    assert [t.task_id for t in tasks.in_frame_order()] == ["t2", "t1"]
    assert [t.task_id for t in tasks.all()] == ["t1", "t2"]  # as first kept


def test_a_resume_replays_only_what_the_publisher_has_not_seen() -> None:
    tasks = OpenTasks(FrameIds(first=100, process="p1"))
    for task_id in ("t1", "t2", "t3"):
        tasks.send(infer(task_id))
    replayed = tasks.replay("p1.100")
    assert replayed is not None and [f.split("\n")[0] for f in replayed] == [
        "id: p1.101", "id: p1.102"]
    assert tasks.replay("p1.99") is not None  # "nothing of this process yet": all of them
    assert tasks.replay("p1.102") == []
    # No id, one never sent, or another process's: the publisher holds none of these.
    for unknown in (None, "", "p1.103", "p1.50", "p2.101", "101", "garbage"):
        assert tasks.replay(unknown) is None, unknown


def test_a_hand_over_moves_what_produced_nothing_in_frame_order() -> None:
    tasks = OpenTasks(FrameIds())
    started, fresh, waking = infer("t1"), infer("t2", {"q": 2}), wake("t3")
    for task in (started, fresh, waking):
        tasks.send(task)
    started.chunks_seen = True
    fresh.deadline = 50.0

    @dataclass
    class Timer:
        cancelled: bool = False

        def cancel(self) -> None:
            self.cancelled = True

    fresh.timer = timer = Timer()
    moving = tasks.hand_over(now=20.0)
    assert [type(x) for x in moving] == [m.SendInfer, m.SendWake]
    sent = moving[0]
    assert isinstance(sent, m.SendInfer)
    assert (sent.task_id, sent.request, sent.endpoint, sent.streaming, sent.timeout_s) == (
        "t2", {"q": 2}, "completions", True, 30.0)
    assert timer.cancelled
    assert [t.task_id for t in tasks.all()] == ["t1"]  # it streamed already: it stays


def test_the_task_board_shows_each_session_its_open_tasks_until_they_end() -> None:
    """What the result route reads (TaskBoard): a task is there from the moment its session
    keeps it until its end is about to show (`closing`) or it is forgotten, and a session
    only ever takes its own entry off."""
    board = TaskBoard()
    mine, theirs = OpenTasks(FrameIds(), "s1", board), OpenTasks(FrameIds(), "s2", board)
    sent, held, waking, other = infer("t1"), infer("t2"), wake("t3"), infer("t4")
    mine.send(sent)
    mine.hold(held)
    mine.send(waking)
    theirs.send(other)
    assert board.get("t1") == ("s1", sent) and board.get("t4") == ("s2", other)
    assert len(board) == 4
    mine.closing(sent)  # its end shows next: results are 404 from now
    assert board.get("t1") is None and mine.get("t1") is sent  # the session still holds it
    mine.remove(sent)
    mine.remove(held)
    assert board.get("t2") is None
    moved = mine.hand_over(now=0.0)  # a take-over: what moves leaves the board too
    assert [x.task_id for x in moved] == ["t3"] and board.get("t3") is None
    mine.remove(infer("t4"))  # another task object of that id is not its entry
    assert board.get("t4") == ("s2", other)


def request(arrived: float, tried: set[str] | None = None) -> Request:
    req = Request(m.Infer({}, False, "chat/completions", queue.Queue()), arrived)
    req.tried = tried or set()
    return req


class Armed:
    def __init__(self) -> None:
        self.timers: list[tuple[float, int]] = []

    def __call__(self, delay: float, generation: int) -> Any:
        self.timers.append((delay, generation))
        return self

    def cancel(self) -> None:
        pass


def test_the_queue_stops_offering_once_an_untried_request_finds_no_slot() -> None:
    waiting = Waiting(10.0, Armed(), clock=lambda: 0.0)
    retried, first, second, third = request(0, {"A"}), request(1), request(2), request(3)
    for req in (first, second, third):
        waiting.append(req)
    waiting.put_back([retried])  # came back from member A: it goes first
    offered: list[Request] = []

    def place(req: Request) -> bool:
        offered.append(req)
        return req is retried  # B takes the retried one; then nobody has a slot

    waiting.serve(place)
    assert offered == [retried, first]  # the later ones have the same candidates
    assert list(waiting) == [first, second, third]


def test_one_timer_for_the_oldest_and_a_stale_one_changes_nothing() -> None:
    armed, now = Armed(), [100.0]
    waiting = Waiting(10.0, armed, clock=lambda: now[0])
    old, young = request(95.0), request(99.0)
    waiting.append(young)
    waiting.append(old)
    waiting.rearm()
    assert armed.timers == [(5.0, 1)]  # the oldest, whatever its place
    waiting.rearm()
    now[0] = 105.0
    assert waiting.timed_out(1) is None  # replaced by the second arming
    assert waiting.timed_out(2) == [old]
    assert list(waiting) == [young]
    assert waiting.withdraw(young.infer.reply) and not waiting.withdraw(young.infer.reply)
    waiting.rearm()
    assert len(armed.timers) == 2  # an empty queue has no timer


def info(key: str, status: str = "active", live: bool = True) -> m.MemberInfo:
    return m.MemberInfo(m.SessionLink(key, 1, None), status, 2, live)  # type: ignore[arg-type]


def test_a_pool_keeps_what_its_members_told_it_across_an_adopt() -> None:
    pool = Pool("a", (info("A", live=False), info("B")), now=1.0)
    member_a = pool.get("A")
    gone = pool.adopt((info("A", live=True), info("C")), adopted_at=3.0, registered="A")
    assert gone == {"B"} and [x.session_id for x in pool] == ["A", "C"]
    assert member_a is not None and pool.get("A") is member_a
    assert not member_a.live  # its own stream news stands
    # The loss of its old stream (opened before it registered again) arrives late.
    assert member_a.stream_lost(opened_at=2.0, now=4.0)  # it was active: inactive now
    member_a.status = "inactive"  # as the actor writes it
    assert member_a.stream_opened()  # the new stream: the registration's status stands
    member_a.status = member_a.registered_status
    assert member_a.stream_lost(opened_at=5.0, now=6.0)  # a stream of after the register
    member_a.status = "inactive"
    assert not member_a.stream_opened()  # that loss sticks (a heartbeat revives it)


def test_a_pool_frees_slots_and_remembers_who_tried() -> None:
    boards: list[dict[str, int]] = []
    pool = Pool("a", (info("A"), info("B")), now=0.0, restarted=True,
                board=lambda _name, counts: boards.append(dict(counts)))
    assert [v.in_flight for v in pool.views()] == [2, 2]  # uncounted: full until told
    assert not pool.counted("A", ("old",))  # B has not said yet
    assert pool.counted("B", ())
    assert boards[-1] == {"A": 1, "B": 0}
    req = request(0.0)
    member_b = pool.get("B")
    assert member_b is not None
    pool.dispatched(req, member_b, "t1")
    assert pool.dispatched_for(req.infer.reply) == ("t1", member_b)
    assert pool.returned("t1") is req and req.tried == {"B"} and req.member is None
    assert pool.serving(req.tried) and not pool.serving({"A", "B"})
    pool.ended("old")  # the crashed predecessor's task: its slot frees all the same
    assert boards[-1] == {"A": 0, "B": 0}
