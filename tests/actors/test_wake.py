"""The wake state of a pool on its own (no actors): tether/actors/wake.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tether import errors
from tether.actors.routing import MemberView
from tether.actors.wake import Wake
from tether.observability import metrics

TIMEOUT_S = 30.0


@dataclass
class FakeTimer:
    delay: float
    task_id: str
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A Wake with its timers recorded instead of armed, and a clock the test moves."""

    name: str
    clock: Clock = field(default_factory=Clock)
    timers: list[FakeTimer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wake = Wake(self.name, TIMEOUT_S, self._arm, self.clock)

    def _arm(self, delay: float, task_id: str) -> FakeTimer:
        timer = FakeTimer(delay, task_id)
        self.timers.append(timer)
        return timer


def asleep(*keys: str, live: bool = True) -> list[MemberView]:
    return [MemberView(k, "hibernating", live, 0, 4) for k in keys]


def wakes(name: str, outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tether_wakes_total", {"llm": name, "outcome": outcome})
    return value or 0.0


@pytest.fixture
def h(request: pytest.FixtureRequest) -> Harness:
    return Harness(request.node.name)  # a name of its own: the counters are per name


def test_one_wake_however_many_wait(h: Harness) -> None:
    members = asleep("A", "B")
    assert h.wake.next_member(members) == "A"  # the oldest member first
    h.wake.start("t1", "A")
    # Every later request that must wait finds the wake in flight and starts none.
    assert [h.wake.next_member(members) for _ in range(5)] == [None] * 5
    assert h.wake.in_flight and len(h.timers) == 1
    with pytest.raises(AssertionError):
        h.wake.start("t2", "B")


def test_a_failed_wake_moves_on_to_the_next_member_then_answers_its_error(h: Harness) -> None:
    members = asleep("A", "B")
    h.wake.start("t1", h.wake.next_member(members) or "")
    refused = errors.WAKE_FAILED(name=h.name, why="no GPU")
    ended = h.wake.failed("t1", refused)
    assert ended is not None and ended.session_id == "A"
    assert h.timers[0].cancelled
    assert not h.wake.in_flight
    assert h.wake.next_member(members) == "B"
    assert h.wake.waiters_error() is refused
    h.wake.start("t2", "B")
    h.wake.failed("t2", errors.PUBLISHER_OFFLINE(name=h.name))
    assert h.wake.next_member(members) is None  # nobody left to wake in this round
    assert h.wake.waiters_error().code == "publisher_offline"


def test_a_wake_that_times_out_counts_as_failed(h: Harness) -> None:
    members = asleep("A", "B")
    h.wake.start("t1", "A")
    assert (h.timers[0].delay, h.timers[0].task_id) == (TIMEOUT_S, "t1")
    ended = h.wake.timed_out("t1")
    assert ended is not None and ended.session_id == "A"  # where its task is cancelled
    error = h.wake.waiters_error()
    assert (error.code, error.status) == ("wake_timeout", 504)
    assert h.wake.next_member(members) == "B"


def test_an_active_report_supersedes_the_wake_of_its_member_only(h: Harness) -> None:
    members = asleep("A", "B")
    h.wake.start("t1", "A")
    assert h.wake.superseded("B") is None  # B was not being woken
    assert h.wake.in_flight
    ended = h.wake.superseded("A")
    assert ended is not None and ended.task_id == "t1"  # its task is cancelled
    assert h.timers[0].cancelled and not h.wake.in_flight
    # It worked: A is not skipped, and no error waits for the waiters.
    assert h.wake.next_member(members) == "A"
    assert h.wake.waiters_error().code == "publisher_offline"
    assert h.wake.succeeded("t1") is None  # its own answer, arriving late, is stale


def test_answers_for_a_wake_that_already_ended_change_nothing(h: Harness) -> None:
    members = asleep("A", "B")
    h.wake.start("t1", "A")
    assert h.wake.succeeded("t1") is not None
    assert h.wake.succeeded("t1") is None
    assert h.wake.failed("t1", errors.WAKE_FAILED(name=h.name, why="late")) is None
    assert h.wake.next_member(members) == "A"  # the late failure marked nobody
    h.wake.start("t2", "A")
    assert h.wake.timed_out("t1") is None  # the first wake's timer, fired late
    assert h.wake.failed("t1", errors.WAKE_FAILED(name=h.name, why="late")) is None
    assert h.wake.flight is not None and h.wake.flight.task_id == "t2"
    assert not h.timers[1].cancelled


def test_a_renamed_wake_keeps_its_deadline(h: Harness) -> None:
    h.wake.start("t1", "A")
    h.clock.now += 12.5
    assert not h.wake.renamed("other", "t9")
    assert h.wake.renamed("t1", "t1b")
    assert h.timers[0].cancelled
    assert (h.timers[1].delay, h.timers[1].task_id) == (TIMEOUT_S - 12.5, "t1b")
    assert h.wake.succeeded("t1") is None  # answers come under the new id now
    assert h.wake.succeeded("t1b") is not None
    h.wake.start("t2", "A")
    h.clock.now += TIMEOUT_S + 1
    h.wake.renamed("t2", "t2b")
    assert h.timers[-1].delay == 0.0  # already past its deadline: times out at once


def test_a_new_round_tries_every_member_again(h: Harness) -> None:
    members = asleep("A")
    h.wake.start("t1", "A")
    h.wake.failed("t1", errors.WAKE_FAILED(name=h.name, why="no"))
    assert h.wake.next_member(members) is None
    h.wake.round_over()  # no request waits any more
    assert h.wake.next_member(members) == "A"
    assert h.wake.waiters_error().code == "publisher_offline"


def test_a_member_that_expires_while_woken_is_not_woken_again(h: Harness) -> None:
    members = asleep("A", "B")
    assert h.wake.expired("B") is None  # not the one being woken: nothing to end
    h.wake.start("t1", "A")
    ended = h.wake.expired("A")
    assert ended is not None and not h.wake.in_flight
    assert h.wake.next_member(members) == "B"
    h.wake.forget("A")  # it left the pool (and may join again)
    assert h.wake.next_member(asleep("A")) == "A"


def test_an_abandoned_wake_blames_no_member(h: Harness) -> None:
    assert h.wake.abandon() is None
    h.wake.start("t1", "A")
    ended = h.wake.abandon()
    assert ended is not None and ended.session_id == "A" and h.timers[0].cancelled
    assert h.wake.next_member(asleep("A")) == "A"


def test_only_a_member_with_a_live_stream_is_woken(h: Harness) -> None:
    assert h.wake.next_member(asleep("A", live=False)) is None
    assert h.wake.next_member(asleep("A", live=False) + asleep("B")) == "B"


def test_every_wake_that_starts_ends_once_with_its_outcome(h: Harness) -> None:
    for task_id, end in [("t1", "succeeded"), ("t2", "timed_out"), ("t3", "abandoned")]:
        h.wake.start(task_id, "A")
        if end == "succeeded":
            h.wake.succeeded(task_id)
            h.wake.succeeded(task_id)  # again: stale, not counted twice
        elif end == "timed_out":
            h.wake.timed_out(task_id)
        else:
            h.wake.abandon()
            h.wake.abandon()
    assert wakes(h.name, "started") == 3
    assert [wakes(h.name, o) for o in ("succeeded", "timed_out", "abandoned")] == [1, 1, 1]
    assert wakes(h.name, "failed") == 0
