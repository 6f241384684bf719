"""The pool routing policy on its own (no actors): tether/actors/routing.py."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tether.actors.routing import (
    ROUND_ROBIN,
    Affinity,
    MemberView,
    RoutingPolicy,
    affinity_of,
    choose_wake,
    may_free_a_slot,
)


def member(key: str, in_flight: int = 0, cap: int | None = 4, status: str = "active",
           live: bool = True) -> MemberView:
    return MemberView(key, status, live, in_flight, cap)


def chat(*contents: str) -> dict:
    return {"messages": [{"role": "user", "content": c} for c in contents]}


def test_prefix_is_the_messages_without_the_last_one():
    first = affinity_of(chat("a"))
    second = affinity_of(chat("a", "b", "c"))
    assert first.lookup == ()  # a first turn has no prefix: nobody has served it
    assert first.served == second.lookup[:1]
    assert second.lookup == affinity_of(chat("a", "b", "zzz")).lookup  # the last one differs
    assert affinity_of(chat("x", "b", "c")).lookup[1] != second.lookup[1]


def test_the_header_decides_instead_of_the_messages():
    one = affinity_of(chat("a", "b"), "user-7")
    assert one == affinity_of(chat("q"), "user-7")
    assert one.lookup == one.served and one != affinity_of(chat("a", "b"), "user-8")


def test_a_conversation_returns_to_the_member_that_served_its_longest_prefix():
    policy = RoutingPolicy(random.Random(1))
    members = [member("A", 1), member("B", 0), member("C", 0)]
    policy.record("A", affinity_of(chat("hello")))
    policy.record("C", affinity_of(chat("other")))
    choice = policy.choose(members, affinity_of(chat("hello", "answer", "more")))
    assert (choice.key, choice.reason) == ("A", "affinity")
    # A longer prefix served elsewhere wins over a shorter one.
    policy.record("B", affinity_of(chat("hello", "answer", "more")))
    choice = policy.choose(members, affinity_of(chat("hello", "answer", "more", "x", "y")))
    assert (choice.key, choice.reason) == ("B", "affinity")


def test_affinity_yields_when_its_member_is_more_than_half_a_capacity_above_the_least():
    policy = RoutingPolicy(random.Random(1))
    turn = affinity_of(chat("hello", "answer", "more"))
    policy.record("A", affinity_of(chat("hello")))
    # load 2/4 = 0.5 <= 0 + 0.5: still A
    assert policy.choose([member("A", 2), member("B", 0)], turn).key == "A"
    # load 3/4 = 0.75 > 0.5: the least loaded instead
    choice = policy.choose([member("A", 3), member("B", 0)], turn)
    assert (choice.key, choice.reason) == ("B", "least_loaded")


def test_least_loaded_uses_in_flight_over_capacity_and_64_when_unset():
    policy = RoutingPolicy(random.Random(1))
    nothing = Affinity((), ())
    # A: 3/4 = .75; B: 10/64 = .16; C: 1/2 = .5
    members = [member("A", 3, 4), member("B", 10, None), member("C", 1, 2)]
    assert policy.choose(members, nothing) == policy.choose(members, nothing)
    assert policy.choose(members, nothing).key == "B"


def test_ties_are_broken_at_random():
    policy = RoutingPolicy(random.Random(7))
    members = [member("A"), member("B"), member("C")]
    picks = Counter(policy.choose(members, Affinity((), ())).key for _ in range(300))
    assert set(picks) == {"A", "B", "C"} and min(picks.values()) > 50


def test_only_active_live_members_with_a_free_slot_take_work():
    policy = RoutingPolicy()
    nothing = Affinity((), ())
    assert policy.choose([member("A", 4, 4)], nothing) is None  # full
    assert policy.choose([member("A", live=False)], nothing) is None  # no stream yet
    assert policy.choose([member("A", status="hibernating")], nothing) is None
    assert policy.choose([member("A", status="inactive")], nothing) is None
    assert policy.choose([member("A", 1000, None)], nothing).key == "A"  # no limit
    assert policy.choose([member("A"), member("B")], nothing, exclude=frozenset("A")).key == "B"


def test_a_full_affinity_member_does_not_block_the_request():
    policy = RoutingPolicy()
    policy.record("A", affinity_of(chat("hello")))
    choice = policy.choose([member("A", 4), member("B", 3)], affinity_of(chat("hello", "r", "x")))
    assert (choice.key, choice.reason) == ("B", "least_loaded")


def test_prefix_memory_is_bounded_per_member_and_forgets_the_least_recent():
    policy = RoutingPolicy(lru_size=8)
    old = affinity_of(chat("old"))
    policy.record("A", old)
    for i in range(20):
        policy.record("A", affinity_of(chat(f"c{i}")))
    assert policy.remembered("A") == 8
    assert policy.choose([member("A"), member("B", 1)], affinity_of(chat("old", "r", "x"))) \
        .reason == "least_loaded"
    policy.forget("A")
    assert policy.remembered("A") == 0


def test_round_robin_takes_members_in_turn_whatever_the_conversation():
    policy = RoutingPolicy(policy=ROUND_ROBIN)
    members = [member("A"), member("B"), member("C")]
    turn = affinity_of(chat("hello", "answer", "more"))
    policy.record("A", turn)  # nothing to remember without affinity
    assert policy.remembered("A") == 0
    picks = [policy.choose(members, turn) for _ in range(6)]
    assert [c.key for c in picks] == ["A", "B", "C", "A", "B", "C"]
    assert {c.reason for c in picks} == {"round_robin"}


def test_round_robin_skips_members_that_cannot_take_work_and_keeps_its_turn():
    policy = RoutingPolicy(policy=ROUND_ROBIN)
    nothing = Affinity((), ())
    assert policy.choose([member("A"), member("B")], nothing).key == "A"
    # B is full: C is next; then the turn wraps to A (B still full).
    members = [member("A"), member("B", 4), member("C")]
    assert [policy.choose(members, nothing).key for _ in range(3)] == ["C", "A", "C"]
    assert policy.choose(members, nothing, exclude=frozenset("A")).key == "C"
    assert policy.choose([member("A", 4), member("B", 4)], nothing) is None
    # The last one chosen left: the turn starts again at the oldest member.
    assert policy.choose([member("A"), member("B")], nothing).key == "A"


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        RoutingPolicy(policy="random")


def test_wake_choice_takes_the_first_live_hibernating_member_not_yet_failed():
    members = [member("A", status="active"), member("B", status="hibernating", live=False),
               member("C", status="hibernating"), member("D", status="hibernating")]
    assert choose_wake(members, ()) == "C"
    assert choose_wake(members, {"C"}) == "D"
    assert choose_wake(members, {"C", "D"}) is None
    assert may_free_a_slot(members)
    assert not may_free_a_slot(members[1:])
